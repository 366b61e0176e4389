"""Dedup on real photos (clothing_dataset_small) with EfficientNet-Lite0 ImageNet features:
exact copies by content hash, transformed copies by feature similarity at the default
threshold, and different products left apart. (Skipped with the reason where the photos are
absent; required on CI.)"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.dedup.detect import DEFAULT_THRESHOLD, DedupConfig, DedupInput, find_duplicates
from shared.dedup.groups import ItemFacts
from shared.dedup.phash import grey_pixels, phash_bits
from shared.dedup.transforms import apply
from shared.imaging import load_image

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def lite0() -> object:
    from shared.vision.backbone import build_network
    from shared.vision.embed import Embedder

    net, _ = build_network("efficientnet_lite0", "imagenet", 3)
    return Embedder(net, "efficientnet_lite0", 224, device="cpu")


def encode(img: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exact_transformed_and_distinct(shared_data: Path, lite0: object) -> None:
    folder = shared_data / "clothing_dataset_small" / "test" / "dress"
    paths = sorted(folder.glob("*.jpg"))[:4]
    assert len(paths) == 4, f"expected dress photos in {folder}"
    photos = [p.read_bytes() for p in paths]
    images = [load_image(b) for b in photos]
    rng = np.random.default_rng(7)

    # name -> (image bytes, which photo it shows)
    items: dict[str, tuple[bytes, int]] = {f"p{k}": (b, k) for k, b in enumerate(photos)}
    items["p0-same-bytes"] = (photos[0], 0)  # re-upload: byte-identical
    items["p0-jpeg40"] = (encode(images[0], quality=40), 0)  # re-compressed
    items["p0-colour"] = (encode(apply(images[0], "colour", rng)[0], quality=92), 0)
    items["p1-flipped"] = (encode(apply(images[1], "flip", rng)[0], quality=92), 1)
    items["p1-half-size"] = (encode(images[1].resize((images[1].width // 2, images[1].height // 2))), 1)
    w, h = images[1].size  # a mild crop (3% off each side); 20% crops are found less often
    items["p1-cropped"] = (encode(images[1].crop((w * 3 // 100, h * 3 // 100, w * 97 // 100, h * 97 // 100))), 1)
    names = list(items)
    decoded = [load_image(b) for b, _ in items.values()]
    with torch.inference_mode():
        vectors = lite0.embed_images(decoded, batch_size=len(decoded))  # type: ignore[attr-defined]
    ids = np.arange(1, len(names) + 1, dtype=np.int64)
    data = DedupInput(
        item_ids=ids,
        sha256=[hashlib.sha256(b).hexdigest() for b, _ in items.values()],
        phash=[phash_bits(grey_pixels(img)) for img in decoded],
        categories=["dress"] * len(names),
        facts=[ItemFacts(int(i), width=img.width, height=img.height) for i, img in zip(ids, decoded, strict=True)],
        vectors=vectors,
        vector_rows=np.arange(len(names), dtype=np.int64),
    )
    for config in (DedupConfig(), DedupConfig(use_phash=True)):
        result = find_duplicates(data, config)
        groups = [{names[i - 1] for i in g.item_ids} for g in result.groups]
        assert groups == [{"p0", "p0-same-bytes", "p0-jpeg40", "p0-colour"},
                          {"p1", "p1-flipped", "p1-half-size", "p1-cropped"}], (config, groups)
    p0 = result.groups[0]
    evidence = {names[m.item_id - 1]: m for m in p0.members}
    assert p0.representative_item_id == 1  # oldest = lowest id here
    assert evidence["p0-same-bytes"].hash_equal and not evidence["p0-jpeg40"].hash_equal
    assert evidence["p0-jpeg40"].cosine is not None and evidence["p0-jpeg40"].cosine >= DEFAULT_THRESHOLD
    assert evidence["p0-same-bytes"].phash_distance == 0
    # Different dresses are far below the threshold.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    distinct = unit[:4] @ unit[:4].T
    assert distinct[~np.eye(4, dtype=bool)].max() < DEFAULT_THRESHOLD - 0.2
