"""A generated catalogue: garment-like silhouettes in three categories, for the demo and
for tests that must run without real photos.

Each category has its own silhouette (dress: a flared A-line, shirt: a body with long
sleeves and a collar, toptee: a short-sleeved T), drawn with a random colour, size, position
and background, plus noise, so that a small network can learn the categories but no two
images are the same.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = ("dress", "shirt", "toptee")


def _colour(rng: random.Random, dark: bool = False) -> tuple[int, int, int]:
    lo, hi = (20, 120) if dark else (60, 240)
    return (rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi))


def draw_garment(category: str, size: int = 96, seed: int = 0) -> Image.Image:
    rng = random.Random(f"{category}-{seed}")
    bg = tuple(min(255, c + 60) for c in _colour(rng))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    s = size * rng.uniform(0.75, 0.95)
    cx = size / 2 + rng.uniform(-0.06, 0.06) * size
    top = (size - s) / 2 + rng.uniform(-0.04, 0.04) * size
    col = _colour(rng, dark=True)

    def p(x: float, y: float) -> tuple[float, float]:
        return (cx + x * s, top + y * s)

    if category == "dress":
        d.polygon([p(-0.12, 0), p(0.12, 0), p(0.16, 0.3), p(0.42, 1.0), p(-0.42, 1.0), p(-0.16, 0.3)], fill=col)
        d.rectangle([p(-0.16, 0.28), p(0.16, 0.33)], fill=_colour(rng))
    elif category == "shirt":
        d.polygon([p(-0.25, 0.05), p(0.25, 0.05), p(0.25, 0.95), p(-0.25, 0.95)], fill=col)
        d.polygon([p(-0.25, 0.05), p(-0.48, 0.85), p(-0.38, 0.88), p(-0.22, 0.3)], fill=col)
        d.polygon([p(0.25, 0.05), p(0.48, 0.85), p(0.38, 0.88), p(0.22, 0.3)], fill=col)
        d.polygon([p(-0.1, 0.0), p(0.0, 0.12), p(0.1, 0.0)], fill=(245, 245, 245))
        for i in range(4):
            d.ellipse([p(-0.02, 0.2 + 0.18 * i), p(0.02, 0.24 + 0.18 * i)], fill=(250, 250, 250))
    elif category == "toptee":
        d.polygon([p(-0.28, 0.1), p(0.28, 0.1), p(0.28, 0.75), p(-0.28, 0.75)], fill=col)
        d.polygon([p(-0.28, 0.1), p(-0.5, 0.3), p(-0.4, 0.4), p(-0.28, 0.3)], fill=col)
        d.polygon([p(0.28, 0.1), p(0.5, 0.3), p(0.4, 0.4), p(0.28, 0.3)], fill=col)
        d.ellipse([p(-0.08, 0.05), p(0.08, 0.16)], fill=bg)
    else:
        raise ValueError(f"no silhouette for category {category!r}")
    for _ in range(rng.randint(5, 25)):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        r = rng.uniform(0.5, 2.5)
        d.ellipse([x - r, y - r, x + r, y + r], fill=_colour(rng))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def generate_catalogue(
    root: Path,
    per_category: dict[str, int] | None = None,
    size: int = 96,
    seed: int = 0,
    categories: tuple[str, ...] = CATEGORIES,
) -> Path:
    """Write ``root/<split>/<category>/<n>.jpg``; returns ``root``.

    ``per_category`` gives images per split (default train 24, val 6, test 6).
    """
    counts = per_category or {"train": 24, "val": 6, "test": 6}
    n = 0
    for split, count in counts.items():
        for cat in categories:
            folder = Path(root) / split / cat
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_garment(cat, size, seed=seed * 100_003 + n).save(folder / f"{cat}-{split}-{i:04d}.jpg", quality=90)
                n += 1
    return Path(root)
