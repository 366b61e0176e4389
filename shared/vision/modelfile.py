"""FIR model files: a trained (or frozen) network with everything needed to use it.

One ``.pt`` file holds the backbone name, the weights it started from, the category labels,
the image size, the state_dict, the training config and metrics. Its identity, the
``model_id``, is the first 16 hex digits of the file's sha256: feature sets and routers
record it, and are refused beside another model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shared.errors import InvalidInput, NotFound
from shared.vision.backbone import FeatureNet, build_network, get_backbone

FORMAT = "fir-model/1"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelMeta:
    backbone: str
    weights_source: str
    labels: list[str]
    image_size: int
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    net: FeatureNet
    meta: ModelMeta
    model_id: str
    path: Path


def save_model(net: FeatureNet, meta: ModelMeta, path: Path) -> str:
    """Write a model file atomically; returns its model_id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "backbone": meta.backbone,
        "weights_source": meta.weights_source,
        "labels": list(meta.labels),
        "image_size": meta.image_size,
        "config": meta.config,
        "metrics": meta.metrics,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return file_sha256(path)[:16]


def read_meta(path: Path) -> tuple[ModelMeta, dict[str, Any]]:
    if not path.is_file():
        raise NotFound(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidInput(f"{path} is not a readable FIR model file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InvalidInput(f"{path} is not a FIR model file (format {FORMAT!r} expected)")
    meta = ModelMeta(
        backbone=str(payload["backbone"]),
        weights_source=str(payload["weights_source"]),
        labels=[str(x) for x in payload["labels"]],
        image_size=int(payload["image_size"]),
        config=dict(payload.get("config") or {}),
        metrics=dict(payload.get("metrics") or {}),
    )
    return meta, payload


def load_model(path: Path) -> LoadedModel:
    meta, payload = read_meta(path)
    get_backbone(meta.backbone)
    net, _ = build_network(meta.backbone, "none", num_classes=len(meta.labels))
    net.load_state_dict(payload["state_dict"], strict=True)
    net.eval()
    return LoadedModel(net=net, meta=meta, model_id=file_sha256(path)[:16], path=path)
