"""Blockwise near-duplicate pairs against the brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from shared.dedup.pairs import (
    Pairs,
    brute_force_pairs,
    cosine_to,
    inverse_norms,
    near_duplicate_pairs,
)
from shared.errors import InvalidInput


def planted(n: int, d: int, copies: int, noise: float, seed: int = 0) -> np.ndarray:
    """Random vectors, and ``copies`` of them planted again with a little noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d)).astype(np.float32)
    src = rng.choice(n, copies, replace=False)
    dup = base[src] + noise * rng.normal(size=(copies, d)).astype(np.float32)
    x = np.concatenate([base, dup])
    return x[rng.permutation(len(x))] * rng.uniform(0.5, 3.0, size=(len(x), 1)).astype(np.float32)


def as_set(p: Pairs, margin_from: float | None = None) -> set[tuple[int, int]]:
    keep = np.ones(len(p), bool) if margin_from is None else np.abs(p.sim - margin_from) > 1e-4
    return set(zip(p.i[keep].tolist(), p.j[keep].tolist(), strict=True))


@pytest.mark.parametrize(("block_rows", "block_cols"), [(2048, 8192), (7, 13), (1, 5), (64, 1)])
def test_blockwise_equals_brute_force(block_rows: int, block_cols: int) -> None:
    x = planted(150, 32, 40, 0.15)
    t = 0.95
    ref = brute_force_pairs(x, t)
    got = near_duplicate_pairs(x, t, block_rows=block_rows, block_cols=block_cols)
    assert len(ref) >= 30  # the planted copies are found
    assert as_set(got, t) == as_set(ref, t)
    assert np.all(got.i < got.j)
    # Canonical order, and similarities agree with the reference.
    assert np.array_equal(np.lexsort((got.j, got.i)), np.arange(len(got)))
    ref_sim = {(a, b): s for a, b, s in zip(ref.i.tolist(), ref.j.tolist(), ref.sim.tolist(), strict=True)}
    for a, b, s in zip(got.i.tolist(), got.j.tolist(), got.sim.tolist(), strict=True):
        assert s == pytest.approx(ref_sim.get((a, b), s), abs=1e-5)


def test_low_threshold_many_pairs_and_near_one() -> None:
    x = planted(60, 8, 10, 0.3, seed=3)
    for t in (0.2, 0.5, 0.999):
        ref = brute_force_pairs(x, t)
        got = near_duplicate_pairs(x, t, block_rows=16, block_cols=16)
        assert as_set(got, t) == as_set(ref, t)


def test_query_rows_only_pairs_touching_them() -> None:
    x = planted(120, 16, 50, 0.1, seed=1)
    t = 0.9
    ref = brute_force_pairs(x, t)
    query = np.asarray([3, 17, 18, 40, 41, 99, 150, 169])
    qset = set(query.tolist())
    expected = {(a, b) for a, b in as_set(ref, t) if a in qset or b in qset}
    got = near_duplicate_pairs(x, t, query_rows=query[::-1], block_rows=3, block_cols=11)
    assert as_set(got, t) == expected
    assert len(as_set(got)) == len(got)  # each pair once, even between two query rows
    assert np.all(got.i < got.j)
    assert len(near_duplicate_pairs(x, t, query_rows=np.asarray([], dtype=np.int64))) == 0


def test_zero_vectors_match_nothing_and_scale_does_not_matter() -> None:
    x = np.asarray([[0, 0, 0], [1, 2, 3], [10, 20, 30.0001], [0, 0, 0], [-1, 0, 0]], np.float32)
    got = near_duplicate_pairs(x, 0.99)
    assert as_set(got) == {(1, 2)}
    assert inverse_norms(x)[0] == 0.0


def test_progress_and_small_inputs() -> None:
    seen: list[tuple[int, int]] = []
    x = planted(50, 4, 5, 0.01)
    near_duplicate_pairs(x, 0.99, block_rows=16, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (55, 55) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(near_duplicate_pairs(np.ones((1, 4), np.float32), 0.5)) == 0
    assert len(near_duplicate_pairs(np.ones((0, 4), np.float32), 0.5)) == 0


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_bad_threshold(bad: float) -> None:
    with pytest.raises(InvalidInput):
        near_duplicate_pairs(np.ones((3, 2), np.float32), bad)


def test_too_many_pairs_is_refused() -> None:
    x = np.ones((40, 3), np.float32)
    with pytest.raises(InvalidInput, match="threshold is too low"):
        near_duplicate_pairs(x, 0.5, max_pairs=100)


def test_cosine_to_anchor() -> None:
    x = np.asarray([[1, 0], [1, 1], [0, 2], [-3, 0]], np.float32)
    sims = cosine_to(x, np.asarray([0, 1, 2, 3]), 0)
    assert sims.tolist() == pytest.approx([1.0, 2**-0.5, 0.0, -1.0], abs=1e-6)
