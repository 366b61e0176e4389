"""Fine-tuning the backbone as a classifier over the catalogue's categories.

Cross-entropy, Adam, lr 1e-3 and 10 epochs by default (the study); validation accuracy every
epoch; the best checkpoint kept as a FIR model file with its metrics and config; resumable
from ``last.pt``; seeded; progress bars.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from shared.data.readers import Sample
from shared.errors import BadImage, EmptyDataset, InvalidInput, NotFound
from shared.imaging import load_image
from shared.vision.backbone import FeatureNet, build_network
from shared.vision.embed import autocast_context, pick_device
from shared.vision.modelfile import ModelMeta, file_sha256, save_model
from shared.vision.preprocess import make_transform, resize_size

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class TrainConfig:
    backbone: str = "resnet50"
    weights: str = "imagenet"
    epochs: int = 10
    lr: float = 1e-3
    body_lr: float | None = None  # a lower learning rate for the (pretrained) body
    weight_decay: float = 0.0
    batch_size: int = 32
    image_size: int = 224
    seed: int = 0
    workers: int = 1
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast (CPU and CUDA), fp32 otherwise
    max_steps_per_epoch: int | None = None  # for quick runs and tests
    augment: bool = True


@dataclass
class TrainResult:
    best_path: Path
    model_id: str
    labels: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    weights_source: str = ""


class _Labelled(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, samples: Sequence[Sample], labels: list[str],
                 transform: Callable[[Image.Image], torch.Tensor], image_size: int) -> None:
        self.samples = list(samples)
        self.index = {c: i for i, c in enumerate(labels)}
        self.transform = transform
        self.image_size = image_size
        self.draft = (resize_size(image_size), resize_size(image_size))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s = self.samples[i]
        try:
            img = load_image(s.path, draft_size=self.draft)
        except BadImage as exc:
            log.warning("training skips %s: %s", s.path, exc.reason)
            return torch.zeros(3, self.image_size, self.image_size), IGNORE
        return self.transform(img), self.index[str(s.category)]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16"
    return cfg.precision


def evaluate_accuracy(net: FeatureNet, loader: DataLoader[tuple[torch.Tensor, int]],
                      device: torch.device, precision: str) -> float:
    net.eval()
    correct = total = 0
    with torch.inference_mode(), autocast_context(device, precision):
        for x, y in loader:
            y = y.to(device)
            keep = y != IGNORE
            if not keep.any():
                continue
            pred = net(x.to(device)).argmax(1)
            correct += int((pred[keep] == y[keep]).sum())
            total += int(keep.sum())
    return correct / total if total else float("nan")


def train(
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    out_dir: Path,
    cfg: TrainConfig,
    resume: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train and keep the best checkpoint in ``out_dir/best.pt`` (a FIR model file)."""
    if not train_samples:
        raise EmptyDataset("no training images")
    labels = sorted({str(s.category) for s in train_samples if s.category is not None})
    if len(labels) < 2 and cfg.epochs > 0:
        raise EmptyDataset(f"training needs at least two categories, found {labels}")
    unknown = {s.category for s in val_samples} - set(labels)
    if unknown:
        raise InvalidInput(f"validation categories {sorted(map(str, unknown))} are not in the training set")
    out_dir.mkdir(parents=True, exist_ok=True)
    _seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    precision = _precision(cfg, device)
    net, weights_used = build_network(cfg.backbone, cfg.weights, len(labels), seed=cfg.seed)
    net.to(device)

    body_lr = cfg.body_lr if cfg.body_lr is not None else cfg.lr
    optimiser = torch.optim.Adam(
        [
            {"params": net.body.parameters(), "lr": body_lr},
            {"params": net.head.parameters(), "lr": cfg.lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    start_epoch = 0
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    if resume is not None:
        if not resume.is_file():
            raise NotFound(f"checkpoint {resume} does not exist")
        state = torch.load(resume, map_location="cpu", weights_only=False)
        if state.get("labels") != labels:
            raise InvalidInput(f"{resume} was trained on categories {state.get('labels')}, not {labels}")
        net.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        start_epoch = int(state["epoch"]) + 1
        history = list(state["history"])
        best = dict(state["best"])
        weights_used = str(state.get("weights_source", weights_used))
        torch.set_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d", resume, start_epoch)

    gen = torch.Generator().manual_seed(cfg.seed)
    train_tf = make_transform(cfg.backbone, cfg.image_size, train=cfg.augment)
    eval_tf = make_transform(cfg.backbone, cfg.image_size)
    train_loader = DataLoader(
        _Labelled(train_samples, labels, train_tf, cfg.image_size),
        batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers, generator=gen,
        pin_memory=device.type == "cuda", drop_last=False,
    )
    val_loader = DataLoader(
        _Labelled(val_samples, labels, eval_tf, cfg.image_size),
        batch_size=cfg.batch_size, num_workers=cfg.workers,
    )
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)
    meta_config: dict[str, Any] = {**asdict(cfg), "precision_used": precision, "device_used": str(device),
                                   "n_train": len(train_samples), "n_val": len(val_samples)}
    best_path = out_dir / "best.pt"

    def save_best(metrics: dict[str, float]) -> str:
        meta = ModelMeta(backbone=cfg.backbone, weights_source=weights_used, labels=labels,
                         image_size=cfg.image_size, config=meta_config, metrics=metrics)
        return save_model(net, meta, best_path)

    if cfg.epochs == 0 or start_epoch >= cfg.epochs:
        if not best_path.exists():
            val_acc = evaluate_accuracy(net, val_loader, device, precision) if val_samples else float("nan")
            best = {"epoch": -1, "val_accuracy": val_acc}
            save_best(best)
        return TrainResult(best_path, file_sha256(best_path)[:16], labels, history, best, weights_used)

    model_id = ""
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        t0 = time.perf_counter()
        total_loss = 0.0
        correct = seen = 0
        steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not progress, leave=False)
        for step, (x, y) in enumerate(train_loader):
            if step >= steps:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimiser.zero_grad(set_to_none=True)
            with autocast_context(device, precision):
                logits = net(x)
                loss = loss_fn(logits.float(), y)
            if torch.isfinite(loss):
                loss.backward()
                optimiser.step()
            keep = y != IGNORE
            n = int(keep.sum())
            total_loss += float(loss.detach()) * n if n else 0.0
            correct += int((logits.argmax(1)[keep] == y[keep]).sum())
            seen += n
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            bar.update(1)
        bar.close()
        val_acc = evaluate_accuracy(net, val_loader, device, precision) if val_samples else float("nan")
        row = {
            "epoch": float(epoch),
            "train_loss": total_loss / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_accuracy": val_acc,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        log.info("epoch %d: loss %.4f train acc %.3f val acc %.3f", epoch + 1, row["train_loss"],
                 row["train_accuracy"], val_acc)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}, "
                       f"train accuracy {row['train_accuracy']:.3f}, val accuracy {val_acc:.3f}")
        score = val_acc if not np.isnan(val_acc) else -row["train_loss"]
        best_score = best.get("val_accuracy", float("nan")) if not np.isnan(val_acc) else -best.get("train_loss", float("inf"))
        if not best or np.isnan(best_score) or score > best_score:
            best = dict(row)
            model_id = save_best({**best, "history": history})  # type: ignore[dict-item]
        torch.save(
            {"model": net.state_dict(), "optimiser": optimiser.state_dict(), "epoch": epoch,
             "history": history, "best": best, "labels": labels, "weights_source": weights_used,
             "rng": torch.get_rng_state(), "config": asdict(cfg)},
            out_dir / "last.pt",
        )
    (out_dir / "history.json").write_text(json.dumps({"history": history, "best": best}, indent=2))
    if not model_id:
        model_id = file_sha256(best_path)[:16]
    return TrainResult(best_path, model_id, labels, history, best, weights_used)
