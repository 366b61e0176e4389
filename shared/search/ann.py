"""Approximate nearest-neighbour shards (FAISS HNSW) for large catalogues.

An exact scan reads every vector of the shard for every query: about 2.3 ms for 10,000 x 2048
float32 on this kind of CPU, 20 ms for 77,000 and 200 ms for a million, bounded by memory
bandwidth. An HNSW graph visits a few thousand vectors instead, whatever the catalogue size.
:class:`HnswShard` wraps one ``faiss.IndexHNSWFlat`` (or ``IndexHNSWSQ`` with float16 codes,
half the memory) over one category shard:

- cosine: inner product over L2-normalised vectors; euclidean: squared L2 (the caller takes
  the square root); scores are faiss's, computed from the stored vectors (exact for float32
  storage, float16-rounded for ``fp16``);
- the stored vectors are exposed without a copy (:meth:`HnswShard.stored`), so the exact
  path (large k, recall checks) needs no second copy of the shard;
- ``efSearch`` is passed per call (``SearchParametersHNSW``), never set on the shared index,
  so concurrent searches are safe; it is raised to ``k`` when k is larger.

faiss is an optional dependency (the ``ann`` extra): it is imported on first use, and when it
is missing the index logs one warning and stays exact.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from shared.errors import InvalidInput

log = logging.getLogger(__name__)

AnnMode = Literal["auto", "exact", "hnsw"]
ANN_MODES: tuple[str, ...] = get_args(AnnMode)
Storage = Literal["fp32", "fp16"]
STORAGES: tuple[str, ...] = get_args(Storage)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

_faiss: Any = None
_faiss_checked = False
_faiss_lock = threading.Lock()


@dataclass(frozen=True)
class IndexOptions:
    """How a :class:`~shared.search.index.ShardedIndex` searches its shards.

    ``ann``: ``exact`` scans every shard; ``hnsw`` builds an HNSW graph for every shard;
    ``auto`` (default) builds one only for shards of at least ``ann_threshold`` vectors, below
    which an exact scan is already fast (and needs no build).
    """

    ann: AnnMode = "auto"
    # Shards of at least this many vectors get an HNSW graph under ``auto``. 20,000 x 2048
    # float32 is about 5 ms per exact single query here; a graph answers in well under 1 ms.
    ann_threshold: int = 20_000
    hnsw_m: int = 32  # graph degree (memory: about 2 * m * 4 bytes per vector at level 0)
    ef_construction: int = 80
    ef_search: int = 128  # candidates kept per query; recall grows with it, latency too
    storage: Storage = "fp32"  # fp16: half the memory; scores rounded to float16 precision
    max_ann_k: int = 256  # a larger k is answered by the exact scan

    def __post_init__(self) -> None:
        if self.ann not in ANN_MODES:
            raise InvalidInput(f"unknown ann mode {self.ann!r} (expected one of {', '.join(ANN_MODES)})")
        if self.storage not in STORAGES:
            raise InvalidInput(f"unknown ann storage {self.storage!r} (expected one of {', '.join(STORAGES)})")
        if self.ann_threshold < 1 or self.hnsw_m < 2 or self.ef_construction < 1 or self.ef_search < 1:
            raise InvalidInput("ann_threshold, hnsw_m, ef_construction and ef_search must be positive")

    @classmethod
    def from_settings(cls, settings: Any) -> IndexOptions:
        """The options named ``search_*`` in :class:`shared.config.Settings`."""
        return cls(ann=settings.search_ann, ann_threshold=settings.search_ann_threshold,
                   hnsw_m=settings.search_hnsw_m, ef_construction=settings.search_ef_construction,
                   ef_search=settings.search_ef_search, storage=settings.search_ann_storage)

    def wants_ann(self, shard_size: int) -> bool:
        if self.ann == "exact":
            return False
        if self.ann == "hnsw":
            return shard_size > 0
        return shard_size >= self.ann_threshold


def load_faiss() -> Any | None:
    """The faiss module, or ``None`` (with one logged warning) when it is not installed."""
    global _faiss, _faiss_checked
    if not _faiss_checked:
        with _faiss_lock:
            if not _faiss_checked:
                try:
                    import faiss

                    _faiss = faiss
                except ImportError:
                    log.warning("faiss is not installed (pip install 'fir[ann]'): large catalogue shards "
                                "are searched exactly, which is slower")
                    _faiss = None
                _faiss_checked = True
    return _faiss


class HnswShard:
    """An HNSW graph over one shard's vectors (normalised already for cosine)."""

    def __init__(self, vectors: FloatArray, metric: str, options: IndexOptions, faiss: Any) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = x.shape
        self.metric = metric
        self.size = int(n)
        self.dim = int(d)
        self.storage: Storage = options.storage
        self.ef_search = options.ef_search
        self._faiss = faiss
        fmetric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        if options.storage == "fp16":
            index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, options.hnsw_m, fmetric)
            index.train(x[: min(n, 1000)])  # fp16 codes need no statistics; faiss wants the call
        else:
            index = faiss.IndexHNSWFlat(d, options.hnsw_m, fmetric)
        index.hnsw.efConstruction = options.ef_construction
        index.add(x)
        self.index = index

    def stored(self) -> npt.NDArray[Any]:
        """The vectors as the index stores them, ``[n, d]`` float32 or float16: a view of
        faiss's memory (valid while this object lives), not a copy."""
        storage = self._faiss.downcast_index(self.index.storage)
        codes = storage.codes
        raw = self._faiss.rev_swig_ptr(codes.data(), codes.size())
        dtype = np.float16 if self.storage == "fp16" else np.float32
        return np.asarray(raw).view(dtype).reshape(self.size, self.dim)

    def nbytes(self) -> int:
        """Memory held by the index: the stored vectors and the graph."""
        hnsw = self.index.hnsw
        return int(self.index.storage.sa_code_size() * self.size + hnsw.neighbors.size() * 4
                   + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4)

    def search(self, q: FloatArray, k: int, ef_search: int | None = None) -> tuple[IntArray, FloatArray]:
        """Local row indices and costs (smaller is better: ``-similarity`` for cosine, squared
        distance for euclidean), ``[m, k]`` sorted; missing neighbours are ``-1`` / ``inf``."""
        params = self._faiss.SearchParametersHNSW()
        params.efSearch = max(int(ef_search or self.ef_search), k)
        dist, idx = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k, params=params)
        cost = -dist if self.metric == "cosine" else np.maximum(dist, 0.0)
        cost = cost.astype(np.float32, copy=False)
        cost[idx < 0] = np.inf
        return idx.astype(np.int64, copy=False), cost
