"""Dedup at scale: time and peak memory for 10k, 50k and 100k items in ONE category.

Synthetic 2048-d features shaped like a CNN's pooled activations (non-negative; two unrelated
items have cosine about 0.5, as real features do), with 5% of the items planted as noisy
copies of others (cosine about 0.95-0.99). Each size runs in a fresh process, through the
same pure pipeline a catalogue's run uses (``shared.dedup.detect.find_duplicates``: blockwise
pairs, connected components, evidence per member); the database load and store are not
timed. Time: wall clock and the process's CPU time (all BLAS threads; on a shared machine the
wall clock also counts waiting for a core). Memory: the process's peak RSS (``getrusage``) and, separately, the peak of what the
dedup itself allocated on top of its input (``tracemalloc``; numpy reports its buffers).

    python bench/bench_dedup.py                      # 10k, 50k, 100k
    python bench/bench_dedup.py --sizes 10000 --dim 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_vectors(n: int, dim: int, dup_share: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, planted i, planted j): ``dup_share`` of the rows are copies of other rows."""
    rng = np.random.default_rng(seed)
    n_dup = int(n * dup_share)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):
        stop = min(start + 8192, n)
        x[start:stop] = rng.gamma(1.0, size=(stop - start, dim)).astype(np.float32)
    originals = rng.choice(n - n_dup, n_dup, replace=True)  # some originals get two copies
    copies = np.arange(n - n_dup, n)
    noise = rng.uniform(0.1, 0.3, size=(n_dup, 1)).astype(np.float32)
    for start in range(0, n_dup, 8192):
        sl = slice(start, min(start + 8192, n_dup))
        x[copies[sl]] = x[originals[sl]] + noise[sl] * rng.gamma(1.0, size=(len(copies[sl]), dim)).astype(np.float32)
    return x, originals.astype(np.int64), copies.astype(np.int64)


def one(n: int, dim: int, threshold: float, seed: int) -> dict[str, object]:
    from shared.dedup.detect import DedupConfig, DedupInput, find_duplicates
    from shared.dedup.groups import ItemFacts

    x, orig, copies = make_vectors(n, dim, 0.05, seed)
    ids = np.arange(1, n + 1, dtype=np.int64)
    data = DedupInput(item_ids=ids, sha256=[f"{k:x}" for k in range(n)], phash=[None] * n,
                      categories=["dress"] * n, facts=[ItemFacts(int(i)) for i in ids], vectors=x,
                      vector_rows=np.arange(n, dtype=np.int64))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    result = find_duplicates(data, DedupConfig(threshold=threshold))
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    group_of = np.full(n + 1, -1)
    for g, grp in enumerate(result.groups):
        group_of[grp.item_ids] = g
    found = (group_of[orig + 1] >= 0) & (group_of[orig + 1] == group_of[copies + 1])
    return {
        "n": n, "dim": dim, "seconds": seconds, "cpu_seconds": cpu_seconds, "pairs": result.stats.near_pairs, "groups": result.stats.groups,
        "planted": int(len(copies)), "planted_found": float(found.mean()),
        "input_mb": x.nbytes / 2**20, "traced_peak_mb": traced_peak / 2**20,
        "rss_before_mb": rss_before / 1024, "rss_peak_mb": rss_peak / 1024,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,50000,100000")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.dim, args.threshold, args.seed)))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--dim", str(args.dim),
                              "--threshold", str(args.threshold), "--seed", str(args.seed)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {n}: {rows[-1]['seconds']:.1f} s wall, {rows[-1]['cpu_seconds']:.1f} s CPU", file=sys.stderr)
    import numpy

    load = os.getloadavg()
    print("## Dedup scale: one category, blockwise cosine pairs + grouping\n")
    print(f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"- machine: {cpu_name()}, {os.cpu_count()} CPUs visible, load average {load[0]:.1f} "
          f"(shared with other work); python {platform.python_version()}, numpy {numpy.__version__}")
    print(f"- command: `python {' '.join(sys.argv)}`")
    print(f"- data: {args.dim}-d float32 features, 5% planted near-duplicates, threshold {args.threshold}, "
          "blocks of 2048 x 8192\n")
    print("| items | wall time (s) | CPU time (s, all threads) | pairs | groups | planted copies found | input (MB) "
          "| dedup's own peak (MB, tracemalloc) | process peak RSS (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['pairs']:,} | {r['groups']:,} | {r['planted_found']:.3f} "
              f"| {r['input_mb']:.0f} | {r['traced_peak_mb']:.0f} | {r['rss_peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
