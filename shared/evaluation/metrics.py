"""Retrieval metrics, as in the study: an item is relevant to a query when it has the
query's category.

Conventions (they matter when ``k`` is larger than what a search returns, e.g. k = 10,000
over a routed shard of a few thousand items):

- **precision@k** divides the relevant items among the first ``min(k, returned)`` results
  by ``min(k, returned)``: the number of results actually returned, not ``k``. A search that
  returns its whole (routed) shard is not charged for results it could not give. Nothing
  returned gives 0.0.
- **AP@k** is ``sum_{i <= k} P@i * rel_i / min(n_relevant, k)`` where ``n_relevant`` is the
  number of relevant items in the *whole catalogue*, not only in what was returned. Relevant
  items that routing excluded (a wrong route, or a shard smaller than k) therefore lower AP.
  A query with no relevant item in the catalogue has AP 0.0.

The batch versions take a 2-d relevance matrix ``[m, w]`` (one ranked row per query) and an
optional ``valid`` mask of the same shape marking returned entries (``False`` for padding,
as :class:`~shared.search.index.SearchResult` pads with index -1). A result's rank is its
position among the valid entries of its row. Pure numpy, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from shared.errors import InvalidInput

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]


def _check_k(k: int) -> int:
    if int(k) != k or k <= 0:
        raise InvalidInput(f"k must be a positive integer, got {k}")
    return int(k)


def _as_relevance(relevance: npt.ArrayLike) -> BoolArray:
    rel = np.asarray(relevance)
    if rel.ndim != 1:
        raise InvalidInput(f"relevance must be a 1-d array, got shape {rel.shape}")
    return rel.astype(bool, copy=False)


def precision_at_k(relevance: npt.ArrayLike, k: int) -> float:
    """Fraction of relevant items among the first ``min(k, len(relevance))`` results.

    ``relevance`` holds one boolean per *returned* result, best first. When fewer than ``k``
    results were returned, the denominator is the number returned; 0.0 when none were."""
    k = _check_k(k)
    rel = _as_relevance(relevance)[:k]
    if rel.size == 0:
        return 0.0
    return float(rel.sum()) / float(rel.size)


def average_precision_at_k(relevance: npt.ArrayLike, k: int, n_relevant: int) -> float:
    """AP@k = ``sum_{i <= k} P@i * rel_i / min(n_relevant, k)``.

    ``n_relevant`` is the number of relevant items in the whole catalogue, so relevant items
    missing from the returned list (excluded by routing, or ranked below k) are penalised.
    0.0 when ``n_relevant`` is 0."""
    k = _check_k(k)
    if n_relevant < 0:
        raise InvalidInput(f"n_relevant must be >= 0, got {n_relevant}")
    rel = _as_relevance(relevance)[:k]
    if n_relevant == 0 or rel.size == 0:
        return 0.0
    hits = np.cumsum(rel)
    ranks = np.arange(1, rel.size + 1)
    return float(np.sum((hits / ranks)[rel])) / float(min(n_relevant, k))


def _as_batch(relevance: npt.ArrayLike, valid: npt.ArrayLike | None) -> tuple[BoolArray, BoolArray]:
    rel = np.asarray(relevance)
    if rel.ndim != 2:
        raise InvalidInput(f"relevance must be a 2-d array [queries, ranks], got shape {rel.shape}")
    rel = rel.astype(bool, copy=False)
    if valid is None:
        ok = np.ones(rel.shape, dtype=bool)
    else:
        ok = np.asarray(valid).astype(bool, copy=False)
        if ok.shape != rel.shape:
            raise InvalidInput(f"valid mask has shape {ok.shape}, relevance has {rel.shape}")
    return rel & ok, ok


def precision_at_k_batch(relevance: npt.ArrayLike, k: int, valid: npt.ArrayLike | None = None) -> FloatArray:
    """Per-query :func:`precision_at_k` over a relevance matrix ``[m, w]``."""
    k = _check_k(k)
    rel, ok = _as_batch(relevance, valid)
    ranks = np.cumsum(ok, axis=1)
    within = ok & (ranks <= k)
    returned = within.sum(axis=1)
    hits = (rel & within).sum(axis=1)
    out = np.zeros(rel.shape[0], dtype=np.float64)
    np.divide(hits, returned, out=out, where=returned > 0)
    return out


def average_precision_at_k_batch(
    relevance: npt.ArrayLike,
    k: int,
    n_relevant: npt.ArrayLike,
    valid: npt.ArrayLike | None = None,
) -> FloatArray:
    """Per-query :func:`average_precision_at_k`; ``n_relevant`` is one count per query."""
    k = _check_k(k)
    rel, ok = _as_batch(relevance, valid)
    n_rel = np.broadcast_to(np.asarray(n_relevant, dtype=np.float64), (rel.shape[0],))
    if np.any(n_rel < 0):
        raise InvalidInput("n_relevant must be >= 0")
    ranks = np.cumsum(ok, axis=1)
    counted = rel & (ranks <= k)
    hits = np.cumsum(counted, axis=1)
    prec_at_i = np.divide(hits, ranks, out=np.zeros(rel.shape, dtype=np.float64), where=ranks > 0)
    total = np.where(counted, prec_at_i, 0.0).sum(axis=1)
    denom = np.minimum(n_rel, float(k))
    out = np.zeros(rel.shape[0], dtype=np.float64)
    np.divide(total, denom, out=out, where=denom > 0)
    return out


def mean_average_precision(
    relevance: npt.ArrayLike,
    k: int,
    n_relevant: npt.ArrayLike,
    valid: npt.ArrayLike | None = None,
) -> float:
    """mAP@k: the mean of :func:`average_precision_at_k` over the rows (0.0 for no rows)."""
    ap = average_precision_at_k_batch(relevance, k, n_relevant, valid)
    return float(ap.mean()) if ap.size else 0.0


def mean_precision(relevance: npt.ArrayLike, k: int, valid: npt.ArrayLike | None = None) -> float:
    """Mean precision@k over the rows, the study's "mean accuracy" (0.0 for no rows)."""
    p = precision_at_k_batch(relevance, k, valid)
    return float(p.mean()) if p.size else 0.0


def relevance_from_indices(
    indices: npt.NDArray[np.integer],
    item_labels: npt.NDArray[np.integer],
    query_labels: npt.NDArray[np.integer],
) -> tuple[BoolArray, BoolArray]:
    """Relevance and valid masks of a ranked index matrix padded with -1.

    ``item_labels[j]`` is the category code of catalogue item ``j``; ``query_labels[i]``
    that of query ``i``. Returns ``(relevant, valid)``, both ``[m, w]``."""
    idx = np.asarray(indices)
    if idx.ndim != 2:
        raise InvalidInput(f"indices must be a 2-d array, got shape {idx.shape}")
    items = np.asarray(item_labels)
    queries = np.asarray(query_labels)
    if queries.shape != (idx.shape[0],):
        raise InvalidInput(f"one query label per row is required, got {queries.shape} for {idx.shape[0]} rows")
    valid = idx >= 0
    if items.size == 0:
        return np.zeros(idx.shape, dtype=bool), valid
    labels = items[np.where(valid, idx, 0)]
    return (labels == queries[:, None]) & valid, valid


def precision_recall_at_cutoffs(
    relevance: npt.ArrayLike,
    valid: npt.ArrayLike | None,
    n_relevant: npt.ArrayLike,
    cutoffs: Sequence[int],
) -> tuple[FloatArray, FloatArray]:
    """Per-query precision and recall at each cut-off: ``([m, c], [m, c])``.

    Precision at k divides the hits within the first k valid results by the results returned
    (as :func:`precision_at_k_batch`); recall divides them by ``n_relevant`` (the relevant
    items in the whole gallery, one count per query; 0 gives recall 0)."""
    rel, ok = _as_batch(relevance, valid)
    ks = [_check_k(int(k)) for k in cutoffs]
    n_rel = np.asarray(n_relevant, dtype=np.float64).reshape(-1)
    if n_rel.shape != (rel.shape[0],):
        raise InvalidInput(f"one n_relevant per query is required, got {n_rel.shape} for {rel.shape[0]} rows")
    ranks = np.cumsum(ok, axis=1)
    hits_cum = np.cumsum(rel, axis=1)
    m, c = rel.shape[0], len(ks)
    precision = np.zeros((m, c), dtype=np.float64)
    recall = np.zeros((m, c), dtype=np.float64)
    if rel.shape[1] == 0 or m == 0:
        return precision, recall
    karr = np.asarray(ks)
    for i in range(m):
        last = np.searchsorted(ranks[i], karr, side="right") - 1  # last column within each k
        got = last >= 0
        returned = np.where(got, ranks[i][np.maximum(last, 0)], 0)
        hits = np.where(got, hits_cum[i][np.maximum(last, 0)], 0)
        np.divide(hits, returned, out=precision[i], where=returned > 0)
        if n_rel[i] > 0:
            recall[i] = hits / n_rel[i]
    return precision, recall
