from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.data.readers import read_folder
from shared.errors import EmptyDataset, InvalidInput
from shared.vision.backbone import build_network
from shared.vision.modelfile import load_model
from shared.vision.training import TrainConfig, train


def test_trained_model_file(trained) -> None:  # type: ignore[no-untyped-def]
    model = load_model(trained.model_path)
    assert model.model_id == trained.model_id
    assert model.meta.labels == ["dress", "shirt", "toptee"]
    assert model.meta.backbone == "resnet50" and model.meta.image_size == 64
    assert model.meta.weights_source.startswith("none")
    assert model.meta.config["epochs"] == 1 and "val_accuracy" in model.meta.metrics
    x = torch.zeros(2, 3, 64, 64)
    assert model.net.features(x).shape == (2, 2048)
    assert model.net(x).shape == (2, 3)


def test_resume_continues_from_last_epoch(tmp_path: Path, synthetic_catalogue: Path) -> None:
    scan = read_folder(synthetic_catalogue)
    train_s, val_s = scan.split("train")[::6], scan.split("val")[::4]
    cfg = TrainConfig(
        weights="none", epochs=1, image_size=32, batch_size=4, workers=0, max_steps_per_epoch=1
    )
    first = train(train_s, val_s, tmp_path, cfg, progress=False)
    assert len(first.history) == 1
    cfg.epochs = 2
    second = train(train_s, val_s, tmp_path, cfg, resume=tmp_path / "last.pt", progress=False)
    assert [h["epoch"] for h in second.history] == [0.0, 1.0]
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "history.json").is_file()


def test_training_is_seeded(tmp_path: Path, synthetic_catalogue: Path) -> None:
    scan = read_folder(synthetic_catalogue)
    train_s = scan.split("train")[::8]
    cfg = TrainConfig(
        weights="none",
        epochs=1,
        image_size=32,
        batch_size=3,
        workers=0,
        max_steps_per_epoch=2,
        precision="fp32",
    )
    a = train(train_s, [], tmp_path / "a", cfg, progress=False)
    b = train(train_s, [], tmp_path / "b", cfg, progress=False)
    assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], rel=1e-5)


def test_training_input_errors(tmp_path: Path, synthetic_catalogue: Path) -> None:
    scan = read_folder(synthetic_catalogue)
    cfg = TrainConfig(weights="none", epochs=1, image_size=32)
    with pytest.raises(EmptyDataset):
        train([], [], tmp_path, cfg)
    with pytest.raises(EmptyDataset, match="two categories"):
        train([s for s in scan.samples if s.category == "dress"], [], tmp_path, cfg)
    with pytest.raises(InvalidInput, match="weights must be"):
        build_network("resnet50", str(tmp_path / "missing.pt"), 3)
    with pytest.raises(InvalidInput, match="unknown backbone"):
        build_network("vgg99", "none", 3)
