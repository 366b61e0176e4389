"""HNSW graph settings for one large category shard: build time, latency and recall.

    python -m bench.bench_graph_params [--n 1000000] [--configs 32:80,32:160,48:100]
        [--ef 96,128,160,192,256] [--queries 200]

The catalogue is ``bench.bench_search``'s tight synthetic data for ``--n`` items (float16, as
FIR's ``fp16`` storage keeps it); one category's shard of it (about n / 3 vectors, what
``ShardedIndex`` gives each category) gets an fp16 HNSW graph for each ``M:efConstruction``
pair. Queries are the benchmark's queries of that category, searched one at a time on one
thread (as FIR searches each shard of a single query), three rounds; recall@10 is against the
exact answer over the same float16-rounded vectors.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from bench._common import machine_header
from bench.bench_search import make_vectors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000, help="catalogue size; one third is the shard")
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--category", default="dress")
    ap.add_argument("--configs", default="32:80,32:160,48:100", help="M:efConstruction pairs")
    ap.add_argument("--ef", default="96,128,160,192,256")
    ap.add_argument("--queries", type=int, default=200, help="drawn; those of --category are used")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import faiss

    print(machine_header("HNSW graph settings for one large category shard (fp16 storage)"))
    vectors, cats = make_vectors(args.n, args.d, seed=args.n, data="tight", dtype=np.float16)
    mine = np.array([c == args.category for c in cats])
    shard = vectors[mine].astype(np.float32)
    del vectors
    shard /= np.linalg.norm(shard, axis=1, keepdims=True)
    stored = shard.astype(np.float16).astype(np.float32)  # what fp16 storage scores against
    q, qcats = make_vectors(args.queries, args.d, seed=args.n + 1, data="tight")
    q = q[np.array([c == args.category for c in qcats])]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = np.argsort(-(q @ stored.T), axis=1)[:, :10]
    del stored
    gc.collect()
    print(f"- shard: {len(shard):,} x {args.d} ({args.category!r} of {args.n:,}); {len(q)} queries of that "
          f"category, one at a time, {args.rounds} rounds\n", flush=True)
    efs = [int(e) for e in args.ef.split(",")]
    rows = []
    for spec in args.configs.split(","):
        m, efc = (int(v) for v in spec.split(":"))
        faiss.omp_set_num_threads(2)  # the build uses both cores, as FIR's does
        index = faiss.IndexHNSWSQ(args.d, faiss.ScalarQuantizer.QT_fp16, m, faiss.METRIC_INNER_PRODUCT)
        index.train(shard[:1000])
        index.hnsw.efConstruction = efc
        t0 = time.perf_counter()
        index.add(shard)
        build = time.perf_counter() - t0
        graph_mb = (index.hnsw.neighbors.size() * 4 + index.hnsw.offsets.size() * 8) / 1e6
        faiss.omp_set_num_threads(1)
        for ef in efs:
            params = faiss.SearchParametersHNSW()
            params.efSearch = ef
            index.search(q[:1], 10, params=params)  # warm-up
            times, got = [], []
            for r in range(args.rounds):
                for i in range(len(q)):
                    t = time.perf_counter()
                    _, ids = index.search(q[i : i + 1], 10, params=params)
                    times.append(time.perf_counter() - t)
                    if r == 0:
                        got.append(ids[0])
            rec = float(np.mean([len(set(g.tolist()) & set(t.tolist())) / 10 for g, t in zip(got, truth, strict=True)]))
            rows.append(f"| {m} | {efc} | {build:.0f} | {graph_mb:.0f} | {ef} | {np.median(times) * 1000:.2f} "
                        f"| {np.percentile(times, 90) * 1000:.2f} | {rec:.3f} |")
            print(rows[-1], flush=True)
        del index
        gc.collect()
    print("\n| M | efConstruction | build s | graph links MB | efSearch | p50 ms | p90 ms | recall@10 |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
