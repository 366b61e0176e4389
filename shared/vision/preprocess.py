"""The one preprocessing definition shared by training, indexing and querying."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2

from shared.vision.backbone import get_backbone


def resize_size(image_size: int) -> int:
    """Resize the short side to 256/224 of the crop, as ImageNet evaluation does."""
    return int(round(image_size * 256 / 224))


def make_transform(backbone: str, image_size: int, train: bool = False) -> v2.Compose:
    """PIL RGB image -> normalised float tensor ``[3, image_size, image_size]``.

    Training adds a random horizontal flip and a random-resized crop on top of the same
    resize, crop and normalisation.
    """
    info = get_backbone(backbone)
    if train:
        geometry: list[v2.Transform] = [
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        geometry = [
            v2.Resize(resize_size(image_size), antialias=True),
            v2.CenterCrop(image_size),
        ]
    return v2.Compose(
        [
            v2.ToImage(),
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(info.mean), std=list(info.std)),
        ]
    )


def preprocess(images: list[Image.Image], backbone: str, image_size: int) -> torch.Tensor:
    transform = make_transform(backbone, image_size)
    return torch.stack([transform(img) for img in images])
