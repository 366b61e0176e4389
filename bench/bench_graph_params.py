"""HNSW graph settings for one large category shard: build time, latency and recall.

    python -m bench.bench_graph_params [--n 1000000] [--configs 32:80,32:160,48:100]
        [--ef 96,128,160,192,256] [--queries 200]

The catalogue is ``bench.bench_search``'s tight synthetic data for ``--n`` items (float16, as
FIR's ``fp16`` storage keeps it); one category's shard of it (about n / 3 vectors, what
``ShardedIndex`` gives each category) gets FIR's fp16 HNSW graph (``HnswShard``) for each
``M:efConstruction`` pair. Queries are the benchmark's queries of that category, searched one at a time on one
thread (as FIR searches each shard of a single query), three rounds; recall@10 is against the
exact answer over the same float16-rounded vectors.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from bench._common import machine_header
from bench.bench_search import make_vectors, recall_at
from shared.search.ann import HnswShard, IndexOptions, load_faiss


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
    faiss = load_faiss()
    if faiss is None:
        raise SystemExit("faiss is not installed (pip install 'fir[ann]')")

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
        # this M and efConstruction whatever the shard's size (FIR picks by LARGE_SHARD)
        opts = IndexOptions(ann="hnsw", storage="fp16", hnsw_m=m, ef_construction=efc, large_hnsw_m=m,
                            large_ef_construction=efc)
        t0 = time.perf_counter()
        graph = HnswShard(shard, "cosine", opts, faiss)
        build = time.perf_counter() - t0
        hnsw = graph.index.hnsw
        graph_mb = (hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8) / 1e6
        faiss.omp_set_num_threads(1)
        for ef in efs:
            graph.search(q[:1], 10, ef)  # warm-up
            times, got = [], []
            for r in range(args.rounds):
                for i in range(len(q)):
                    t = time.perf_counter()
                    ids, _ = graph.search(q[i : i + 1], 10, ef)
                    times.append(time.perf_counter() - t)
                    if r == 0:
                        got.append(ids[0])
            rec = recall_at(np.stack(got), truth)
            rows.append(f"| {m} | {efc} | {build:.0f} | {graph_mb:.0f} | {ef} | {np.median(times) * 1000:.2f} "
                        f"| {np.percentile(times, 90) * 1000:.2f} | {rec:.3f} |")
            print(rows[-1], flush=True)
        del graph
        gc.collect()
    print("\n| M | efConstruction | build s | graph links MB | efSearch | p50 ms | p90 ms | recall@10 |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
