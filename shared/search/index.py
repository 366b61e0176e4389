"""Exact top-k search over per-category shards.

The catalogue's vectors are held once per category as contiguous float32 matrices, so a
query routed to a category scans only that shard. Cosine scores are similarities (higher is
better, vectors L2-normalised at build time); euclidean scores are distances (lower is
better). Queries that share a route are answered together with one matrix product per
shard; there is no Python loop over items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from shared.errors import InvalidInput, UnknownCategory

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[Metric, ...] = ("cosine", "euclidean")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


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
    vectors: FloatArray  # [n_shard, d], normalised for cosine
    sq_norms: FloatArray  # [n_shard] squared norms (euclidean)


class ShardedIndex:
    """An exact index over ``vectors`` split into one shard per category."""

    def __init__(self, vectors: FloatArray, categories: Sequence[str], metric: Metric = "cosine") -> None:
        if metric not in METRICS:
            raise InvalidInput(f"unknown metric {metric!r} (expected one of {', '.join(METRICS)})")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise InvalidInput(f"vectors must be a 2-d array, got shape {vectors.shape}")
        if len(categories) != vectors.shape[0]:
            raise InvalidInput("one category per vector is required")
        self.metric: Metric = metric
        self.dim = int(vectors.shape[1])
        self.size = int(vectors.shape[0])
        self.categories = np.asarray([str(c) for c in categories], dtype=object)
        base = l2_normalise(vectors) if metric == "cosine" else np.ascontiguousarray(vectors)
        self._all = _Shard(
            rows=np.arange(self.size, dtype=np.int64),
            vectors=base,
            sq_norms=np.einsum("ij,ij->i", base, base).astype(np.float32),
        )
        self._shards: dict[str, _Shard] = {}
        for cat in sorted({str(c) for c in self.categories}):
            rows = np.flatnonzero(self.categories == cat).astype(np.int64)
            sub = np.ascontiguousarray(base[rows])
            self._shards[cat] = _Shard(rows=rows, vectors=sub, sq_norms=self._all.sq_norms[rows])

    @property
    def shard_names(self) -> list[str]:
        return list(self._shards)

    def shard_size(self, category: str) -> int:
        return len(self._shards[category].rows) if category in self._shards else 0

    def _prepare(self, queries: FloatArray) -> FloatArray:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidInput(f"queries must have shape [m, {self.dim}], got {q.shape}")
        return l2_normalise(q) if self.metric == "cosine" else q

    def _shard_topk(self, q: FloatArray, shard: _Shard, k: int) -> tuple[IntArray, FloatArray]:
        """Top-k of one shard for all queries, sorted; ``-score`` convention for ranking."""
        n = len(shard.rows)
        kk = min(k, n)
        if kk == 0:
            m = q.shape[0]
            return np.empty((m, 0), np.int64), np.empty((m, 0), np.float32)
        dots = q @ shard.vectors.T  # [m, n]
        if self.metric == "cosine":
            cost = -dots  # smaller is better
        else:
            qn = np.einsum("ij,ij->i", q, q)[:, None]
            cost = np.maximum(qn - 2.0 * dots + shard.sq_norms[None, :], 0.0)
        if kk < n:
            part = np.argpartition(cost, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(n), (q.shape[0], n))
        part_cost = np.take_along_axis(cost, part, axis=1)
        order = np.argsort(part_cost, axis=1, kind="stable")
        local = np.take_along_axis(part, order, axis=1)
        return shard.rows[local], np.take_along_axis(part_cost, order, axis=1).astype(np.float32)

    def search(
        self,
        queries: FloatArray,
        k: int,
        routes: Sequence[Sequence[str] | None] | None = None,
    ) -> SearchResult:
        """Top-k for each query. ``routes[i]`` lists the categories query ``i`` is matched
        against (``None``: the whole catalogue). ``routes=None`` searches everything."""
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
                shards = [self._all]
            else:
                unknown = [c for c in key if c not in self._shards]
                if unknown:
                    raise UnknownCategory(
                        f"unknown category {unknown[0]!r} (catalogue has: {', '.join(self._shards)})"
                    )
                shards = [self._shards[c] for c in key]
            parts = [self._shard_topk(q[qi], s, k) for s in shards]
            rows = np.concatenate([p[0] for p in parts], axis=1)
            cost = np.concatenate([p[1] for p in parts], axis=1)
            if len(parts) > 1:
                order = np.argsort(cost, axis=1, kind="stable")[:, :k]
                rows = np.take_along_axis(rows, order, axis=1)
                cost = np.take_along_axis(cost, order, axis=1)
            width = rows.shape[1]
            indices[qi, :width] = rows
            final = -cost if self.metric == "cosine" else np.sqrt(cost)
            scores[qi, :width] = final
        return SearchResult(indices=indices, scores=scores)
