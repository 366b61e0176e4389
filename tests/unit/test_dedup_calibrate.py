"""Perceptual hash, the near-duplicate generator, hard negatives, PR curves and thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from shared.dedup import phash as ph
from shared.dedup.calibrate import (
    calibrate,
    choose_threshold,
    draw_pr_curves,
    load_thresholds,
    pr_curve,
    precision_recall_at,
    thresholds_json,
)
from shared.dedup.transforms import TRANSFORMS, apply, check_kinds, hard_negative_pairs
from shared.errors import InvalidInput


def picture(seed: int, size: tuple[int, int] = (120, 160)) -> Image.Image:
    """A smooth random picture (blobs of colour), so that transforms keep its structure."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)


def test_phash_format_and_distances() -> None:
    img = picture(1)
    h = ph.phash(img)
    assert len(h) == 16 and int(h, 16) == ph.parse(h)
    a = ph.phash_bits(ph.grey_pixels(img))
    mirrored = ph.phash_bits(ph.grey_pixels(ImageOps.mirror(img)))
    # Mirroring negates the odd horizontal frequencies (up to the resampling's rounding).
    assert ((mirrored ^ a ^ ph.FLIP_MASK).bit_count()) <= 3
    assert ph.hamming(a, mirrored) <= 3
    assert ph.hamming(a, mirrored, flip_invariant=False) > 10
    resized = ph.phash_bits(ph.grey_pixels(img.resize((300, 400))))
    assert ph.hamming(a, resized) <= 4
    other = ph.phash_bits(ph.grey_pixels(picture(2)))
    assert ph.hamming(a, other) > 12
    assert ph.hamming_many([a, None], [resized, a]).tolist()[1] == -1
    assert ph.parse(None) is None and ph.parse("zz") is None


def test_phash_file(tmp_path: Path) -> None:
    path = tmp_path / "p.jpg"
    picture(3, (640, 480)).save(path, quality=90)
    assert ph.hamming(ph.parse(ph.phash_file(str(path))) or 0, ph.phash_bits(ph.grey_pixels(picture(3, (640, 480))))) <= 6


@pytest.mark.parametrize("kind", TRANSFORMS)
def test_each_transform_makes_a_close_copy(kind: str) -> None:
    img = picture(4)
    rng = np.random.default_rng(0)
    out, params = apply(img, kind, rng)
    assert out.mode == "RGB" and isinstance(params, dict)
    w, h = img.size
    if kind == "resize":
        assert 0.5 <= out.size[0] / w <= 2.0 and out.size != img.size
    elif kind == "crop":
        assert 0.79 * w <= out.size[0] < w and 0.79 * h <= out.size[1] < h
    elif kind == "pad":
        assert out.size[0] >= w and out.size[1] >= h and out.size != img.size
    elif kind in ("jpeg", "flip", "colour"):
        assert out.size == img.size
    if kind == "jpeg":
        assert 30 <= int(params["quality"]) <= 90
    d = ph.hamming(ph.phash_bits(ph.grey_pixels(img)), ph.phash_bits(ph.grey_pixels(out)))
    assert d <= (24 if kind in ("crop", "pad") else 8), d


def test_transform_names_are_checked() -> None:
    with pytest.raises(InvalidInput):
        apply(picture(1), "rotate", np.random.default_rng(0))
    with pytest.raises(InvalidInput):
        check_kinds([])
    assert check_kinds(["flip"]) == ["flip"]


def test_hard_negatives_are_the_nearest_other_photo_of_the_category() -> None:
    vecs = np.asarray([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.2], [1, 0, 0]], np.float32)
    cats = ["a", "a", "a", "a", "b"]
    pairs = hard_negative_pairs(vecs, cats, [0, 1, 2, 3, 4], per_row=1, random_per_row=0)
    hard = {(p.a, p.b) for p in pairs}
    assert hard == {(0, 1), (2, 3)}  # row 4 is alone in its category
    assert all(not p.duplicate and p.kind == "hard_negative" for p in pairs)


def test_pr_curve_and_threshold_choice() -> None:
    scores = [0.99, 0.97, 0.95, 0.93, 0.90, 0.85, 0.80]
    labels = [True, True, False, True, True, False, False]
    curve = pr_curve(scores, labels)
    assert curve.positives == 4 and curve.negatives == 3
    assert curve.precision.tolist() == pytest.approx([1, 1, 2 / 3, 3 / 4, 4 / 5, 4 / 6, 4 / 7])
    assert curve.recall.tolist() == pytest.approx([0.25, 0.5, 0.5, 0.75, 1, 1, 1])
    perfect = choose_threshold(curve, target_precision=1.0)
    assert perfect.threshold == pytest.approx(0.96) and perfect.recall == 0.5  # between 0.97 and 0.95
    loose = choose_threshold(curve, target_precision=0.8)
    assert loose.threshold == pytest.approx(0.875) and loose.recall == 1.0
    assert precision_recall_at(scores, labels, 0.875)[:2] == (0.8, 1.0)
    # Ties share one point on the curve.
    tied = pr_curve([0.9, 0.9, 0.5], [True, False, True])
    assert tied.thresholds.tolist() == [0.9, 0.5] and tied.precision.tolist() == [0.5, 2 / 3]
    assert choose_threshold(pr_curve([], []), fallback=0.77).threshold == 0.77


def test_calibrate_per_category_and_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 200
    labels = np.arange(2 * n) < n
    cats = ["dress"] * n + ["dress"] * n
    pos = rng.uniform(0.88, 1.0, n)
    neg = rng.uniform(0.5, 0.9, n)
    scores = np.concatenate([pos, neg])
    # A small category: too few pairs for its own curve.
    scores = np.concatenate([scores, [0.99, 0.7]])
    labels = np.concatenate([labels, [True, False]])
    cats = cats + ["hat", "hat"]
    choices, curves = calibrate(scores, labels, cats, target_precision=0.99, min_pairs=20)
    assert set(choices) == {"*", "dress", "hat"} and set(curves) == set(choices)
    assert choices["dress"].precision >= 0.99 and 0.88 <= choices["dress"].threshold <= 0.92
    assert choices["hat"].threshold == choices["*"].threshold and "overall" in choices["hat"].rule
    png = draw_pr_curves(curves, tmp_path / "pr.png", chosen=choices)
    with Image.open(png) as img:
        assert img.size == (900, 640)
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(thresholds_json(choices, model="m")))
    default, per_cat = load_thresholds(path)
    assert default == pytest.approx(choices["*"].threshold, abs=1e-4)
    assert set(per_cat) == {"dress", "hat"}
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(InvalidInput):
        load_thresholds(tmp_path / "bad.json")
