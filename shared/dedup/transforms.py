"""Near-duplicates made from a catalogue's own photos, and hard negatives, for calibration.

Each transform is what a retail catalogue does to a photo when it lists a product again:
re-encoding as JPEG at quality 30-90, resizing by 0.5-2x, cropping away up to 20% of each
side in total, mirroring, a small colour shift, padding (letterboxing) onto a plain
background. Each takes a PIL image and a numpy ``Generator`` and returns a new image; the
parameters drawn are returned too, so that a report can say what was done.

Hard negatives are pairs of different photos of the same category (see
:func:`hard_negative_pairs`): the ones most similar in feature space are the ones that make
precision hard.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageEnhance, ImageOps

from shared.errors import InvalidInput

TRANSFORMS = ("jpeg", "resize", "crop", "flip", "colour", "pad")

Params = dict[str, Any]
Transform = Callable[[Image.Image, np.random.Generator], tuple[Image.Image, Params]]


def jpeg(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    quality = int(rng.integers(30, 91))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB"), {"quality": quality}


def resize(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    # Log-uniform in [0.5, 2]: as many enlargements as reductions.
    scale = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    w, h = img.size
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return img.resize(size, Image.Resampling.BICUBIC), {"scale": round(scale, 3)}


def crop(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """Remove ``fraction`` (5-20%) of the width and of the height, split at random between
    the two sides."""
    fraction = float(rng.uniform(0.05, 0.20))
    w, h = img.size
    cut_w, cut_h = round(w * fraction), round(h * fraction)
    left = int(rng.integers(0, cut_w + 1))
    top = int(rng.integers(0, cut_h + 1))
    box = (left, top, w - (cut_w - left), h - (cut_h - top))
    return img.crop(box), {"fraction": round(fraction, 3), "box": list(box)}


def flip(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    return ImageOps.mirror(img), {}


def colour(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """Brightness, contrast and saturation each by up to +-15%, and a small channel shift."""
    b, c, s = (float(rng.uniform(0.85, 1.15)) for _ in range(3))
    out = ImageEnhance.Brightness(img.convert("RGB")).enhance(b)
    out = ImageEnhance.Contrast(out).enhance(c)
    out = ImageEnhance.Color(out).enhance(s)
    shift = rng.integers(-12, 13, size=3)
    arr = np.asarray(out, dtype=np.int16) + shift[None, None, :]
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return out, {"brightness": round(b, 3), "contrast": round(c, 3), "saturation": round(s, 3),
                 "shift": [int(v) for v in shift]}


def pad(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """Letterbox onto a white, black or grey canvas: square, or 5-20% more on two sides."""
    w, h = img.size
    fill = [(255, 255, 255), (0, 0, 0), (128, 128, 128)][int(rng.integers(0, 3))]
    if rng.random() < 0.5:
        side = max(w, h)
        size = (side, side)
    else:
        extra = float(rng.uniform(0.05, 0.20))
        size = (round(w * (1 + extra)), h) if rng.random() < 0.5 else (w, round(h * (1 + extra)))
    if size == (w, h):
        size = (w, round(h * 1.1))
    canvas = Image.new("RGB", size, fill)
    canvas.paste(img.convert("RGB"), ((size[0] - w) // 2, (size[1] - h) // 2))
    return canvas, {"size": list(size), "fill": list(fill)}


REGISTRY: dict[str, Transform] = {
    "jpeg": jpeg,
    "resize": resize,
    "crop": crop,
    "flip": flip,
    "colour": colour,
    "pad": pad,
}


def apply(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """A near-duplicate of ``img`` made by transform ``kind``."""
    fn = REGISTRY.get(kind)
    if fn is None:
        raise InvalidInput(f"unknown transform {kind!r} (expected one of {', '.join(TRANSFORMS)})")
    return fn(img, rng)


def check_kinds(kinds: Sequence[str]) -> list[str]:
    out = list(kinds)
    unknown = [k for k in out if k not in REGISTRY]
    if unknown or not out:
        raise InvalidInput(f"transforms must be among {', '.join(TRANSFORMS)}, not {unknown or out}")
    return out


@dataclass(frozen=True)
class LabelledPair:
    """Two rows of a feature matrix, whether they are the same product, and why."""

    a: int
    b: int
    duplicate: bool
    kind: str  # a transform name, "hard_negative" or "random_negative"
    category: str


def hard_negative_pairs(
    vectors: npt.NDArray[np.float32],
    categories: Sequence[str],
    rows: Sequence[int],
    *,
    per_row: int = 1,
    random_per_row: int = 1,
    rng: np.random.Generator | None = None,
) -> list[LabelledPair]:
    """Negative pairs for ``rows`` (originals, each a different product): within the same
    category, each row's ``per_row`` most similar other rows (the hard ones) and
    ``random_per_row`` random others."""
    rng = rng or np.random.default_rng(0)
    rows_arr = np.asarray(rows, dtype=np.int64)
    cats = np.asarray([categories[r] for r in rows_arr])
    x = np.asarray(vectors[rows_arr], dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    x = x / norms
    out: list[LabelledPair] = []
    seen: set[tuple[int, int]] = set()

    def add(p: int, q: int, kind: str, cat: str) -> None:
        a, b = int(rows_arr[p]), int(rows_arr[q])
        key = (min(a, b), max(a, b))
        if a != b and key not in seen:
            seen.add(key)
            out.append(LabelledPair(key[0], key[1], False, kind, cat))

    for cat in sorted(set(cats.tolist())):
        members = np.flatnonzero(cats == cat)
        if len(members) < 2:
            continue
        sims = x[members] @ x[members].T
        np.fill_diagonal(sims, -np.inf)
        k = min(per_row, len(members) - 1)
        for local, p in enumerate(members):
            if k > 0:
                best = np.argpartition(-sims[local], k - 1)[:k]
                for q in best:
                    add(int(p), int(members[q]), "hard_negative", cat)
            for _ in range(random_per_row):
                q = int(rng.integers(0, len(members)))
                if members[q] != p:
                    add(int(p), int(members[q]), "random_negative", cat)
    return out
