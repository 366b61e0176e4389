"""ShardedIndex against a brute-force numpy reference, for both metrics and every routing
mode planned by plan_routes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from shared.errors import InvalidInput, UnknownCategory
from shared.search.index import ShardedIndex
from shared.search.routing import ROUTING_MODES, plan_routes

N, D, M = 300, 16, 24
CATS = ["coat", "dress", "shirt", "toptee"]
THRESHOLD = 0.6


@pytest.fixture(scope="module")
def data() -> tuple[npt.NDArray[np.float32], list[str], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(42)
    vectors = rng.normal(size=(N, D)).astype(np.float32) + 0.1
    # unbalanced shards; "coat" is deliberately small (7 items) to exercise padding
    weights = np.array([0.0, 0.45, 0.35, 0.20])
    cats = [CATS[i] for i in rng.choice(4, size=N - 7, p=weights)] + ["coat"] * 7
    order = rng.permutation(N)
    cats = [cats[i] for i in order]
    queries = rng.normal(size=(M, D)).astype(np.float32) + 0.1
    return vectors, cats, queries


def fake_probabilities(m: int, labels: Sequence[str], seed: int = 1) -> npt.NDArray[np.float64]:
    """Confident rows (top probability 0.9) and uncertain rows (top probability < 0.6)."""
    rng = np.random.default_rng(seed)
    probs = np.zeros((m, len(labels)))
    for i in range(m):
        perm = rng.permutation(len(labels))
        if i % 2 == 0:
            row = [0.9, 0.05, 0.03, 0.02]
        else:
            row = [0.45, 0.35, 0.15, 0.05]
        probs[i, perm] = row
    return probs


def reference(
    vectors: npt.NDArray[np.float32],
    cats: Sequence[str],
    query: npt.NDArray[np.float32],
    k: int,
    route: Sequence[str] | None,
    metric: str,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Brute force in float64: candidate rows of the routed categories, best first."""
    cand = (
        np.arange(len(vectors))
        if route is None
        else np.flatnonzero(np.isin(np.asarray(cats), list(route)))
    )
    v = vectors[cand].astype(np.float64)
    q = query.astype(np.float64)
    if metric == "cosine":
        score = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
        order = np.argsort(-score)
    else:
        score = np.linalg.norm(v - q, axis=1)
        order = np.argsort(score)
    top = order[:k]
    return cand[top], score[top]


def routes_for(
    mode: str, index: ShardedIndex, m: int, seed: int = 3
) -> list[tuple[str, ...] | None]:
    rng = np.random.default_rng(seed)
    labels = index.shard_names
    given = [labels[i] for i in rng.integers(0, len(labels), size=m)]
    probs = fake_probabilities(m, labels)
    return plan_routes(
        mode, m, labels=labels, probabilities=probs, given=given, threshold=THRESHOLD, known=labels
    )


def check_against_reference(
    index: ShardedIndex,
    vectors: npt.NDArray[np.float32],
    cats: Sequence[str],
    queries: npt.NDArray[np.float32],
    k: int,
    routes: Sequence[Sequence[str] | None],
    metric: str,
) -> None:
    res = index.search(queries, k, routes)
    assert res.indices.shape == (len(queries), k)
    assert res.scores.shape == (len(queries), k)
    for i, route in enumerate(routes):
        ref_idx, ref_score = reference(vectors, cats, queries[i], k, route, metric)
        n = len(ref_idx)
        got_idx, got_score = res.indices[i, :n], res.scores[i, :n].astype(np.float64)
        assert set(got_idx.tolist()) == set(ref_idx.tolist()), f"query {i}, route {route}"
        np.testing.assert_allclose(got_score, ref_score, rtol=1e-4, atol=1e-4)
        # each returned score is the score of that very item
        by_item = dict(zip(ref_idx.tolist(), ref_score.tolist(), strict=True))
        np.testing.assert_allclose(
            got_score, [by_item[j] for j in got_idx.tolist()], rtol=1e-4, atol=1e-4
        )
        # best first: similarities descending, distances ascending
        step = np.diff(got_score)
        assert np.all(step <= 1e-6) if metric == "cosine" else np.all(step >= -1e-6)
        # the results stay inside the route
        if route is not None:
            assert {cats[j] for j in got_idx.tolist()} <= set(route)
        # padding where the routed shards hold fewer than k items
        assert np.all(res.indices[i, n:] == -1)
        assert np.all(np.isnan(res.scores[i, n:]))
        assert res.row(i) == list(zip(got_idx.tolist(), res.scores[i, :n].tolist(), strict=True))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("mode", ROUTING_MODES)
@pytest.mark.parametrize("k", [1, 5, 40])
def test_matches_brute_force(data: tuple, metric: str, mode: str, k: int) -> None:
    vectors, cats, queries = data
    index = ShardedIndex(vectors, cats, metric=metric)  # type: ignore[arg-type]
    routes = routes_for(mode, index, len(queries))
    check_against_reference(index, vectors, cats, queries, k, routes, metric)


def test_fallback_routes_use_two_shards(data: tuple) -> None:
    vectors, cats, queries = data
    index = ShardedIndex(vectors, cats)
    probs = fake_probabilities(len(queries), index.shard_names)
    svm = plan_routes(
        "svm", len(queries), labels=index.shard_names, probabilities=probs, threshold=THRESHOLD
    )
    fb = plan_routes(
        "svm-fallback",
        len(queries),
        labels=index.shard_names,
        probabilities=probs,
        threshold=THRESHOLD,
    )
    for i, (one, two) in enumerate(zip(svm, fb, strict=True)):
        assert one is not None and two is not None
        assert len(one) == 1
        assert two[0] == one[0]
        assert len(two) == (1 if probs[i].max() >= THRESHOLD else 2)
    res = index.search(queries, 60, fb)
    mixed = [
        i
        for i, r in enumerate(fb)
        if r is not None and len(r) == 2 and len({cats[j] for j in res.indices[i] if j >= 0}) == 2
    ]
    assert mixed, "a fallback route should return items of both of its categories"


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_padding_when_shard_is_smaller_than_k(data: tuple, metric: str) -> None:
    vectors, cats, queries = data
    index = ShardedIndex(vectors, cats, metric=metric)  # type: ignore[arg-type]
    assert index.shard_size("coat") == 7
    k = 20
    res = index.search(queries[:3], k, [("coat",)] * 3)
    assert np.all(res.indices[:, :7] >= 0)
    assert np.all(res.indices[:, 7:] == -1)
    assert np.all(np.isnan(res.scores[:, 7:]))
    check_against_reference(index, vectors, cats, queries[:3], k, [("coat",)] * 3, metric)
    # k larger than the whole catalogue, unrouted
    res = index.search(queries[:2], N + 5, None)
    assert np.all(res.indices[:, :N] >= 0)
    assert np.all(res.indices[:, N:] == -1)
    assert sorted(res.indices[0, :N].tolist()) == list(range(N))


def test_unknown_category_raises(data: tuple) -> None:
    vectors, cats, queries = data
    index = ShardedIndex(vectors, cats)
    with pytest.raises(UnknownCategory):
        index.search(queries[:1], 5, [("jacket",)])
    with pytest.raises(UnknownCategory):
        plan_routes("label", 1, given=["jacket"], known=index.shard_names)


@pytest.mark.parametrize("k", [0, -3])
def test_non_positive_k_raises(data: tuple, k: int) -> None:
    vectors, cats, queries = data
    index = ShardedIndex(vectors, cats)
    with pytest.raises(InvalidInput):
        index.search(queries[:1], k)


def test_bad_inputs_raise(data: tuple) -> None:
    vectors, cats, queries = data
    with pytest.raises(InvalidInput):
        ShardedIndex(vectors, cats, metric="manhattan")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        ShardedIndex(vectors, cats[:-1])
    index = ShardedIndex(vectors, cats)
    with pytest.raises(InvalidInput):
        index.search(queries[:, :5], 3)
    with pytest.raises(InvalidInput):
        index.search(queries[:2], 3, [None])
    with pytest.raises(InvalidInput):
        plan_routes("svm", 2)  # no router
    with pytest.raises(InvalidInput):
        plan_routes("label", 2, given=["dress"])


def test_single_vector_query_and_cosine_scale_invariance(data: tuple) -> None:
    vectors, cats, queries = data
    index = ShardedIndex(vectors, cats)
    one = index.search(queries[0], 5)
    scaled = index.search(queries[:1] * 7.5, 5)
    assert one.indices.tolist() == scaled.indices.tolist()
    np.testing.assert_allclose(one.scores, scaled.scores, rtol=1e-5, atol=1e-6)
