"""Top-k search over per-category shards: exact scans, and HNSW graphs for large shards.

The catalogue's vectors are held once, sorted by category, so each category's shard is a
contiguous slice and a query routed to a category scans only that shard. Cosine scores are
similarities (higher is better, vectors L2-normalised at build time); euclidean scores are
distances (lower is better). Queries that share a route are answered together with one
matrix product per shard; there is no Python loop over items.

Large shards (``IndexOptions.ann``: ``auto`` from ``ann_threshold`` vectors, or ``hnsw``)
get an HNSW graph (:mod:`shared.search.ann`, faiss): a query then visits a few thousand
vectors instead of all of them. The graph's index holds the shard's only copy of the
vectors; the exact scan (k above ``max_ann_k``, or ``exact=True``) reads the same memory.
Without faiss installed every shard stays exact (one logged warning). A search over the
whole catalogue (no route) merges the shards' top-k.

On a GPU (``IndexOptions.device``, the worker's ``search_device``) the sorted catalogue is held
once in device memory (:class:`DeviceVectors`) and every search, routed or not, is an exact
matrix product and ``torch.topk`` over the shard's slice there: no graphs to build, recall 1.

A single query that searches several graph shards (unrouted, or routed to several categories)
searches them side by side on a small thread pool: a graph search is serial C++ that releases
the GIL, so on two cores three shards take about two shards' time instead of three
(``SHARD_THREADS``).

A few queries at a time run their matrix products on one BLAS thread
(:func:`shared.threads.single_thread_blas`): a matrix-vector product is memory-bound, and a
second OpenBLAS thread on a busy 2-core machine made it many times slower, not faster.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from shared.errors import InvalidInput, UnknownCategory
from shared.search.ann import (
    AnnMode,
    HnswShard,
    IndexOptions,
    build_graph,
    describe_graph,
    load_faiss,
)
from shared.threads import single_thread_blas

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[Metric, ...] = ("cosine", "euclidean")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

log = logging.getLogger(__name__)

# Up to this many queries at a time, matrix products run on one BLAS thread (module docstring).
SINGLE_THREAD_QUERIES = 8
# Scans smaller than this many floats skip the thread limit (OpenBLAS runs them on one thread anyway).
_SMALL_SCAN = 1 << 18
# Exact scans of float16-stored shards convert this many rows at a time to float32.
_FP16_BLOCK = 16_384
# Threads that search one query's graph shards side by side (1: one after another), the
# calling thread included. One per shard balances better than one per core: three shards on
# two cores measured 1.5x faster than one after another with three threads, 1.2-1.3x with two
# (faiss HNSW, 25,000 x 2048 per shard). Only single queries: faiss already spreads a batch of
# queries over its own OpenMP threads.
SHARD_THREADS = 4
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _shard_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max(1, SHARD_THREADS - 1), thread_name_prefix="fir-shard")
    return _pool


def l2_normalise(x: FloatArray) -> FloatArray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


@dataclass
class SearchResult:
    """Top-k for a batch of queries: global row indices and scores, padded with -1 / nan
    where a routed shard holds fewer than k items."""

    indices: IntArray  # [m, k]
    scores: FloatArray  # [m, k]

    def row(self, i: int) -> list[tuple[int, float]]:
        keep = self.indices[i] >= 0
        return list(zip(self.indices[i][keep].tolist(), self.scores[i][keep].tolist(), strict=True))


@dataclass
class _Shard:
    rows: IntArray  # global row index of each vector in the shard
    vectors: npt.NDArray[Any]  # [n_shard, d] float32 (or float16 under an fp16 graph), normalised for cosine
    sq_norms: FloatArray  # [n_shard] squared norms (euclidean)
    ann: HnswShard | None = None
    span: tuple[int, int] = (0, 0)  # the shard's rows in a DeviceVectors store (device mode)


# A device top-k works on at most this many scores at a time ([queries, shard rows] float32).
_DEVICE_SCORES = 1 << 26


class DeviceVectors:
    """The catalogue's (sorted, normalised) vectors on a torch device; exact top-k there.

    ``storage`` fp16 halves the memory and the bytes each scan reads; on CUDA the products
    still accumulate and return float32 (``torch.mm(..., out_dtype=float32)``).
    """

    def __init__(self, base: FloatArray, metric: Metric, device: str, storage: str) -> None:
        import torch

        self._torch = torch
        self.metric = metric
        self.device = torch.device(device)
        self.dtype = torch.float16 if storage == "fp16" else torch.float32
        self.vectors = torch.empty((base.shape[0], base.shape[1]), dtype=self.dtype, device=self.device)
        self.sq_norms = torch.empty((base.shape[0],), dtype=torch.float32, device=self.device)
        for lo in range(0, base.shape[0], _FP16_BLOCK):  # uploaded in blocks: small temporaries
            block = torch.from_numpy(base[lo : lo + _FP16_BLOCK]).to(self.device).to(self.dtype)
            self.vectors[lo : lo + len(block)] = block
            wide = block.float()  # norms of the stored (possibly rounded) vectors
            self.sq_norms[lo : lo + len(block)] = (wide * wide).sum(dim=1)
        # fp16 products returned in float32 where this torch can (CUDA, torch >= 2.8): asked
        # once here, so a failure in a search is never taken for a missing feature
        self._out_dtype = False
        if self.device.type == "cuda" and self.dtype != torch.float32:
            probe = self.vectors[:1]
            try:
                torch.mm(probe, probe.T, out_dtype=torch.float32)
                self._out_dtype = True
            except (TypeError, RuntimeError):
                log.info("this torch has no float32 output for fp16 products: the index's scores are fp16")

    def nbytes(self) -> int:
        return int(self.vectors.numel() * self.vectors.element_size() + self.sq_norms.numel() * 4)

    def _dots(self, q: Any, v: Any) -> Any:
        torch = self._torch
        if self._out_dtype:
            return torch.mm(q, v.T, out_dtype=torch.float32)
        if self.device.type == "cpu" and self.dtype != torch.float32:
            return q.float() @ v.float().T  # no fast half-precision products on a CPU
        return (q @ v.T).float()

    def topk(self, q: FloatArray, span: tuple[int, int], k: int) -> tuple[IntArray, FloatArray]:
        """Top-k rows of ``span`` (offsets within the span) and their costs (``-score`` for
        cosine, squared distance for euclidean), sorted."""
        torch = self._torch
        lo, hi = span
        v = self.vectors[lo:hi]
        step = max(1, _DEVICE_SCORES // max(hi - lo, 1))
        idx_parts, cost_parts = [], []
        with torch.inference_mode():
            for a in range(0, q.shape[0], step):
                qt = torch.from_numpy(np.ascontiguousarray(q[a : a + step])).to(self.device)
                dots = self._dots(qt.to(self.dtype), v)
                if self.metric == "cosine":
                    cost = dots.neg_()
                else:
                    qn = (qt * qt).sum(dim=1, keepdim=True)
                    cost = (qn - 2.0 * dots + self.sq_norms[lo:hi][None, :]).clamp_min_(0.0)
                vals, idx = torch.topk(cost, k, dim=1, largest=False, sorted=True)
                idx_parts.append(idx.cpu())
                cost_parts.append(vals.cpu())
        return (torch.cat(idx_parts).numpy().astype(np.int64),
                torch.cat(cost_parts).numpy().astype(np.float32))


class ShardedIndex:
    """An index over ``vectors`` split into one shard per category.

    ``ann`` / ``ann_threshold`` override the fields of ``options`` (default
    :class:`IndexOptions`: ``auto``, graphs for shards of 20,000 vectors or more).
    """

    def __init__(
        self,
        vectors: FloatArray,
        categories: Sequence[str],
        metric: Metric = "cosine",
        ann: AnnMode | None = None,
        ann_threshold: int | None = None,
        options: IndexOptions | None = None,
    ) -> None:
        if metric not in METRICS:
            raise InvalidInput(f"unknown metric {metric!r} (expected one of {', '.join(METRICS)})")
        vectors = np.asarray(vectors)
        if vectors.dtype not in (np.float32, np.float16):  # float16 input is widened shard by shard
            vectors = vectors.astype(np.float32)
        if vectors.ndim != 2:
            raise InvalidInput(f"vectors must be a 2-d array, got shape {vectors.shape}")
        if len(categories) != vectors.shape[0]:
            raise InvalidInput("one category per vector is required")
        opts = options or IndexOptions()
        if ann is not None:
            opts = replace(opts, ann=ann)
        if ann_threshold is not None:
            opts = replace(opts, ann_threshold=ann_threshold)
        self.options = opts
        self.metric: Metric = metric
        self.dim = int(vectors.shape[1])
        self.size = int(vectors.shape[0])
        self.categories = np.asarray([str(c) for c in categories], dtype=object)
        self.build_seconds = 0.0
        t0 = time.perf_counter()
        # sorted by category: every shard is a contiguous block
        cat_str = self.categories.astype(str)
        order = np.argsort(cat_str, kind="stable").astype(np.int64)
        uniq, starts = np.unique(cat_str[order], return_index=True)
        names = [str(c) for c in uniq]
        bounds = [*starts.tolist(), self.size]
        self._device: DeviceVectors | None = None
        if opts.device is not None:
            self._device = _upload(vectors, order, metric, opts)
            if self._device is None:  # it did not fit: the host index below
                opts = self.options = replace(opts, device=None)
        faiss = None
        if opts.device is None and any(opts.wants_ann(int(bounds[i + 1] - bounds[i])) for i in range(len(names))):
            faiss = load_faiss()
        self._shards: dict[str, _Shard] = {}
        self._all: _Shard | None = None
        if self._device is not None:
            # one copy on the device; shards are row spans of it (no host copy is kept)
            empty_v, empty_n = np.empty((0, self.dim), np.float32), np.empty(0, np.float32)
            for i, cat in enumerate(names):
                lo, hi = int(bounds[i]), int(bounds[i + 1])
                self._shards[cat] = _Shard(rows=order[lo:hi], vectors=empty_v, sq_norms=empty_n, span=(lo, hi))
            self._all = _Shard(rows=order, vectors=empty_v, sq_norms=empty_n, span=(0, self.size))
        elif faiss is None:
            # all exact: one float32 copy, and each shard a slice of it (an unrouted query is
            # one matrix product over ``_all``)
            base = _normalised_copy(vectors, order, metric)
            sq_norms = np.einsum("ij,ij->i", base, base).astype(np.float32)
            for i, cat in enumerate(names):
                lo, hi = int(bounds[i]), int(bounds[i + 1])
                self._shards[cat] = _Shard(rows=order[lo:hi], vectors=base[lo:hi], sq_norms=sq_norms[lo:hi])
            self._all = _Shard(rows=order, vectors=base, sq_norms=sq_norms)
        else:
            # graphs: built one shard at a time from that shard's float32 copy, which the graph
            # replaces with its own store (fp32 or fp16). Peak memory is the caller's array,
            # one shard's copy and the stores built so far, not two copies of the catalogue.
            for i, cat in enumerate(names):
                lo, hi = int(bounds[i]), int(bounds[i + 1])
                block = _normalised_copy(vectors, order[lo:hi], metric)
                shard = _Shard(rows=order[lo:hi], vectors=block,
                               sq_norms=np.einsum("ij,ij->i", block, block).astype(np.float32))
                if opts.wants_ann(hi - lo):
                    shard.ann = build_graph(block, metric, opts, faiss)
                    if shard.ann.checks:
                        log.info("shard %s (%d vectors): %s, bar %.3f", cat, hi - lo,
                                 describe_graph(shard.ann), opts.pca_min_recall)
                    shard.vectors = shard.ann.stored()  # the graph's store (or, under PCA, ``block``)
                del block
                self._shards[cat] = shard
        self.build_seconds = time.perf_counter() - t0
        if self._device is not None:
            log.info("index of %d x %d (%s) on %s (%s), exact; built in %.1f s", self.size, self.dim, metric,
                     self._device.device, opts.storage, self.build_seconds)
        elif faiss is not None:
            log.info("index of %d x %d (%s): HNSW graphs for %s; built in %.1f s", self.size, self.dim, metric,
                     ", ".join(f"{c} ({self.shard_size(c)})" for c in self.ann_shards), self.build_seconds)

    @property
    def shard_names(self) -> list[str]:
        return list(self._shards)

    @property
    def ann_shards(self) -> list[str]:
        """The categories whose shard is searched through an HNSW graph."""
        return [c for c, sh in self._shards.items() if sh.ann is not None]

    def shard_size(self, category: str) -> int:
        return len(self._shards[category].rows) if category in self._shards else 0

    @property
    def device(self) -> str:
        """Where the vectors are searched: ``host``, or the torch device holding them."""
        return "host" if self._device is None else str(self._device.device)

    def nbytes(self) -> int:
        """Memory held by the index's vectors, norms, row maps and graphs (device memory
        included, in device mode)."""
        total = self._device.nbytes() if self._device is not None else 0
        shards = list(self._shards.values())
        if self._all is not None:  # exact: the shards are slices of ``_all``
            shards = [self._all]
        for sh in shards:
            total += sh.rows.nbytes + sh.sq_norms.nbytes
            total += sh.ann.nbytes() if sh.ann is not None else sh.vectors.nbytes
        return total

    def _prepare(self, queries: FloatArray) -> FloatArray:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidInput(f"queries must have shape [m, {self.dim}], got {q.shape}")
        return l2_normalise(q) if self.metric == "cosine" else q

    def _scan(self, q: FloatArray, shard: _Shard) -> FloatArray:
        """``q @ shard.vectors.T`` (one BLAS thread for a few queries; float16 in blocks)."""
        v = shard.vectors
        small = q.shape[0] <= SINGLE_THREAD_QUERIES and v.size >= _SMALL_SCAN  # tiny scans never thread
        ctx = single_thread_blas() if small else contextlib.nullcontext()
        with ctx:
            if v.dtype == np.float32:
                return np.asarray(q @ v.T, dtype=np.float32)
            out = np.empty((q.shape[0], v.shape[0]), np.float32)
            for lo in range(0, v.shape[0], _FP16_BLOCK):
                out[:, lo : lo + _FP16_BLOCK] = q @ v[lo : lo + _FP16_BLOCK].astype(np.float32).T
            return out

    def _shard_topk(self, q: FloatArray, shard: _Shard, k: int, exact: bool = False,
                    ef_search: int | None = None) -> tuple[IntArray, FloatArray]:
        """Top-k of one shard for all queries, sorted; ``-score`` convention for ranking."""
        n = len(shard.rows)
        kk = min(k, n)
        if kk == 0:
            m = q.shape[0]
            return np.empty((m, 0), np.int64), np.empty((m, 0), np.float32)
        if self._device is not None:
            local, cost = self._device.topk(q, shard.span, kk)
            return shard.rows[local], cost
        if shard.ann is not None and not exact and kk <= self.options.max_ann_k:
            local, cost = shard.ann.search(q, kk, ef_search)
            rows = np.where(local >= 0, shard.rows[np.maximum(local, 0)], -1)
            return rows, cost
        dots = self._scan(q, shard)  # [m, n]
        if self.metric == "cosine":
            cost = -dots  # smaller is better
        else:
            qn = np.einsum("ij,ij->i", q, q)[:, None]
            sq = shard.sq_norms if shard.vectors.dtype == np.float32 else _sq_norms(shard.vectors)
            cost = np.maximum(qn - 2.0 * dots + sq[None, :], 0.0)
        if kk < n:
            part = np.argpartition(cost, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(n), (q.shape[0], n))
        part_cost = np.take_along_axis(cost, part, axis=1)
        order = np.argsort(part_cost, axis=1, kind="stable")
        local = np.take_along_axis(part, order, axis=1)
        return shard.rows[local], np.take_along_axis(part_cost, order, axis=1).astype(np.float32)

    def _search_shards(self, q: FloatArray, shards: list[_Shard], k: int, exact: bool,
                       ef_search: int | None) -> list[tuple[IntArray, FloatArray]]:
        """Each shard's top-k: graph shards of a single query side by side (module docstring),
        anything else one after another."""
        side_by_side = (SHARD_THREADS > 1 and len(shards) > 1 and q.shape[0] == 1 and not exact
                        and k <= self.options.max_ann_k and all(s.ann is not None for s in shards))
        if not side_by_side:
            return [self._shard_topk(q, s, k, exact, ef_search) for s in shards]
        later = [_shard_pool().submit(self._shard_topk, q, s, k, exact, ef_search) for s in shards[1:]]
        return [self._shard_topk(q, shards[0], k, exact, ef_search)] + [f.result() for f in later]

    def search(
        self,
        queries: FloatArray,
        k: int,
        routes: Sequence[Sequence[str] | None] | None = None,
        exact: bool = False,
        ef_search: int | None = None,
    ) -> SearchResult:
        """Top-k for each query. ``routes[i]`` lists the categories query ``i`` is matched
        against (``None``: the whole catalogue). ``routes=None`` searches everything.
        ``exact=True`` scans every vector even where a shard has a graph (the ground truth
        for recall); ``ef_search`` overrides the graphs' ``efSearch`` for this call."""
        if k <= 0:
            raise InvalidInput(f"k must be a positive integer, got {k}")
        q = self._prepare(queries)
        m = q.shape[0]
        if routes is None:
            routes = [None] * m
        if len(routes) != m:
            raise InvalidInput("one route per query is required")
        indices = np.full((m, k), -1, dtype=np.int64)
        scores = np.full((m, k), np.nan, dtype=np.float32)
        groups: dict[tuple[str, ...] | None, list[int]] = {}
        for i, route in enumerate(routes):
            key = None if route is None else tuple(sorted({str(c) for c in route}))
            if key == ():
                raise InvalidInput(f"query {i} has an empty route (no category to search)")
            groups.setdefault(key, []).append(i)
        for key, members in groups.items():
            qi = np.asarray(members, dtype=np.int64)
            if key is None:
                shards = [self._all] if self._all is not None else list(self._shards.values())
            else:
                unknown = [c for c in key if c not in self._shards]
                if unknown:
                    raise UnknownCategory(
                        f"unknown category {unknown[0]!r} (catalogue has: {', '.join(self._shards)})"
                    )
                shards = [self._shards[c] for c in key]
            parts = self._search_shards(q[qi], shards, k, exact, ef_search)
            rows = np.concatenate([p[0] for p in parts], axis=1)
            cost = np.concatenate([p[1] for p in parts], axis=1)
            if len(parts) > 1:
                order = np.argsort(cost, axis=1, kind="stable")[:, :k]
                rows = np.take_along_axis(rows, order, axis=1)
                cost = np.take_along_axis(cost, order, axis=1)
            width = rows.shape[1]
            final = -cost if self.metric == "cosine" else np.sqrt(cost)
            final = np.where(rows >= 0, final, np.nan)  # a graph that found fewer than k
            indices[qi, :width] = rows
            scores[qi, :width] = final
        return SearchResult(indices=indices, scores=scores)


def _upload(vectors: npt.NDArray[Any], order: IntArray, metric: Metric, opts: IndexOptions) -> DeviceVectors | None:
    """The sorted, normalised catalogue on ``opts.device``, or ``None`` (logged) when the
    device has no room for it: the caller then builds the host index, so queries still run."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # the former before torch 2.5
    base = _normalised_copy(vectors, order, metric)
    try:
        return DeviceVectors(base, metric, str(opts.device), opts.storage)
    except (oom, MemoryError) as exc:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("the index (%d x %d, %s) does not fit on %s (%s): searching in host memory instead",
                    base.shape[0], base.shape[1], opts.storage, opts.device, str(exc).split("\n")[0][:200])
        return None


def _normalised_copy(vectors: npt.NDArray[Any], rows: IntArray, metric: str) -> FloatArray:
    """``vectors[rows]`` as a new contiguous float32 array, rows L2-normalised for cosine."""
    out = np.empty((len(rows), vectors.shape[1]), np.float32)
    if vectors.dtype == np.float32:
        np.take(vectors, rows, axis=0, out=out, mode="clip")  # unbuffered (rows are valid)
    else:
        for lo in range(0, len(rows), _FP16_BLOCK):  # widened in blocks: a small temporary
            out[lo : lo + _FP16_BLOCK] = vectors[rows[lo : lo + _FP16_BLOCK]]
    if metric == "cosine":  # row norms without an n x d temporary
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
        norms[norms == 0] = 1.0
        out /= norms
    return out


def _sq_norms(v: npt.NDArray[Any]) -> FloatArray:
    out = np.empty(v.shape[0], np.float32)
    for lo in range(0, v.shape[0], _FP16_BLOCK):
        block = v[lo : lo + _FP16_BLOCK].astype(np.float32)
        out[lo : lo + _FP16_BLOCK] = np.einsum("ij,ij->i", block, block)
    return out

