"""Build a labelled near-duplicate study from a dataset's own photos.

Each *source* photo is embedded, and so is one transformed copy per transform kind (see
:mod:`shared.dedup.transforms`); *distractor* photos (other products) are embedded as they
are. The result is one feature matrix with, per row, what it is and which source it comes
from: enough to score every (source, copy) pair as a positive, pairs of different photos as
negatives, and to run the whole dedup over the mix.

Used by ``fir dedup calibrate`` and ``bench/bench_dedup_quality.py``. This module reads image
files (an adapter); the scoring math is in :mod:`shared.dedup.calibrate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from shared.dedup.phash import grey_pixels, phash_bits
from shared.dedup.transforms import LabelledPair, apply, check_kinds, hard_negative_pairs
from shared.errors import BadImage

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Embed = Callable[[list[Image.Image]], FloatArray]

ORIGINAL = "original"
DISTRACTOR = "distractor"


@dataclass(frozen=True)
class Photo:
    key: str
    path: Path
    category: str


@dataclass
class Study:
    """Row ``r``: ``vectors[r]`` is the feature of ``keys[r]`` (a photo, or a copy of
    ``keys[source[r]]`` made by transform ``kinds[r]``)."""

    vectors: FloatArray
    keys: list[str]
    categories: list[str]
    kinds: list[str]  # "original", "distractor", or a transform name
    source: IntArray  # the row of the photo a row was made from (itself for photos)
    phash: list[int]
    params: list[dict[str, object]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # photos that did not decode

    def __len__(self) -> int:
        return len(self.keys)

    def rows_of(self, kind: str) -> IntArray:
        return np.flatnonzero(np.asarray(self.kinds) == kind)

    def same_product(self, a: IntArray, b: IntArray) -> npt.NDArray[np.bool_]:
        """Whether rows ``a[k]`` and ``b[k]`` show the same product (same source photo)."""
        return np.asarray(self.source[a] == self.source[b])


def build_study(
    sources: Sequence[Photo],
    distractors: Sequence[Photo],
    embed: Embed,
    *,
    transforms: Sequence[str],
    seed: int = 0,
    batch_size: int = 32,
    max_side: int = 640,
    progress: Callable[[int, int], None] | None = None,
) -> Study:
    """Embed every source, one copy of it per transform, and every distractor.

    Photos are decoded with FIR's safe loader; a photo that fails to decode is skipped and
    listed in ``skipped``. Photos larger than ``max_side`` are reduced first (as a catalogue's
    thumbnails are; it keeps the study quick).
    """
    from shared.imaging import load_image

    kinds = check_kinds(transforms)
    rng = np.random.default_rng(seed)
    vectors: list[FloatArray] = []
    keys: list[str] = []
    cats: list[str] = []
    row_kinds: list[str] = []
    source: list[int] = []
    hashes: list[int] = []
    params: list[dict[str, object]] = []
    skipped: dict[str, str] = {}
    batch: list[Image.Image] = []
    total = len(sources) * (1 + len(kinds)) + len(distractors)

    def flush() -> None:
        if batch:
            vectors.append(np.asarray(embed(batch), dtype=np.float32))
            batch.clear()
            if progress:
                progress(len(keys), total)

    def add(img: Image.Image, key: str, cat: str, kind: str, src: int, p: dict[str, object]) -> None:
        keys.append(key)
        cats.append(cat)
        row_kinds.append(kind)
        source.append(src)
        hashes.append(phash_bits(grey_pixels(img)))
        params.append(p)
        batch.append(img)
        if len(batch) >= batch_size:
            flush()

    def load(photo: Photo) -> Image.Image | None:
        try:
            img = load_image(photo.path)
        except BadImage as exc:
            skipped[photo.key] = exc.reason
            return None
        if max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return img

    for photo in sources:
        img = load(photo)
        if img is None:
            continue
        row = len(keys)
        add(img, photo.key, photo.category, ORIGINAL, row, {})
        for kind in kinds:
            copy, p = apply(img, kind, rng)
            add(copy, f"{photo.key}#{kind}", photo.category, kind, row, p)
    for photo in distractors:
        img = load(photo)
        if img is None:
            continue
        add(img, photo.key, photo.category, DISTRACTOR, len(keys), {})
    flush()
    dim = vectors[0].shape[1] if vectors else 0
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    return Study(matrix, keys, cats, row_kinds, np.asarray(source, dtype=np.int64), hashes, params, skipped)


def labelled_pairs(
    study: Study, *, hard_per_row: int = 1, random_per_row: int = 1, seed: int = 0
) -> list[LabelledPair]:
    """Positives: every (source, copy) pair. Negatives: for every photo (sources and
    distractors), its most similar other photos of the same category and random ones."""
    pairs: list[LabelledPair] = []
    for r in range(len(study)):
        kind = study.kinds[r]
        if kind not in (ORIGINAL, DISTRACTOR):
            pairs.append(LabelledPair(int(study.source[r]), r, True, kind, study.categories[r]))
    photos = [r for r in range(len(study)) if study.kinds[r] in (ORIGINAL, DISTRACTOR)]
    pairs.extend(hard_negative_pairs(study.vectors, study.categories, photos, per_row=hard_per_row,
                                     random_per_row=random_per_row, rng=np.random.default_rng(seed)))
    return pairs


def pair_scores(vectors: FloatArray, pairs: Sequence[LabelledPair]) -> npt.NDArray[np.float64]:
    """Cosine similarity of each labelled pair."""
    if not pairs:
        return np.empty(0)
    a = np.asarray([p.a for p in pairs])
    b = np.asarray([p.b for p in pairs])
    x = np.asarray(vectors, dtype=np.float64)
    na = np.linalg.norm(x[a], axis=1)
    nb = np.linalg.norm(x[b], axis=1)
    dots = np.einsum("ij,ij->i", x[a], x[b])
    return np.asarray(dots / np.maximum(na * nb, 1e-12))


def embedder_callable(net: object, backbone: str, image_size: int, device: str = "cpu") -> Embed:
    """An :data:`Embed` over a feature network (a FIR model's or a pretrained backbone's)."""
    from shared.vision.embed import Embedder

    embedder = Embedder(net, backbone, image_size, device=device)  # type: ignore[arg-type]

    def run(images: list[Image.Image]) -> FloatArray:
        return embedder.embed_images(images, batch_size=max(len(images), 1))

    return run
