"""Query matching at catalogue scale: exact scans against HNSW graphs (faiss) in ShardedIndex.

Synthetic clustered vectors, each cluster in one of three categories, queries drawn fresh
from the same distribution (``--data``: ``hard``, intrinsic dimension about 32 and no close
neighbours, or ``tight``, small clusters with close neighbours; see ``make_vectors``). Per size the index is built once with HNSW graphs (``ann="hnsw"``): the exact
answers come from the same index (``exact=True`` scans the graph's own stored vectors, which
is exactly what an ``ann="exact"`` index scans), so one copy of the data serves both.

Reported per size and variant: single-query latency p50 / p90 (routed to the query's
category, the study's setting, and unrouted), recall@10 against the exact answer, index
memory (vectors + graph, from the index; and the process's RSS growth) and build time. The
exact rows are timed with the BLAS limit FIR applies (one thread for a few queries) and,
for comparison, with OpenBLAS's default (2 threads here).

    python -m bench.bench_search [--plan 10000x2048,77000x2048,300000x2048,1000000x256]
        [--queries 100] [--ef 64,128,256] [--fp16 10000x2048,77000x2048]

``--pca SIZES --pca-min-recall 0.99`` builds the PCA variant as ``FIR_SEARCH_PCA_DIM=auto``
does: each shard keeps its PCA graph only where the graph's check (200 of the shard's vectors
held out of it) reaches the bar (printed per shard), else the plain graph; ``--ef default``
times each graph at FIR's own efSearch (twice ``--ef``'s 128 for a PCA graph).

Build time dominates (HNSW inserts are about 1 ms per 2048-d vector on a busy 2-core CPU):
split a long plan over several runs.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from typing import Any

import numpy as np
import numpy.typing as npt

import shared.search.index as index_mod
from bench._common import machine_header
from shared.search.ann import LARGE_SHARD, IndexOptions, describe_graph
from shared.search.index import ShardedIndex

CATS = ("dress", "shirt", "toptee")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def make_vectors(n: int, d: int, seed: int, data: str = "hard", chunk: int = 10_000,
                 dtype: type = np.float32) -> tuple[npt.NDArray[Any], list[str]]:
    """``hard``: cluster centres plus a shared 32-d Gaussian spread and noise: intrinsic
    dimension about 32 and queries with no close neighbours (distances concentrate), the worst
    case for a graph. ``tight``: many small clusters (about 25 items, a product's photos or one
    style), each varying along its own 4 directions, plus a little noise: every query has
    genuinely close neighbours, as real catalogue features do. ``dtype=np.float16`` halves
    the catalogue's memory (a million 2048-d rows: 4 GB instead of 8)."""
    rng = np.random.default_rng(1234)  # the same clusters for the catalogue and its queries
    draw = np.random.default_rng(seed)
    out: npt.NDArray[Any] = np.empty((n, d), dtype)
    if data == "hard":
        n_clusters = max(30, n // 300)
        centres = rng.normal(size=(n_clusters, d)).astype(np.float32)
        basis = (rng.normal(size=(32, d)) * 0.5).astype(np.float32)
        assign = draw.integers(0, n_clusters, n)
        for lo in range(0, n, chunk):
            a = assign[lo : lo + chunk]
            out[lo : lo + len(a)] = (centres[a] + draw.standard_normal((len(a), 32), dtype=np.float32) @ basis
                                     + 0.6 * draw.standard_normal((len(a), d), dtype=np.float32))
    else:
        n_clusters = max(30, n // 25)
        centres = rng.normal(size=(n_clusters, d)).astype(np.float32)
        bases = (rng.normal(size=(n_clusters, 4, d)) * 0.4).astype(np.float32)
        assign = draw.integers(0, n_clusters, n)
        for lo in range(0, n, chunk):
            a = assign[lo : lo + chunk]
            coef = draw.standard_normal((len(a), 4), dtype=np.float32)
            out[lo : lo + len(a)] = (centres[a] + np.einsum("nk,nkd->nd", coef, bases[a])
                                     + 0.1 * draw.standard_normal((len(a), d), dtype=np.float32))
    cluster_cat = np.arange(n_clusters) % len(CATS)
    return out, [CATS[c] for c in cluster_cat[assign]]


def recall_at(got: npt.NDArray[np.int64], ref: npt.NDArray[np.int64]) -> float:
    return float(np.mean([len(set(g.tolist()) & set(r.tolist())) / len(r) for g, r in zip(got, ref, strict=True)]))


def time_single(index: ShardedIndex, queries: npt.NDArray[np.float32], routes: list[tuple[str]] | None,
                k: int, n: int, exact: bool = False,
                ef: int | None = None) -> tuple[float, float, npt.NDArray[np.int64]]:
    """One query at a time: p50 and p90 ms, and the answers."""
    def one(i: int) -> npt.NDArray[np.int64]:
        return index.search(queries[i : i + 1], k, None if routes is None else routes[i : i + 1],
                            exact=exact, ef_search=ef).indices

    one(0)  # warm-up
    times, rows = [], []
    for i in range(n):
        t0 = time.perf_counter()
        rows.append(one(i))
        times.append(time.perf_counter() - t0)
    t = np.asarray(times) * 1000
    return float(np.median(t)), float(np.percentile(t, 90)), np.concatenate(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", default="10000x2048,77000x2048,300000x2048,1000000x256",
                    help="comma-separated NxD catalogues")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--exact-queries", type=int, default=30, help="single exact queries timed (slow at 1M)")
    ap.add_argument("--ef", default="64,128,256",
                    help="efSearch values measured; 'default': each graph's own (FIR's efSearch, twice it "
                         "for a PCA graph)")
    ap.add_argument("--fp16", default="10000x2048,77000x2048", help="sizes that also get an fp16-stored graph")
    ap.add_argument("--pca", default="", help="sizes that also get a PCA-compacted graph (re-ranked exactly)")
    ap.add_argument("--pca-dim", type=int, default=256)
    ap.add_argument("--rerank", type=int, default=64)
    ap.add_argument("--pca-min-recall", type=float, default=None,
                    help="check each shard's PCA graph and keep it only at this held-out recall@10, "
                         "else build the plain graph (FIR_SEARCH_PCA_DIM=auto: 0.99)")
    ap.add_argument("--pca-storage", default="fp32", choices=["fp32", "fp16"],
                    help="storage of the PCA graph's codes and of the full vectors it re-ranks with")
    ap.add_argument("--no-fp32-graph", action="store_true", help="skip the plain fp32 graph (exact rows still run)")
    ap.add_argument("--no-fp32-index", action="store_true",
                    help="build no fp32 index at all (1M x 2048 on 24 GB); the exact rows scan the first "
                         "index built instead")
    ap.add_argument("--catalogue-dtype", default="float32", choices=["float32", "float16"],
                    help="generate the catalogue in this dtype (float16: half the memory; the index "
                         "widens it one shard at a time)")
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--large-m", type=int, default=48, help="M of shards over LARGE_SHARD vectors")
    ap.add_argument("--large-ef-construction", type=int, default=100,
                    help="efConstruction of shards over LARGE_SHARD vectors")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--data", default="hard", choices=["hard", "tight"], help="synthetic data (make_vectors)")
    args = ap.parse_args()
    print(machine_header("Query matching: exact scans and HNSW graphs per category shard"))
    print(f"- load average at start: {os.getloadavg()[0]:.2f}")
    print(f"- HNSW M={args.m}, efConstruction={args.ef_construction} (shards over {LARGE_SHARD:,}: "
          f"M={args.large_m}, efConstruction={args.large_ef_construction}); k={args.k}; 3 category shards; "
          f"{args.queries} single queries (exact: {args.exact_queries}); data: {args.data}\n", flush=True)
    efs: list[int | None] = [None if e == "default" else int(e) for e in args.ef.split(",")]
    fp16_plan = set(args.fp16.split(",")) if args.fp16 else set()
    pca_plan = set(args.pca.split(",")) if args.pca else set()
    k = args.k
    rows: list[str] = []
    for spec in args.plan.split(","):
        n, d = (int(v) for v in spec.split("x"))
        vectors, cats = make_vectors(n, d, seed=n, data=args.data, dtype=np.dtype(args.catalogue_dtype).type)
        queries, qcats = make_vectors(args.queries, d, seed=n + 1, data=args.data)
        routes = [(c,) for c in qcats]
        common = {"ann": "hnsw", "hnsw_m": args.m, "ef_construction": args.ef_construction,
                  "large_hnsw_m": args.large_m, "large_ef_construction": args.large_ef_construction}
        variants: list[tuple[str, IndexOptions]] = [] if args.no_fp32_index else [("fp32", IndexOptions(**common))]
        if spec in fp16_plan:
            variants.append(("fp16", IndexOptions(**common, storage="fp16")))
        if spec in pca_plan:
            check = "" if args.pca_min_recall is None else f", kept at check >= {args.pca_min_recall}"
            variants.append((f"{args.pca_storage} PCA{args.pca_dim} + rerank {args.rerank}{check}",
                             IndexOptions(**common, pca_dim=args.pca_dim, rerank=args.rerank,
                                          storage=args.pca_storage, pca_min_recall=args.pca_min_recall)))
        for storage, opts in variants:
            gc.collect()
            rss0 = rss_mb()
            t0 = time.perf_counter()
            index = ShardedIndex(vectors, cats, "cosine", options=opts)
            build = time.perf_counter() - t0
            rss_grow = rss_mb() - rss0
            mem_mb = index.nbytes() / 1e6
            truth_routed = index.search(queries, k, routes, exact=True).indices
            truth_all = index.search(queries, k, None, exact=True).indices
            label = f"{n:,} x {d}"
            if storage == variants[0][0]:
                eq = min(args.exact_queries, args.queries)
                saved = index_mod.SINGLE_THREAD_QUERIES
                for blas, limit in (("1 BLAS thread (FIR)", saved), ("BLAS default (2 threads)", 0)):
                    index_mod.SINGLE_THREAD_QUERIES = limit
                    try:
                        p50, p90, _ = time_single(index, queries, routes, k, eq, exact=True)
                        u50, _, _ = time_single(index, queries, None, k, eq, exact=True)
                    finally:
                        index_mod.SINGLE_THREAD_QUERIES = saved
                    store = "fp16" if storage.startswith("fp16") else "fp32"  # what the exact scan reads
                    exact_mb = n * d * (2 if store == "fp16" else 4) / 1e6
                    rows.append(f"| {label} | exact {store}, {blas} | - | {p50:.2f} | {p90:.2f} | 1.000 | {u50:.2f} | - "
                                f"| 1.000 | {exact_mb:,.0f} | {exact_mb / n * 1e6 / 1e3:.2f} | - |")
            graph_efs = [] if (storage == "fp32" and args.no_fp32_graph) else efs
            for ef in graph_efs:
                p50, p90, got = time_single(index, queries, routes, k, args.queries, ef=ef)
                u50, _, got_all = time_single(index, queries, None, k, args.queries, ef=ef)
                saved_threads = index_mod.SHARD_THREADS
                index_mod.SHARD_THREADS = 1  # the three graphs one after another, for comparison
                try:
                    s50, _, _ = time_single(index, queries, None, k, args.queries, ef=ef)
                finally:
                    index_mod.SHARD_THREADS = saved_threads
                r = recall_at(got, truth_routed)
                ru = recall_at(got_all, truth_all)
                rows.append(f"| {label} | HNSW {storage} | {'default' if ef is None else ef} | {p50:.2f} | {p90:.2f} | {r:.3f} | {u50:.2f} | {s50:.2f} "
                            f"| {ru:.3f} | {mem_mb:,.0f} (RSS +{rss_grow:,.0f}) | {mem_mb / n * 1e6 / 1e3:.2f} "
                            f"| {build:.1f} |")
            print(f"{label} {storage}: built in {build:.1f} s (load average {os.getloadavg()[0]:.2f})", flush=True)
            for cat, shard in index._shards.items():  # what each shard's graph is, and its PCA check
                g = shard.ann
                if g is not None and g.checks:
                    print(f"  shard {cat} ({g.size:,}): {describe_graph(g)}", flush=True)
            index = None  # type: ignore[assignment]
        del vectors
        gc.collect()
    print()
    print("| catalogue | search | efSearch | routed p50 ms | routed p90 ms | routed recall@10 | unrouted p50 ms "
          "| unrouted p50 ms, shards one after another | unrouted recall@10 | index memory MB | GB per million items "
          "| build s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}. Exact recall is 1 by definition; the exact memory is "
          "the float32 vectors (the graph index stores the same vectors once, plus its graph). "
          "Unrouted HNSW = the three shards' graphs searched (side by side, FIR's default for a single "
          "query; and one after another) and merged.")


if __name__ == "__main__":
    main()
