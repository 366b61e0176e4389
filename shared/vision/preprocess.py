"""The one preprocessing definition shared by training, indexing and querying."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from shared.vision.backbone import get_backbone


def resize_size(image_size: int) -> int:
    """Resize the short side to 256/224 of the crop, as ImageNet evaluation does."""
    return int(round(image_size * 256 / 224))


def eval_geometry(image_size: int) -> v2.Compose:
    """The evaluation resize and centre crop, on a uint8 ``[3, h, w]`` tensor on any device:
    the geometry of :func:`make_transform`, also run on a GPU after decoding there."""
    return v2.Compose([v2.Resize(resize_size(image_size), antialias=True), v2.CenterCrop(image_size)])


def make_transform(backbone: str, image_size: int, train: bool = False, normalise: bool = True) -> v2.Compose:
    """PIL RGB image -> normalised float tensor ``[3, image_size, image_size]``.

    Training adds a random horizontal flip and a random-resized crop on top of the same
    resize, crop and normalisation. ``normalise=False`` stops after the crop, at a uint8
    tensor: :func:`normalise_batch` finishes it later (on a GPU, after a 4x smaller copy).
    """
    info = get_backbone(backbone)
    if train:
        geometry: list[v2.Transform] = [
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        geometry = [eval_geometry(image_size)]
    if not normalise:
        return v2.Compose([v2.ToImage(), *geometry])
    return v2.Compose(
        [
            v2.ToImage(),
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(info.mean), std=list(info.std)),
        ]
    )


def normalise_batch(batch: torch.Tensor, backbone: str) -> torch.Tensor:
    """The last two steps of :func:`make_transform` (scale to [0, 1], normalise) on a uint8
    batch ``[n, 3, h, w]``, on whatever device it is on: the same operations, so the same
    values as the full transform."""
    info = get_backbone(backbone)
    x = F.to_dtype(batch, torch.float32, scale=True)
    return F.normalize(x, mean=list(info.mean), std=list(info.std))


def preprocess(images: list[Image.Image], backbone: str, image_size: int) -> torch.Tensor:
    transform = make_transform(backbone, image_size)
    return torch.stack([transform(img) for img in images])
