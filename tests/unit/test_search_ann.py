"""ShardedIndex with HNSW shards (faiss): the same answers as the exact index on small data,
``auto`` choosing graphs by shard size, float16 storage, the exact fallback without faiss."""

from __future__ import annotations

import logging
import sys

import numpy as np
import numpy.typing as npt
import pytest

from shared.errors import InvalidInput
from shared.search import ann as ann_mod
from shared.search.ann import IndexOptions
from shared.search.index import ShardedIndex

pytest.importorskip("faiss")

D = 24


def clustered(n: int, seed: int = 0) -> tuple[npt.NDArray[np.float32], list[str], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, D)) * 3
    assign = rng.integers(0, 20, n)
    vectors = (centres[assign] + rng.normal(size=(n, D))).astype(np.float32)
    cats = [("dress", "shirt", "toptee")[a % 3] if a < 18 else "coat" for a in assign]
    queries = (centres[rng.integers(0, 20, 30)] + rng.normal(size=(30, D))).astype(np.float32)
    return vectors, cats, queries


def recall(got: npt.NDArray[np.int64], ref: npt.NDArray[np.int64]) -> float:
    hits = [len(set(g[g >= 0].tolist()) & set(r[r >= 0].tolist())) / max(1, (r >= 0).sum())
            for g, r in zip(got, ref, strict=True)]
    return float(np.mean(hits))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("storage", ["fp32", "fp16"])
def test_hnsw_matches_exact(metric: str, storage: str) -> None:
    vectors, cats, queries = clustered(3000)
    exact = ShardedIndex(vectors, cats, metric, ann="exact")  # type: ignore[arg-type]
    graph = ShardedIndex(vectors, cats, metric, options=IndexOptions(ann="hnsw", storage=storage))  # type: ignore[arg-type]
    assert exact.ann_shards == [] and sorted(graph.ann_shards) == ["coat", "dress", "shirt", "toptee"]
    for routes in (None, [("dress",)] * 30, [("shirt", "toptee")] * 30):
        ref = exact.search(queries, 10, routes)
        got = graph.search(queries, 10, routes)
        assert recall(got.indices, ref.indices) >= 0.99
        same = got.indices == ref.indices
        tol = 1e-4 if storage == "fp32" else 2e-2
        np.testing.assert_allclose(got.scores[same], ref.scores[same], rtol=tol, atol=tol)
        for row, route in zip(got.indices, routes or [None] * 30, strict=True):
            if route is not None:
                assert {cats[j] for j in row.tolist()} <= set(route)
        step = np.diff(got.scores, axis=1)
        assert np.all(step <= 1e-6) if metric == "cosine" else np.all(step >= -1e-6)
        # exact=True reads the graph's stored vectors and gives the exact answer
        forced = graph.search(queries, 10, routes, exact=True)
        if storage == "fp32":
            assert np.array_equal(forced.indices, ref.indices)
        else:
            assert recall(forced.indices, ref.indices) >= 0.99


def test_auto_builds_graphs_only_for_large_shards() -> None:
    vectors, cats, queries = clustered(3000)
    index = ShardedIndex(vectors, cats, ann="auto", ann_threshold=600)
    sizes = {c: index.shard_size(c) for c in index.shard_names}
    assert index.ann_shards == [c for c in index.shard_names if sizes[c] >= 600]
    assert "coat" not in index.ann_shards and index.ann_shards  # a small shard stays exact
    exact = ShardedIndex(vectors, cats, ann="exact")
    ref = exact.search(queries, 10)
    assert recall(index.search(queries, 10).indices, ref.indices) >= 0.99
    # default options: a small catalogue stays exact, with one copy of the vectors
    small = ShardedIndex(vectors, cats)
    assert small.ann_shards == []
    assert small.nbytes() < vectors.nbytes * 1.2


def test_large_k_and_small_shards_are_exact() -> None:
    vectors, cats, queries = clustered(2000)
    exact = ShardedIndex(vectors, cats, ann="exact")
    graph = ShardedIndex(vectors, cats, options=IndexOptions(ann="hnsw", max_ann_k=50))
    ref = exact.search(queries, 300)
    got = graph.search(queries, 300)  # above max_ann_k: the exact scan of the stored vectors
    assert np.array_equal(got.indices, ref.indices)
    # k above a shard's size pads with -1 / nan, as the exact index does
    n_coat = graph.shard_size("coat")
    res = graph.search(queries[:2], n_coat + 5, [("coat",)] * 2)
    assert np.all(res.indices[:, :n_coat] >= 0) and np.all(res.indices[:, n_coat:] == -1)
    assert np.all(np.isnan(res.scores[:, n_coat:]))


def test_memory_is_one_copy_plus_graph() -> None:
    vectors, cats, _ = clustered(3000)
    graph = ShardedIndex(vectors, cats, ann="hnsw")
    half = ShardedIndex(vectors, cats, options=IndexOptions(ann="hnsw", storage="fp16"))
    exact = ShardedIndex(vectors, cats, ann="exact")
    assert vectors.nbytes <= exact.nbytes() < vectors.nbytes * 1.2
    level0 = len(vectors) * 2 * graph.options.hnsw_m * 4  # neighbour ids at level 0
    assert vectors.nbytes + level0 <= graph.nbytes() < (vectors.nbytes + level0) * 1.5
    assert abs(graph.nbytes() - half.nbytes() - vectors.nbytes / 2) < vectors.nbytes * 0.05


def test_graphs_are_built_one_shard_at_a_time() -> None:
    """Building graphs copies one shard at a time (numpy's allocations, which tracemalloc
    sees; faiss's own store is outside them), not the whole catalogue at once."""
    import tracemalloc

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4000, 256)).astype(np.float32)  # wide rows: the vectors dominate
    cats = [("dress", "shirt", "toptee", "coat")[i % 4] for i in range(4000)]
    largest = 1000 * 256 * 4
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        index = ShardedIndex(vectors, cats, ann="hnsw")
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(index.ann_shards) == 4
    assert peak < largest + vectors.nbytes * 0.25 < vectors.nbytes


@pytest.mark.parametrize("ann", ["exact", "hnsw"])
def test_float16_input_gives_the_float32_answers(ann: str) -> None:
    vectors, cats, queries = clustered(3000)
    half = vectors.astype(np.float16)
    widened = half.astype(np.float32)
    a = ShardedIndex(half, cats, ann=ann).search(queries, 10, [("dress",)] * 30)
    b = ShardedIndex(widened, cats, ann=ann).search(queries, 10, [("dress",)] * 30)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_without_faiss_the_index_is_exact(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    monkeypatch.setattr(ann_mod, "_faiss", None)
    monkeypatch.setattr(ann_mod, "_faiss_checked", False)
    vectors, cats, queries = clustered(500)
    with caplog.at_level(logging.WARNING, logger="shared.search.ann"):
        index = ShardedIndex(vectors, cats, ann="hnsw")
    assert index.ann_shards == []
    assert any("faiss is not installed" in r.getMessage() for r in caplog.records)
    ref = ShardedIndex(vectors, cats, ann="exact").search(queries, 5)
    assert np.array_equal(index.search(queries, 5).indices, ref.indices)


def test_bad_options_raise() -> None:
    with pytest.raises(InvalidInput):
        IndexOptions(ann="ivf")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        IndexOptions(storage="int8")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        IndexOptions(ann_threshold=0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pca_graph_with_exact_rerank(metric: str) -> None:
    """A graph over PCA projections, candidates re-scored with the full vectors: the scores
    are the exact ones, the answers those of the exact index."""
    rng = np.random.default_rng(5)
    basis = rng.normal(size=(8, 64))
    vectors = (rng.normal(size=(3000, 8)) @ basis + 0.05 * rng.normal(size=(3000, 64))).astype(np.float32)
    cats = [("dress", "shirt", "toptee")[i % 3] for i in range(3000)]
    queries = (rng.normal(size=(30, 8)) @ basis).astype(np.float32)
    exact = ShardedIndex(vectors, cats, metric, ann="exact")  # type: ignore[arg-type]
    pca = ShardedIndex(vectors, cats, metric, options=IndexOptions(ann="hnsw", pca_dim=16, rerank=40))  # type: ignore[arg-type]
    for routes in (None, [("shirt",)] * 30):
        ref = exact.search(queries, 10, routes)
        got = pca.search(queries, 10, routes)
        assert recall(got.indices, ref.indices) >= 0.99
        same = got.indices == ref.indices
        np.testing.assert_allclose(got.scores[same], ref.scores[same], rtol=1e-4, atol=1e-4)
        assert np.array_equal(pca.search(queries, 10, routes, exact=True).indices, ref.indices)
    # the full vectors once, plus a 16-d graph
    assert vectors.nbytes < pca.nbytes() < vectors.nbytes * 2.5


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pca_graph_under_fp16_storage_keeps_half_precision_vectors(metric: str) -> None:
    """fp16 storage with PCA: the re-ranking vectors are kept in float16 (half the memory of
    float32) and the answers still match the exact float32 index's."""
    rng = np.random.default_rng(6)
    basis = rng.normal(size=(8, 64))
    vectors = (rng.normal(size=(3000, 8)) @ basis + 0.05 * rng.normal(size=(3000, 64))).astype(np.float32)
    cats = [("dress", "shirt", "toptee")[i % 3] for i in range(3000)]
    queries = (rng.normal(size=(30, 8)) @ basis).astype(np.float32)
    exact = ShardedIndex(vectors, cats, metric, ann="exact")  # type: ignore[arg-type]
    opts = IndexOptions(ann="hnsw", pca_dim=16, rerank=40, storage="fp16")
    half = ShardedIndex(vectors, cats, metric, options=opts)  # type: ignore[arg-type]
    shard = half._shards["shirt"]
    assert shard.ann is not None and shard.ann.stored().dtype == np.float16
    assert shard.vectors.dtype == np.float16
    for routes in (None, [("shirt",)] * 30):
        ref = exact.search(queries, 10, routes)
        got = half.search(queries, 10, routes)
        assert recall(got.indices, ref.indices) >= 0.99
        same = got.indices == ref.indices
        np.testing.assert_allclose(got.scores[same], ref.scores[same], rtol=1e-3, atol=2e-3)  # float16-rounded
        assert recall(half.search(queries, 10, routes, exact=True).indices, ref.indices) >= 0.99
    # the kept vectors take half the memory of the fp32 variant's (graphs: about the same)
    full = ShardedIndex(vectors, cats, metric, options=IndexOptions(ann="hnsw", pca_dim=16, rerank=40))  # type: ignore[arg-type]
    assert full.nbytes() - half.nbytes() >= 0.45 * vectors.nbytes


def test_large_shards_get_denser_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors, cats, queries = clustered(3000)
    sizes = {c: cats.count(c) for c in set(cats)}
    cut = sorted(sizes.values())[1]  # at least one shard on each side of it
    monkeypatch.setattr(ann_mod, "LARGE_SHARD", cut)
    opts = IndexOptions(ann="hnsw", hnsw_m=8, ef_construction=40, large_hnsw_m=12, large_ef_construction=60,
                        ef_search=40)
    index = ShardedIndex(vectors, cats, options=opts)
    graphs = {c: index._shards[c].ann for c in sizes}
    built = {c: (g.index.hnsw.efConstruction, g.ef_search) for c, g in graphs.items()}  # type: ignore[union-attr]
    assert built == {c: ((60, 40) if n > cut else (40, 40)) for c, n in sizes.items()}
    # the degree faiss was given: level-0 lists of 2 * M neighbours
    degree = {c: g.index.hnsw.nb_neighbors(0) for c, g in graphs.items()}  # type: ignore[union-attr]
    assert degree == {c: (24 if n > cut else 16) for c, n in sizes.items()}
    exact = ShardedIndex(vectors, cats, ann="exact").search(queries, 10)
    assert recall(index.search(queries, 10).indices, exact.indices) >= 0.95
    with pytest.raises(InvalidInput):
        IndexOptions(large_hnsw_m=1)


def test_a_single_query_searches_its_graph_shards_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.search import index as index_mod

    vectors, cats, queries = clustered(3000, seed=5)
    graph = ShardedIndex(vectors, cats, options=IndexOptions(ann="hnsw"))
    monkeypatch.setattr(index_mod, "SHARD_THREADS", 1)
    serial = [graph.search(q, 10) for q in queries[:10]]
    monkeypatch.setattr(index_mod, "SHARD_THREADS", 2)
    threads: set[str] = set()
    real = graph._shard_topk

    def spy(*args: object, **kwargs: object) -> object:
        import threading

        threads.add(threading.current_thread().name)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(graph, "_shard_topk", spy)
    for q, ref in zip(queries[:10], serial, strict=True):
        got = graph.search(q, 10)
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_allclose(got.scores, ref.scores)
    assert any(name.startswith("fir-shard") for name in threads)  # the pool searched some shards
    # a batch of queries, or an exact search, stays in the calling thread
    threads.clear()
    graph.search(queries[:4], 10)
    graph.search(queries[:1], 10, exact=True)
    assert not any(name.startswith("fir-shard") for name in threads)



def _low_rank(n: int, seed: int) -> tuple[npt.NDArray[np.float32], list[str], npt.NDArray[np.float32]]:
    """64-d vectors that vary along 8 shared directions (plus a little noise): a 16-d
    projection keeps their neighbours."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(8, 64))
    vectors = (rng.normal(size=(n, 8)) @ basis + 0.05 * rng.normal(size=(n, 64))).astype(np.float32)
    cats = [("dress", "shirt", "toptee")[i % 3] for i in range(n)]
    return vectors, cats, (rng.normal(size=(30, 8)) @ basis).astype(np.float32)


def _full_rank(n: int, seed: int) -> tuple[npt.NDArray[np.float32], list[str], npt.NDArray[np.float32]]:
    """Isotropic 64-d vectors: a 16-d projection keeps a quarter of what tells them apart."""
    rng = np.random.default_rng(seed)
    cats = [("dress", "shirt", "toptee")[i % 3] for i in range(n)]
    return rng.normal(size=(n, 64)).astype(np.float32), cats, rng.normal(size=(30, 64)).astype(np.float32)


AUTO = IndexOptions(ann="hnsw", pca_dim=16, rerank=40, pca_min_recall=0.95)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_auto_pca_keeps_the_pca_graph_where_its_check_holds(metric: str) -> None:
    vectors, cats, queries = _low_rank(3000, 7)
    index = ShardedIndex(vectors, cats, metric, options=AUTO)  # type: ignore[arg-type]
    for cat in ("dress", "shirt", "toptee"):
        graph = index._shards[cat].ann
        assert graph is not None and graph.pca is not None
        assert graph.checks["pca16"] >= 0.95
        assert graph.ef_search == 2 * AUTO.ef_search  # a PCA graph keeps twice the candidates
    exact = ShardedIndex(vectors, cats, metric, ann="exact")  # type: ignore[arg-type]
    assert recall(index.search(queries, 10).indices, exact.search(queries, 10).indices) >= 0.99


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_auto_pca_falls_back_to_the_plain_graph_below_its_bar(metric: str, caplog: pytest.LogCaptureFixture) -> None:
    vectors, cats, queries = _full_rank(3000, 8)
    with caplog.at_level(logging.INFO, logger="shared.search.index"):
        index = ShardedIndex(vectors, cats, metric, options=AUTO)  # type: ignore[arg-type]
    for cat in ("dress", "shirt", "toptee"):
        graph = index._shards[cat].ann
        assert graph is not None and graph.pca is None and graph.ef_search == AUTO.ef_search
        assert graph.checks["pca16"] < 0.95  # the PCA graph's, measured
        assert graph.size == 1000 and graph.index.ntotal == 1000  # every row in the plain graph
    assert "(1000 vectors): plain graph, efSearch 128 (held-out recall@10: pca16 0." in caplog.text
    exact = ShardedIndex(vectors, cats, metric, ann="exact")  # type: ignore[arg-type]
    assert recall(index.search(queries, 10).indices, exact.search(queries, 10).indices) >= 0.99
    # the same data forced through the PCA graph (no check) loses neighbours: the bar mattered
    forced = ShardedIndex(vectors, cats, metric, options=IndexOptions(ann="hnsw", pca_dim=16, rerank=40))  # type: ignore[arg-type]
    assert recall(forced.search(queries, 10).indices, exact.search(queries, 10).indices) < 0.9


def test_auto_pca_leaves_narrow_vectors_their_plain_graph(caplog: pytest.LogCaptureFixture) -> None:
    """A projection to more than a quarter of the dimensions saves too little to try."""
    vectors, cats, _ = _low_rank(600, 9)
    with caplog.at_level(logging.INFO, logger="shared.search.ann"):
        index = ShardedIndex(vectors, cats, options=IndexOptions(ann="hnsw", pca_dim=17, rerank=40, pca_min_recall=0.5))
    assert "64-d vectors: no PCA 17 graph tried" in caplog.text
    graph = index._shards["dress"].ann
    assert graph is not None and graph.pca is None and graph.checks == {}


def test_auto_pca_leaves_small_shards_their_plain_graph(caplog: pytest.LogCaptureFixture) -> None:
    """Under 100 vectors there are too few to hold 10 out of the graph for a check."""
    vectors, cats, _ = _low_rank(270, 9)
    with caplog.at_level(logging.INFO, logger="shared.search.ann"):
        index = ShardedIndex(vectors, cats, options=AUTO)
    assert "90 vectors: too few to check a PCA graph on; plain graph" in caplog.text
    graph = index._shards["dress"].ann
    assert graph is not None and graph.pca is None and graph.checks == {} and graph.index.ntotal == 90


@pytest.mark.parametrize("pca_dim", [None, 16])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_held_out_recall_counts_the_exact_neighbours_found(metric: str, pca_dim: int | None) -> None:
    """The check against a plain recount: each held-out row's graph answer against its exact
    top-10 among the rows the graph holds; then finish() adds the held-out rows, in order."""
    vectors, _, _ = _full_rank(400, 10)
    block = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if metric == "cosine" else vectors
    block = np.ascontiguousarray(block, dtype=np.float32)
    faiss = ann_mod.load_faiss()
    opts = IndexOptions(ann="hnsw", pca_dim=pca_dim, rerank=12, ef_search=12)
    graph = ann_mod.HnswShard(block, metric, opts, faiss, hold_out=50)
    assert graph.index.ntotal == 350
    got = graph.held_out_recall(block)
    hits = 0
    for r in range(350, 400):
        if metric == "cosine":
            cost = -(block[:350] @ block[r])
        else:
            cost = ((block[:350] - block[r]) ** 2).sum(axis=1)
        want = set(np.argsort(cost)[:10].tolist())
        found, _ = graph.search(block[r : r + 1], 10)
        assert found.max() < 350  # only rows the graph holds
        hits += len(want & set(found[0].tolist()))
    assert got == pytest.approx(hits / 500)
    assert 0.0 < got < 1.0  # neither trivially perfect nor empty on this data
    graph.finish()
    assert graph.index.ntotal == 400 and graph.stored().shape == (400, 64)
    found, _ = graph.search(block[350:400], 1, ef_search=64)
    assert (found[:, 0] == np.arange(350, 400)).mean() >= 0.9  # each row finds itself, at its own id
    with pytest.raises(ValueError, match="held-out rows"):
        graph.held_out_recall(block)


def test_fit_pca_projects_onto_the_principal_subspace() -> None:
    """The top components, centred: distances between projections are faiss's own PCA's, and
    the mean projects to zero."""
    rng = np.random.default_rng(11)
    scales = np.linspace(3.0, 1.0, 8)  # distinct variances: a well-defined top-8 subspace
    x = (rng.normal(size=(2000, 8)) * scales @ np.linalg.qr(rng.normal(size=(64, 8)))[0].T
         + 0.01 * rng.normal(size=(2000, 64)) + 5.0).astype(np.float32)
    faiss = ann_mod.load_faiss()
    ours = ann_mod.fit_pca(x, 8, faiss)
    ref = faiss.PCAMatrix(64, 8)
    ref.train(x)
    a, b = ours.apply(x[:300]), ref.apply(x[:300])
    gram = lambda y: ((y[:, None, :] - y[None, :, :]) ** 2).sum(-1)  # noqa: E731
    np.testing.assert_allclose(gram(a), gram(b), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ours.apply(x.mean(axis=0, keepdims=True)), 0.0, atol=1e-3)
    assert (ours.d_in, ours.d_out) == (64, 8)


def test_pca_auto_setting() -> None:
    from shared.config import Settings

    auto = IndexOptions.from_settings(Settings(search_pca_dim="auto"))
    assert (auto.pca_dim, auto.pca_min_recall) == (ann_mod.AUTO_PCA_DIM, 0.99)
    fixed = IndexOptions.from_settings(Settings(search_pca_dim=128))
    assert (fixed.pca_dim, fixed.pca_min_recall) == (128, None)
    off = IndexOptions.from_settings(Settings())
    assert (off.pca_dim, off.pca_min_recall) == (None, None)
    with pytest.raises(InvalidInput, match="pca_min_recall"):
        IndexOptions(pca_min_recall=1.5)
