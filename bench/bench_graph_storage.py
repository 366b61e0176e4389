"""How a category shard's HNSW graph stores its vectors: float16 (FIR's ``fp16`` storage)
against 8-bit scalar quantization, with and without exact re-ranking of its candidates.

One routed shard (the query's category) of ``bench_search``'s synthetic data, the vectors
normalised (cosine as inner product), every graph built with the same M and efConstruction
and searched one query at a time on one thread, as FIR searches a routed query; the variants
are timed in turn at each efSearch, ``--rounds`` times. Recall@10
is against an exact scan of the float32 vectors.

    python -m bench.bench_graph_storage [--n 77000] [--d 2048] [--data hard] [--ef 64,128,192,256]

``SQ8 + re-rank``: faiss's ``IndexRefineFlat`` over the SQ8 graph; the graph proposes
``k * k_factor`` candidates and their float32 vectors rank them (so it holds both copies).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from bench._common import machine_header
from bench.bench_search import CATS, make_vectors, recall_at

VARIANTS = {
    "HNSW fp16 (FIR)": "HNSW{m}_SQfp16",
    "HNSW SQ8": "HNSW{m}_SQ8",
    "HNSW SQ8 + re-rank": "HNSW{m}_SQ8,RFlat",
}


def search_one_by_one(index: Any, queries: npt.NDArray[np.float32], k: int) -> tuple[list[float], npt.NDArray[np.int64]]:
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, ids = index.search(q[None, :], k)
        times.append((time.perf_counter() - t0) * 1000)
        found.append(ids[0])
    return times, np.stack(found)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=77_000, help="catalogue size (three category shards)")
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--data", default="hard", choices=["hard", "tight"])
    ap.add_argument("--queries", type=int, default=200, help="drawn over the three categories")
    ap.add_argument("--ef", default="64,128,192,256")
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--k-factor", type=int, default=4, help="re-ranked candidates per result")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(machine_header("Graph storage: HNSW fp16 against SQ8 (one routed shard)"))
    faiss.omp_set_num_threads(1)
    vectors, cats = make_vectors(args.n, args.d, seed=1, data=args.data)
    queries, qcats = make_vectors(args.queries, args.d, seed=2, data=args.data)
    shard = np.ascontiguousarray(vectors[np.asarray(cats) == CATS[0]])
    q = np.ascontiguousarray(queries[np.asarray(qcats) == CATS[0]])
    del vectors
    faiss.normalize_L2(shard)
    faiss.normalize_L2(q)
    truth = np.argsort(-(q @ shard.T), axis=1)[:, :10]
    print(f"- data {args.data}: catalogue {args.n:,} x {args.d}; the routed shard {len(shard):,} vectors, "
          f"{len(q)} queries; M {args.m}, efConstruction {args.ef_construction}, re-rank k_factor {args.k_factor}; "
          f"faiss {faiss.__version__}, 1 thread\n")
    built: dict[str, tuple[Any, Any, float, str]] = {}
    for name, factory in VARIANTS.items():
        index = faiss.index_factory(args.d, factory.format(m=args.m), faiss.METRIC_INNER_PRODUCT)
        graph: Any = faiss.downcast_index(index.base_index if isinstance(index, faiss.IndexRefine) else index)
        graph.hnsw.efConstruction = args.ef_construction
        t0 = time.perf_counter()
        index.train(shard)
        index.add(shard)
        build = time.perf_counter() - t0
        if isinstance(index, faiss.IndexRefine):
            index.k_factor = args.k_factor
        storage: Any = faiss.downcast_index(graph.storage)
        code = str(storage.code_size)
        if isinstance(index, faiss.IndexRefine):
            code += f" + {4 * args.d} (re-rank)"
        built[name] = (index, graph, build, code)
    # the variants in turn at each efSearch, twice: this VM's speed drifts between minutes
    rows: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    efs = [int(e) for e in args.ef.split(",")]
    for _ in range(args.rounds):
        for ef in efs:
            for name, (index, graph, _, _) in built.items():
                graph.hnsw.efSearch = ef
                times, found = search_one_by_one(index, q, 10)
                p90 = sorted(times)[int(0.9 * (len(times) - 1))]
                rows.setdefault((name, ef), []).append((statistics.median(times), p90, recall_at(found, truth)))
    print("| graph | efSearch | p50 ms (each round) | p90 ms (each round) | recall@10 | bytes per vector (codes) "
          "| build s |")
    print("|---|---|---|---|---|---|---|")
    for name, (_, _, build, code) in built.items():
        for ef in efs:
            got = rows[(name, ef)]
            p50s = ", ".join(f"{r[0]:.2f}" for r in got)
            p90s = ", ".join(f"{r[1]:.2f}" for r in got)
            print(f"| {name} | {ef} | {p50s} | {p90s} | {got[0][2]:.3f} | {code} | {build:.0f} |")

if __name__ == "__main__":
    main()
