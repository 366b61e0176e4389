"""Threshold calibration on labelled pairs: precision-recall curves and a threshold per
category. The math is pure numpy; :func:`draw_pr_curves` renders a PNG with Pillow (no
plotting library needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.errors import InvalidInput

FloatArray = npt.NDArray[np.float64]

DEFAULT_TARGET_PRECISION = 0.98


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall when pairs scoring ``>= thresholds[k]`` are called duplicates
    (thresholds descending, one per distinct score)."""

    thresholds: FloatArray
    precision: FloatArray
    recall: FloatArray
    positives: int
    negatives: int


def pr_curve(scores: Sequence[float] | FloatArray, labels: Sequence[bool] | npt.NDArray[np.bool_]) -> PRCurve:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise InvalidInput("scores and labels must be 1-d and of the same length")
    positives = int(y.sum())
    negatives = int(len(y) - positives)
    if len(s) == 0:
        empty = np.empty(0)
        return PRCurve(empty, empty, empty, 0, 0)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp, fp = tp[last], fp[last]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(positives, 1)
    return PRCurve(s[last], precision, recall, positives, negatives)


@dataclass(frozen=True)
class Choice:
    threshold: float
    precision: float
    recall: float
    f1: float
    positives: int
    negatives: int
    rule: str  # how it was chosen

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def choose_threshold(
    curve: PRCurve, target_precision: float = DEFAULT_TARGET_PRECISION, fallback: float = 0.9
) -> Choice:
    """The lowest threshold whose precision is at least ``target_precision`` (the most recall
    at that precision). When none reaches it, the threshold of the best F1. With no labelled
    pairs at all, ``fallback``.

    The chosen threshold sits halfway between the chosen score and the next lower score (so a
    new pair scoring just under the last accepted one is not thrown out by a hair).
    """
    if not 0.0 < target_precision <= 1.0:
        raise InvalidInput("target precision must be in (0, 1]")
    if len(curve.thresholds) == 0 or curve.positives == 0:
        return Choice(fallback, 0.0, 0.0, 0.0, curve.positives, curve.negatives, "fallback: no positive pairs")
    p, r, t = curve.precision, curve.recall, curve.thresholds
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    ok = np.flatnonzero(p >= target_precision)
    if len(ok):
        k = int(ok[-1])
        rule = f"max recall at precision >= {target_precision}"
    else:
        k = int(np.argmax(f1))
        rule = f"max F1 (precision {target_precision} not reached)"
    threshold = float(t[k]) if k + 1 >= len(t) else float((t[k] + t[k + 1]) / 2)
    threshold = min(max(threshold, 1e-6), 1.0)
    return Choice(threshold, float(p[k]), float(r[k]), float(f1[k]), curve.positives, curve.negatives, rule)


def precision_recall_at(
    scores: Sequence[float] | FloatArray, labels: Sequence[bool] | npt.NDArray[np.bool_], threshold: float
) -> tuple[float, float, int, int]:
    """(precision, recall, true positives, false positives) at one threshold."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    called = s >= threshold
    tp = int((called & y).sum())
    fp = int((called & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / int(y.sum()) if y.any() else 0.0
    return precision, recall, tp, fp


def calibrate(
    scores: Sequence[float] | FloatArray,
    labels: Sequence[bool] | npt.NDArray[np.bool_],
    categories: Sequence[str],
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_pairs: int = 20,
    fallback: float = 0.9,
) -> tuple[dict[str, Choice], dict[str, PRCurve]]:
    """A threshold per category and one over all pairs (key ``"*"``).

    A category with fewer than ``min_pairs`` positive or negative pairs gets the overall
    threshold (its own curve would be noise).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    cats = np.asarray(list(categories), dtype=object)
    if not (len(s) == len(y) == len(cats)):
        raise InvalidInput("scores, labels and categories must be of the same length")
    curves = {"*": pr_curve(s, y)}
    choices = {"*": choose_threshold(curves["*"], target_precision, fallback)}
    for cat in sorted({str(c) for c in cats.tolist()}):
        mask = cats == cat
        curve = pr_curve(s[mask], y[mask])
        curves[cat] = curve
        if curve.positives < min_pairs or curve.negatives < min_pairs:
            base = choices["*"]
            p, r, _, _ = precision_recall_at(s[mask], y[mask], base.threshold)
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            choices[cat] = Choice(base.threshold, p, r, f1, curve.positives, curve.negatives,
                                  f"overall threshold (fewer than {min_pairs} pairs of a kind)")
        else:
            choices[cat] = choose_threshold(curve, target_precision, fallback)
    return choices, curves


def thresholds_json(choices: Mapping[str, Choice], **extra: Any) -> dict[str, Any]:
    """The chosen thresholds as written to ``thresholds.json`` (``fir dedup --thresholds``
    reads ``default`` and ``categories``)."""
    return {
        "default": round(choices["*"].threshold, 4),
        "categories": {c: round(ch.threshold, 4) for c, ch in choices.items() if c != "*"},
        "detail": {c: ch.as_dict() for c, ch in choices.items()},
        **extra,
    }


def load_thresholds(path: Path) -> tuple[float | None, dict[str, float]]:
    """``(default, per category)`` from a thresholds JSON written by ``fir dedup calibrate``."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read thresholds from {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: not a thresholds object")
    default = data.get("default")
    cats = data.get("categories") or {}
    if not isinstance(cats, dict):
        raise InvalidInput(f"{path}: 'categories' must be an object")
    return (float(default) if default is not None else None), {str(k): float(v) for k, v in cats.items()}


# -- drawing ---------------------------------------------------------------------------------
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def draw_pr_curves(
    curves: Mapping[str, PRCurve],
    path: Path,
    *,
    chosen: Mapping[str, Choice] | None = None,
    title: str = "near-duplicate precision / recall",
    size: tuple[int, int] = (900, 640),
) -> Path:
    """Precision (y) against recall (x), one line per curve, the chosen points marked."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 70, 230, 40, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pw, ph = width - left - right, height - top - bottom
    # The interesting part of a dedup PR curve is high precision: y from 0.5 to 1.
    y_lo = 0.5

    def xy(recall: float, precision: float) -> tuple[float, float]:
        p = min(max(precision, y_lo), 1.0)
        return left + recall * pw, top + (1.0 - (p - y_lo) / (1.0 - y_lo)) * ph

    d.rectangle([left, top, left + pw, top + ph], outline="black")
    for k in range(11):
        x = left + k * pw / 10
        d.line([x, top + ph, x, top + ph + 5], fill="black")
        d.text((x - 10, top + ph + 8), f"{k / 10:.1f}", fill="black")
        yv = y_lo + k * (1 - y_lo) / 10
        _, y = xy(0, yv)
        d.line([left - 5, y, left, y], fill="black")
        d.text((left - 40, y - 6), f"{yv:.2f}", fill="black")
        if 0 < k < 10:
            d.line([x, top, x, top + ph], fill=(235, 235, 235))
            d.line([left, y, left + pw, y], fill=(235, 235, 235))
    d.text((left + pw / 2 - 20, height - 25), "recall", fill="black")
    d.text((8, top - 25), "precision", fill="black")
    d.text((left, 10), title, fill="black")
    for n, (name, curve) in enumerate(curves.items()):
        colour = (0, 0, 0) if name == "*" else PALETTE[n % len(PALETTE)]
        if len(curve.recall):
            points = [xy(0.0, float(curve.precision[0]))] + [
                xy(float(r), float(p)) for r, p in zip(curve.recall, curve.precision, strict=True)
            ]
            d.line(points, fill=colour, width=3 if name == "*" else 2)
        label = "all pairs" if name == "*" else name
        if chosen and name in chosen:
            c = chosen[name]
            if c.positives:
                x, y = xy(c.recall, c.precision)
                d.ellipse([x - 4, y - 4, x + 4, y + 4], outline=colour, width=2)
            label += f"  t={c.threshold:.3f}"
        ly = top + 5 + n * 18
        d.line([left + pw + 15, ly + 6, left + pw + 35, ly + 6], fill=colour, width=3)
        d.text((left + pw + 40, ly), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
