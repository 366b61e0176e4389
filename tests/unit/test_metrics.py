"""Retrieval metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import InvalidInput
from shared.evaluation.metrics import (
    average_precision_at_k,
    average_precision_at_k_batch,
    mean_average_precision,
    mean_precision,
    precision_at_k,
    precision_at_k_batch,
    relevance_from_indices,
)


def test_average_precision_by_hand() -> None:
    rel = np.array([1, 0, 1, 0], dtype=bool)
    assert average_precision_at_k(rel, 4, n_relevant=2) == pytest.approx((1 + 2 / 3) / 2)
    # cut at 2: only the first hit counts, divided by min(2, 2)
    assert average_precision_at_k(rel, 2, n_relevant=2) == pytest.approx(1 / 2)
    # cut at 1: divided by min(n_relevant, k) = 1
    assert average_precision_at_k(rel, 1, n_relevant=2) == pytest.approx(1.0)


def test_average_precision_penalises_relevant_items_not_returned() -> None:
    rel = np.array([1, 1], dtype=bool)
    assert average_precision_at_k(rel, 10, n_relevant=2) == pytest.approx(1.0)
    # the catalogue holds 4 relevant items; routing returned only 2 of them
    assert average_precision_at_k(rel, 10, n_relevant=4) == pytest.approx(2 / 4)


def test_average_precision_without_relevant_items() -> None:
    assert average_precision_at_k(np.array([0, 0, 0], dtype=bool), 3, n_relevant=0) == 0.0
    assert average_precision_at_k(np.array([0, 0, 0], dtype=bool), 3, n_relevant=5) == 0.0
    assert average_precision_at_k(np.array([], dtype=bool), 3, n_relevant=5) == 0.0
    # n_relevant 0 wins even if the list claims hits
    assert average_precision_at_k(np.array([1], dtype=bool), 3, n_relevant=0) == 0.0


def test_precision_conventions() -> None:
    rel = np.array([1, 0, 1, 0], dtype=bool)
    assert precision_at_k(rel, 1) == 1.0
    assert precision_at_k(rel, 2) == 0.5
    assert precision_at_k(rel, 3) == pytest.approx(2 / 3)
    # k larger than what was returned: divide by the number returned
    assert precision_at_k(rel, 100) == 0.5
    assert precision_at_k(np.array([1, 1], dtype=bool), 10) == 1.0
    # nothing returned
    assert precision_at_k(np.array([], dtype=bool), 10) == 0.0


@pytest.mark.parametrize("k", [0, -1])
def test_bad_k(k: int) -> None:
    with pytest.raises(InvalidInput):
        precision_at_k(np.array([True]), k)
    with pytest.raises(InvalidInput):
        average_precision_at_k(np.array([True]), k, 1)


def test_batch_matches_scalar_versions_with_padding() -> None:
    rng = np.random.default_rng(0)
    m, w = 40, 12
    rel = rng.random((m, w)) < 0.4
    returned = rng.integers(0, w + 1, size=m)
    valid = np.arange(w)[None, :] < returned[:, None]
    n_rel = rel.sum(axis=1) + rng.integers(0, 4, size=m)
    n_rel[0] = 0
    for k in (1, 3, 5, 12, 50):
        ap = average_precision_at_k_batch(rel, k, n_rel, valid)
        p = precision_at_k_batch(rel, k, valid)
        for i in range(m):
            row = rel[i][valid[i]]
            assert ap[i] == pytest.approx(average_precision_at_k(row, k, int(n_rel[i])))
            assert p[i] == pytest.approx(precision_at_k(row, k))
        assert mean_average_precision(rel, k, n_rel, valid) == pytest.approx(ap.mean())
        assert mean_precision(rel, k, valid) == pytest.approx(p.mean())


def test_batch_by_hand() -> None:
    rel = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=bool)
    valid = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=bool)
    ap = average_precision_at_k_batch(rel, 4, [2, 3], valid)
    assert ap == pytest.approx([(1 + 2 / 3) / 2, (1 / 2) / 3])
    p = precision_at_k_batch(rel, 4, valid)
    assert p == pytest.approx([0.5, 0.5])
    assert mean_precision(rel, 4, valid) == pytest.approx(0.5)
    # a fully padded row: nothing returned -> 0
    assert precision_at_k_batch(rel, 4, np.zeros_like(valid)).tolist() == [0.0, 0.0]
    assert mean_average_precision(np.zeros((0, 3), bool), 3, np.zeros(0)) == 0.0


def test_relevance_from_padded_indices() -> None:
    items = np.array([0, 0, 1, 2])
    idx = np.array([[0, 2, -1], [3, 2, 1]])
    rel, valid = relevance_from_indices(idx, items, np.array([0, 1]))
    assert valid.tolist() == [[True, True, False], [True, True, True]]
    assert rel.tolist() == [[True, False, False], [False, True, False]]
    with pytest.raises(InvalidInput):
        relevance_from_indices(idx, items, np.array([0]))
