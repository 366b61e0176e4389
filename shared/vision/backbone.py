"""Backbone registry and the network FIR trains and embeds with.

A :class:`FeatureNet` is a backbone body that returns pooled features ``[n, feature_dim]``
plus a linear classification head sized to the catalogue's categories. The body's pooled
activation is the image's feature; the head exists for fine-tuning with cross-entropy.

Weights are one of:
- ``imagenet``: the backbone's ImageNet weights (torchvision's downloader, cached under
  ``$TORCH_HOME``; fails with :class:`WeightsUnavailable` where no network is reachable);
- ``none``: random initialisation (seeded);
- a path to a FIR model file (see :mod:`shared.vision.modelfile`) or a plain state_dict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shared.errors import InvalidInput, WeightsUnavailable

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneInfo:
    """What FIR needs to know about one backbone architecture."""

    name: str
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Builds the body; the argument is True for pretrained weights. Returns the body and a
    # words-description of the weights it loaded.
    build_body: Callable[[bool], tuple[nn.Module, str]]


_REGISTRY: dict[str, BackboneInfo] = {}


def register_backbone(info: BackboneInfo) -> None:
    _REGISTRY[info.name] = info


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidInput(
            f"unknown backbone {name!r} (known: {', '.join(backbone_names())})"
        ) from None


def _resnet50_body(pretrained: bool) -> tuple[nn.Module, str]:
    from torchvision.models import ResNet50_Weights, resnet50

    if pretrained:
        try:
            net = resnet50(weights=ResNet50_Weights.IMAGENET1K_V2)
        except Exception as exc:  # URLError, HTTPError, socket errors, hash mismatch...
            raise WeightsUnavailable(
                "could not download ResNet50 ImageNet weights through torchvision "
                f"({type(exc).__name__}: {exc}). Use weights=none, a local checkpoint path, "
                "or place the file in torch's cache ($TORCH_HOME/hub/checkpoints)."
            ) from exc
        used = "imagenet (torchvision ResNet50_Weights.IMAGENET1K_V2)"
    else:
        net = resnet50(weights=None)
        used = "none (random initialisation)"
    net.fc = nn.Identity()
    return net, used


register_backbone(
    BackboneInfo(
        name="resnet50",
        feature_dim=2048,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        build_body=_resnet50_body,
    )
)


class FeatureNet(nn.Module):
    """A backbone body (pooled features) and a linear head over the catalogue's categories."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, max(num_classes, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def build_network(
    backbone: str, weights: str, num_classes: int, seed: int = 0
) -> tuple[FeatureNet, str]:
    """Build a :class:`FeatureNet`; returns it and a description of the weights used.

    ``weights`` is ``imagenet``, ``none`` or a path to a plain state_dict of the body.
    (FIR model files are loaded by :func:`shared.vision.modelfile.load_model`.)
    """
    info = get_backbone(backbone)
    torch.manual_seed(seed)
    if weights == "imagenet":
        body, used = info.build_body(True)
    elif weights == "none":
        body, used = info.build_body(False)
    else:
        path = Path(weights)
        if not path.is_file():
            raise InvalidInput(
                f"weights must be 'imagenet', 'none' or an existing file; {weights!r} is none of these"
            )
        body, _ = info.build_body(False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        missing, unexpected = body.load_state_dict(state, strict=False)
        if missing:
            raise InvalidInput(f"{path}: not a {backbone} state_dict ({len(missing)} missing keys)")
        used = f"checkpoint {path}" + (f" ({len(unexpected)} unused keys)" if unexpected else "")
    log.info("backbone %s, weights: %s", backbone, used)
    return FeatureNet(body, info.feature_dim, num_classes), used


from shared.vision import efficientnet_lite as _efficientnet_lite  # noqa: E402,F401  (registers efficientnet_lite0)
