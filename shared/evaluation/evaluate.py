"""The study's evaluation over feature sets: for each routing mode and each cut-off k, mAP@k,
mean precision@k ("mean accuracy"), router accuracy and mean query time.

An item is relevant to a query when it has the query's category. The gallery is indexed once
(:class:`~shared.search.index.ShardedIndex`); for each mode every query is routed
(:func:`~shared.search.routing.plan_routes`) and searched once, in batches, at the largest k;
the metrics at each k are computed from prefixes of that one ranking.

Times, all in milliseconds per query:

- ``ms_matching``: routing plan + search of *one* query at a time, the mean over a sample of
  up to ``latency_sample`` queries (the realistic single-request latency the study reports);
- ``ms_matching_batched``: the same work for all queries in batches, divided per query;
- ``ms_router``: ``Router.predict_proba`` over all queries at once, divided per query (svm
  modes only; its single-query latency is in ``meta["ms_router_single"]``);
- ``ms_with_extraction``: ``ms_matching + ms_router + extraction_ms`` where the caller
  measured ``extraction_ms`` (feature extraction per image); ``None`` when it did not.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from shared.errors import EmptyDataset, InvalidInput, UnknownCategory
from shared.evaluation.metrics import (
    average_precision_at_k_batch,
    precision_at_k_batch,
    precision_recall_at_cutoffs,
    relevance_from_indices,
)
from shared.search.index import METRICS, Metric, ShardedIndex
from shared.search.routing import ROUTING_MODES, check_mode, plan_routes

if TYPE_CHECKING:  # typing only: importing them pulls in torch and scikit-learn
    from shared.vision.features import FeatureSet
    from shared.vision.router import Router

log = logging.getLogger(__name__)

# The seed study's published figures, for comparison in every report.
STUDY_FIGURES: dict[str, float] = {
    "cnn_test_accuracy": 0.91,
    "svm_valid_accuracy": 0.91,
    "svm_test_accuracy": 0.898,
    "routed_map": 0.898,
    "mean_query_time_s_routed": 0.006,
    "mean_query_time_s_unrouted": 0.009,
}

PER_CATEGORY_K = 10  # per-category precision is reported at this cut-off
EXAMPLE_RESULTS = 8  # results shown per example query
PR_POINTS = 24  # cut-offs of the precision-recall curve, spaced geometrically from 1 to the search depth
SVM_MODES = ("svm", "svm-fallback")
# Queries per search batch: keeps the [batch, shard] score matrices of the index to about
# 2**24 entries (a few hundred MB with argpartition's int64 copy).
_BATCH_CELLS = 2**24


@dataclass
class EvalRow:
    """One line of the study's table: a routing mode at one cut-off k."""

    mode: str
    k: int
    mean_ap: float  # mAP@k
    mean_precision: float  # mean precision@k, the study's "mean accuracy"
    router_accuracy: float | None  # top routed category == true category (svm modes)
    router_coverage: float | None  # true category among the routed ones (svm modes)
    ms_matching: float  # single-query routing + search, mean over the latency sample
    ms_matching_batched: float  # routing + search of all queries in batches, per query
    ms_router: float | None  # router probabilities per query (batched); None without router
    ms_with_extraction: float | None  # ms_matching + ms_router + extraction; None if not measured
    mean_returned: float  # results returned per query within k (< k when the shard is small)
    n_queries: int


@dataclass
class ExampleResult:
    rank: int
    key: str
    path: str
    category: str
    score: float
    relevant: bool


@dataclass
class EvalExample:
    """A query and its top results under the report's example mode."""

    key: str
    path: str
    category: str
    route: list[str] | None  # categories searched; None: the whole catalogue
    results: list[ExampleResult] = field(default_factory=list)


@dataclass
class EvalReport:
    rows: list[EvalRow]
    meta: dict[str, Any]
    per_category: dict[str, dict[str, float]]  # mode -> category -> mean precision@10
    examples: list[EvalExample]
    notes: list[str] = field(default_factory=list)
    # mode -> [{"k", "precision", "recall"}]: mean precision and recall at cut-offs 1..search depth
    pr_curve: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    # mode -> "ap@k" / "p@k" -> one value per query (query order); only with keep_per_query,
    # for confidence intervals (bootstrap over queries)
    per_query: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def row(self, mode: str, k: int) -> EvalRow:
        for r in self.rows:
            if r.mode == mode and r.k == k:
                return r
        raise KeyError((mode, k))

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": dict(self.meta),
            "rows": [asdict(r) for r in self.rows],
            "per_category": {m: dict(v) for m, v in self.per_category.items()},
            "examples": [asdict(e) for e in self.examples],
            "notes": list(self.notes),
            "pr_curve": {m: [dict(p) for p in v] for m, v in self.pr_curve.items()},
            "per_query": {m: {k: list(v) for k, v in d.items()} for m, d in self.per_query.items()},
        }


def _check_metric(metric: str) -> Metric:
    if metric not in METRICS:
        raise InvalidInput(f"unknown metric {metric!r} (expected one of {', '.join(METRICS)})")
    return cast(Metric, metric)


def _check_ks(ks: Sequence[int]) -> list[int]:
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or int(k) != k or k <= 0:
            raise InvalidInput(f"every k must be a positive integer, got {k!r}")
        out.append(int(k))
    if not out:
        raise InvalidInput("at least one k is required")
    return sorted(set(out))


def _spread_across_categories(categories: Sequence[str], n: int) -> list[int]:
    """The first query of each category in turn (categories in order of first appearance),
    then the second of each, ... up to ``n`` indices."""
    seen: Counter[str] = Counter()
    order: dict[str, int] = {}
    keyed: list[tuple[int, int, int]] = []
    for i, c in enumerate(categories):
        order.setdefault(c, len(order))
        keyed.append((seen[c], order[c], i))
        seen[c] += 1
    return [i for _, _, i in sorted(keyed)[: max(n, 0)]]


def _latency_sample(n: int, size: int) -> npt.NDArray[np.int64]:
    size = max(1, min(size, n))
    return np.unique(np.linspace(0, n - 1, size).round().astype(np.int64))


def evaluate_retrieval(
    gallery: FeatureSet,
    queries: FeatureSet,
    router: Router | None,
    modes: Sequence[str] = ROUTING_MODES,
    ks: Sequence[int] = (100, 1000, 10000),
    metric: Metric | str = "cosine",
    threshold: float = 0.6,
    extraction_ms: float | None = None,
    n_examples: int = 6,
    latency_sample: int = 50,
    progress: bool = False,
    keep_per_query: bool = False,
) -> EvalReport:
    """Evaluate retrieval of ``queries`` against ``gallery`` for each routing mode and k.

    svm modes are skipped (with a note) when ``router`` is None. The feature sets and the
    router must come from the same model (:class:`~shared.errors.ModelMismatch`). ``progress``
    shows a bar over the routing modes (for a terminal); ``keep_per_query`` keeps every
    query's AP@k and precision@k in ``report.per_query``."""
    if len(gallery) == 0:
        raise EmptyDataset("the gallery has no features to search")
    if len(queries) == 0:
        raise EmptyDataset("there are no query features to evaluate")
    queries.check_model(gallery.model_id)
    if router is not None:
        router.check_model(gallery.model_id)
    gv = np.asarray(gallery.vectors, dtype=np.float32)
    qv = np.asarray(queries.vectors, dtype=np.float32)
    if gv.ndim != 2 or qv.ndim != 2 or gv.shape[1] != qv.shape[1]:
        raise InvalidInput(f"gallery vectors {gv.shape} and query vectors {qv.shape} do not match")
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInput(f"threshold must be between 0 and 1, got {threshold}")
    if extraction_ms is not None and extraction_ms < 0:
        raise InvalidInput(f"extraction_ms must be >= 0, got {extraction_ms}")
    ks_sorted = _check_ks(ks)
    requested = [check_mode(m) for m in dict.fromkeys(modes)]
    notes: list[str] = []
    run_modes: list[str] = []
    for m in requested:
        if m in SVM_MODES and router is None:
            notes.append(f"routing {m!r} skipped: no router was given")
        else:
            run_modes.append(m)
    if not run_modes:
        raise InvalidInput("no routing mode left to evaluate (svm modes need a router)")

    index = ShardedIndex(gv, gallery.categories, metric=_check_metric(metric))
    cats = index.shard_names
    q_cats = [str(c) for c in queries.categories]
    if any(c == "" for c in q_cats):
        raise InvalidInput("every query needs a category to be scored (some have none)")
    missing = sorted(set(q_cats) - set(cats))
    if missing:
        raise UnknownCategory(
            f"query categories not in the gallery: {', '.join(missing)} "
            f"(gallery has: {', '.join(cats)})"
        )
    code = {c: i for i, c in enumerate(cats)}
    item_codes = np.asarray([code[str(c)] for c in gallery.categories], dtype=np.int64)
    query_codes = np.asarray([code[c] for c in q_cats], dtype=np.int64)
    per_cat_count = np.bincount(item_codes, minlength=len(cats))
    n_relevant = per_cat_count[query_codes]
    n_q = len(queries)
    k_search = min(max(ks_sorted[-1], PER_CATEGORY_K, EXAMPLE_RESULTS), index.size)
    batch = int(max(1, min(1024, _BATCH_CELLS // max(index.size, 1))))
    sample = _latency_sample(n_q, latency_sample)
    cutoffs = [int(c) for c in np.unique(np.round(np.geomspace(1, max(k_search, 1), PR_POINTS)).astype(int))]

    # Router: probabilities for every query, once, timed as a batch and one query at a time.
    proba: npt.NDArray[np.float64] | None = None
    labels: list[str] | None = None
    ms_router: float | None = None
    ms_router_single: float | None = None
    if router is not None and any(m in SVM_MODES for m in run_modes):
        labels = list(router.labels)
        t0 = time.perf_counter()
        proba = router.predict_proba(qv)
        ms_router = (time.perf_counter() - t0) * 1000.0 / n_q
        router.predict_proba(qv[sample[:1]])  # warm-up
        t0 = time.perf_counter()
        for i in sample:
            router.predict_proba(qv[i : i + 1])
        ms_router_single = (time.perf_counter() - t0) * 1000.0 / len(sample)

    example_mode = "svm-fallback" if "svm-fallback" in run_modes else run_modes[0]
    example_ids = _spread_across_categories(q_cats, n_examples)
    example_pos = {q: j for j, q in enumerate(example_ids)}
    examples: list[EvalExample | None] = [None] * len(example_ids)

    rows: list[EvalRow] = []
    per_category: dict[str, dict[str, float]] = {}
    pr_curve: dict[str, list[dict[str, float]]] = {}
    per_query: dict[str, dict[str, list[float]]] = {}
    from tqdm import tqdm

    for mode in tqdm(run_modes, desc="evaluating", unit="mode", disable=not progress, leave=False):
        ap = np.zeros((len(ks_sorted), n_q))
        prec = np.zeros((len(ks_sorted), n_q))
        returned = np.zeros((len(ks_sorted), n_q))
        p_cat = np.zeros(n_q)
        pr_sum = np.zeros((2, len(cutoffs)))
        t0 = time.perf_counter()
        routes = plan_routes(mode, n_q, labels=labels, probabilities=proba, given=q_cats,
                             threshold=threshold, known=cats)
        elapsed = time.perf_counter() - t0
        for start in range(0, n_q, batch):
            sl = slice(start, min(start + batch, n_q))
            t0 = time.perf_counter()
            res = index.search(qv[sl], k_search, routes[sl])
            elapsed += time.perf_counter() - t0
            rel, valid = relevance_from_indices(res.indices, item_codes, query_codes[sl])
            for j, k in enumerate(ks_sorted):
                ap[j, sl] = average_precision_at_k_batch(rel[:, :k], k, n_relevant[sl], valid[:, :k])
                prec[j, sl] = precision_at_k_batch(rel[:, :k], k, valid[:, :k])
                returned[j, sl] = valid[:, :k].sum(axis=1)
            p_cat[sl] = precision_at_k_batch(rel[:, :PER_CATEGORY_K], PER_CATEGORY_K,
                                             valid[:, :PER_CATEGORY_K])
            p_at, r_at = precision_recall_at_cutoffs(rel, valid, n_relevant[sl], cutoffs)
            pr_sum[0] += p_at.sum(axis=0)
            pr_sum[1] += r_at.sum(axis=0)
            if mode == example_mode:
                for qi in example_ids:
                    if sl.start <= qi < sl.stop:
                        examples[example_pos[qi]] = _example(gallery, queries, qi, routes[qi],
                                                             res.indices[qi - sl.start],
                                                             res.scores[qi - sl.start], q_cats[qi])
        ms_batched = elapsed * 1000.0 / n_q
        pr_curve[mode] = [{"k": k, "precision": float(p / n_q), "recall": float(r / n_q)}
                          for k, p, r in zip(cutoffs, pr_sum[0], pr_sum[1], strict=True)]

        acc: float | None = None
        cover: float | None = None
        if mode in SVM_MODES:
            acc = float(np.mean([r is not None and r[0] == c for r, c in zip(routes, q_cats, strict=True)]))
            cover = float(np.mean([r is not None and c in r for r, c in zip(routes, q_cats, strict=True)]))
        mode_router_ms = ms_router if mode in SVM_MODES else None

        latency: dict[int, float] = {}
        for j, k in enumerate(ks_sorted):
            k_eff = min(k, index.size)
            if k_eff not in latency:
                latency[k_eff] = _single_query_ms(index, qv, mode, sample, k_eff, labels, proba,
                                                  q_cats, threshold, cats)
            ms_match = latency[k_eff]
            with_ext: float | None = None
            if extraction_ms is not None:
                with_ext = ms_match + (mode_router_ms or 0.0) + float(extraction_ms)
            rows.append(EvalRow(
                mode=mode, k=k, mean_ap=float(ap[j].mean()), mean_precision=float(prec[j].mean()),
                router_accuracy=acc, router_coverage=cover, ms_matching=ms_match,
                ms_matching_batched=ms_batched, ms_router=mode_router_ms, ms_with_extraction=with_ext,
                mean_returned=float(returned[j].mean()), n_queries=n_q,
            ))
        if keep_per_query:
            per_query[mode] = {f"{name}@{k}": [float(v) for v in values[j]]
                               for j, k in enumerate(ks_sorted) for name, values in (("ap", ap), ("p", prec))}
        per_category[mode] = {
            c: float(p_cat[query_codes == code[c]].mean()) for c in cats if np.any(query_codes == code[c])
        }
        log.info("evaluated routing %s: %s", mode,
                 ", ".join(f"mAP@{r.k} {r.mean_ap:.3f}" for r in rows if r.mode == mode))

    if ks_sorted[-1] > index.size:
        notes.append(
            f"k={ks_sorted[-1]} is larger than the gallery ({index.size} items): precision@k divides by "
            "the number of results returned, AP@k by min(relevant items in the gallery, k)"
        )
    smallest = min(index.shard_size(c) for c in cats)
    if any(m != "none" for m in run_modes) and any(k > smallest for k in ks_sorted):
        notes.append(
            f"routed searches return at most their shard (the smallest has {smallest} items) when k is "
            "larger; relevant items outside the routed shards count against AP@k"
        )

    meta: dict[str, Any] = {
        "model_id": gallery.model_id,
        "backbone": gallery.backbone,
        "metric": index.metric,
        "n_gallery": index.size,
        "n_queries": n_q,
        "dim": index.dim,
        "categories": cats,
        "gallery_per_category": {c: int(per_cat_count[code[c]]) for c in cats},
        "queries_per_category": {c: int(np.sum(query_codes == code[c])) for c in cats},
        "threshold": float(threshold),
        "ks": ks_sorted,
        "modes": run_modes,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "extraction_ms": None if extraction_ms is None else float(extraction_ms),
        "ms_router_batched": ms_router,
        "ms_router_single": ms_router_single,
        "latency_sample": len(sample),
        "search_k": k_search,
        "per_category_k": PER_CATEGORY_K,
        "examples_mode": example_mode,
        "router": None if router is None else {
            "labels": list(router.labels), "params": dict(router.params), "cv_accuracy": router.cv_accuracy,
        },
        "study": dict(STUDY_FIGURES),
    }
    return EvalReport(rows=rows, meta=meta, per_category=per_category,
                      examples=[e for e in examples if e is not None], notes=notes, pr_curve=pr_curve,
                      per_query=per_query)


def _single_query_ms(
    index: ShardedIndex,
    qv: npt.NDArray[np.float32],
    mode: str,
    sample: npt.NDArray[np.int64],
    k: int,
    labels: list[str] | None,
    proba: npt.NDArray[np.float64] | None,
    q_cats: list[str],
    threshold: float,
    cats: list[str],
) -> float:
    """Mean ms of routing + searching one query at a time over ``sample`` (after a warm-up)."""

    def one(i: int) -> None:
        route = plan_routes(mode, 1, labels=labels,
                            probabilities=None if proba is None else proba[i : i + 1],
                            given=[q_cats[i]], threshold=threshold, known=cats)
        index.search(qv[i : i + 1], k, route)

    one(int(sample[0]))
    t0 = time.perf_counter()
    for i in sample:
        one(int(i))
    return (time.perf_counter() - t0) * 1000.0 / len(sample)


def _example(
    gallery: FeatureSet,
    queries: FeatureSet,
    qi: int,
    route: tuple[str, ...] | None,
    indices: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    category: str,
) -> EvalExample:
    results: list[ExampleResult] = []
    for rank, (j, s) in enumerate(zip(indices.tolist(), scores.tolist(), strict=True), start=1):
        if j < 0 or len(results) >= EXAMPLE_RESULTS:
            break
        results.append(ExampleResult(rank=rank, key=gallery.keys[j], path=gallery.paths[j],
                                     category=str(gallery.categories[j]), score=float(s),
                                     relevant=str(gallery.categories[j]) == category))
    return EvalExample(key=queries.keys[qi], path=queries.paths[qi], category=category,
                       route=None if route is None else list(route), results=results)
