"""The first query after a worker starts, with and without the worker's warm-up.

    python -m bench.bench_first_query [--rounds 3] [--settle 10] [--extra-items 0]

Sets up a FIR home as bench_service does (ResNet50 with random weights at 224 px, a generated
catalogue indexed; ``--extra-items N`` adds N random vectors to the catalogue's index, so that
loading it costs what a large catalogue costs), then per round and per mode starts the
embedded service (SQLite, filesystem broker, one prefork worker), waits until it is ready and
``--settle`` seconds more (the time a worker has between a deploy and its first query), and
times the first query and the median of the next five. ``FIR_WORKER_WARM_INDEXES=0``: the first
query loads the catalogue and runs the model's first forward itself; ``1`` (the default): the
worker did both in the background after it started.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import machine_header
from bench.bench_service import STAGES, one_query, setup_home, start, stop, wait_ready


def add_items(env: dict[str, str], n: int) -> None:
    """``n`` more items with random vectors in the ``bench`` catalogue's index (active model)."""
    import hashlib

    from shared.config import Settings
    from shared.db import services
    from shared.db.catalogues import ScannedItem
    from shared.db.session import session_scope

    settings = Settings(home=Path(env["FIR_HOME"]))
    rng = np.random.default_rng(0)
    with session_scope(settings) as session:
        cat = services.get_catalogue_by_name(session, "bench")
        version = services.get_active_model_version(session)
        assert version is not None
        _, vectors, _ = services.load_vectors(session, cat.id, version.id)
        dim = vectors.shape[1]
    for lo in range(0, n, 5000):
        with session_scope(settings) as session:
            scanned = [ScannedItem(key=f"extra/{i:07d}.jpg", sha256=hashlib.sha256(f"x{i}".encode()).hexdigest(),
                                   given_category=("dress", "shirt", "toptee")[i % 3], location="")
                       for i in range(lo, min(n, lo + 5000))]
            ids = services.upsert_items(session, cat.id, scanned).needs_embedding
            services.write_embeddings(session, version.id, ids, rng.standard_normal((len(ids), dim), dtype=np.float32))
    with session_scope(settings) as session:
        services.bump_index_generation(session, cat.id, version.id)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds between ready and the first query")
    ap.add_argument("--extra-items", type=int, default=0)
    ap.add_argument("--modes", default="0,1", help="FIR_WORKER_WARM_INDEXES values to run (0 off, 1 on)")
    args = ap.parse_args()
    print(machine_header("The first query after a worker starts"))
    results: dict[str, list[tuple[float, float]]] = {"0": [], "1": []}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIR_")}
        env.update(FIR_HOME=str(home), FIR_LOADER_WORKERS="0", FIR_WORKER_HEARTBEAT_S="2")
        cat = setup_home(home, env)
        if args.extra_items:
            add_items(env, args.extra_items)
        image = next((cat / "test" / "shirt").glob("*.jpg")).read_bytes()
        for _ in range(args.rounds):
            for warm in args.modes.split(","):
                env["FIR_WORKER_WARM_INDEXES"] = warm
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                base = f"http://127.0.0.1:{port}"
                procs = start(env, port, home)
                try:
                    wait_ready(base)
                    time.sleep(args.settle)
                    stages: list[dict[str, float]] = []
                    first = one_query(base, image, stages)
                    rest = statistics.median(one_query(base, image, stages) for _ in range(5))
                    print(f"warm-up {warm}: first query {first:.0f} ms, stages (submit/queue/work/answer ms) "
                          + "; ".join(" / ".join(f"{st[k]:.0f}" for k in STAGES) for st in stages[:3]), flush=True)
                finally:
                    stop(procs)
                results[warm].append((first, rest))
    print(f"\n{args.rounds} rounds, catalogue of {28 + args.extra_items} items; settle {args.settle:.0f} s\n")
    print("| warm-up | first query ms (each round) | first query p50 ms | next five p50 ms | first / next |")
    print("|---|---|---|---|---|")
    for warm, label in (("0", "off"), ("1", "on (default)")):
        if not results[warm]:
            continue
        firsts = [f for f, _ in results[warm]]
        rest = statistics.median(r for _, r in results[warm])
        print(f"| {label} | {', '.join(f'{f:.0f}' for f in firsts)} | {statistics.median(firsts):.0f} "
              f"| {rest:.0f} | {statistics.median(firsts) / rest:.1f}x |")


if __name__ == "__main__":
    main()
