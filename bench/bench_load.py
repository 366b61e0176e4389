"""Bounded load: N queries from concurrent clients against the running service on loopback.

    python -m bench.bench_load [--queries 1000] [--clients 16] [--base http://127.0.0.1:8000 --catalogue NAME]

Without ``--base`` it sets up a fresh embedded-default home (SQLite, filesystem broker; a
ResNet50 with random weights at --image-size px, default 64, its router, a generated
catalogue indexed), starts a worker and the API (gunicorn) and loads that. Each client
submits a query, polls its job until it is finished, and submits the next. Prints p50 / p95 /
p99 of the end-to-end latency (submit -> succeeded) and the throughput, and exits non-zero
unless every query was accepted and every accepted job succeeded (no errors, none lost).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests


@dataclass
class LoadReport:
    submitted: int = 0
    accepted: int = 0
    succeeded: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def lost(self) -> int:
        return self.accepted - self.succeeded

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def table(self, clients: int) -> str:
        return "\n".join([
            "| queries | clients | accepted | succeeded | errors | lost | p50 ms | p95 ms | p99 ms | queries/s |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {self.submitted} | {clients} | {self.accepted} | {self.succeeded} | {len(self.errors)} | {self.lost} "
            f"| {self.percentile(50):.0f} | {self.percentile(95):.0f} | {self.percentile(99):.0f} "
            f"| {self.submitted / self.wall_s:.1f} |",
        ])


def _images(n: int, size: int = 96) -> list[bytes]:
    from PIL import Image

    out = []
    rng = np.random.default_rng(0)
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def run_load(base: str, catalogue: str, queries: int, clients: int, timeout_s: float | None = None,
             headers: dict[str, str] | None = None) -> LoadReport:
    report = LoadReport()
    lock = threading.Lock()
    images = _images(16)
    deadline = time.monotonic() + (timeout_s if timeout_s is not None else max(600.0, 3.0 * queries))

    def one(n: int) -> None:
        session = requests.Session()
        t0 = time.perf_counter()
        try:
            resp = session.post(f"{base}/api/v1/queries", data={"catalogue": catalogue, "k": "10"},
                                files={"file": ("q.jpg", images[n % len(images)], "image/jpeg")},
                                headers=headers, timeout=60)
            with lock:
                report.submitted += 1
            if resp.status_code != 202:
                raise RuntimeError(f"submit answered {resp.status_code}: {resp.text[:200]}")
            with lock:
                report.accepted += 1
            job_url = f"{base}/api/v1/jobs/{resp.json()['job_id']}"
            while time.monotonic() < deadline:
                job = session.get(job_url, headers=headers, timeout=60).json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    if job["status"] != "succeeded":
                        raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
                    with lock:
                        report.succeeded += 1
                        report.latencies_ms.append((time.perf_counter() - t0) * 1000)
                    return
                time.sleep(0.02)
            raise RuntimeError(f"{job_url} not finished before the deadline")
        except Exception as exc:  # noqa: BLE001 - every error is counted and reported
            with lock:
                report.errors.append(f"{type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(queries)))
    report.wall_s = time.perf_counter() - t0
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--base", default=None, help="a running FIR (default: start one in a temporary home)")
    parser.add_argument("--catalogue", default="bench")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--image-size", type=int, default=64, help="model input size of the started service")
    args = parser.parse_args()
    headers = {"X-API-Key": args.api_key} if args.api_key else None
    from bench._common import machine_header

    print(machine_header("FIR load: concurrent queries against the running service"))
    if args.base:
        report = run_load(args.base, args.catalogue, args.queries, args.clients, headers=headers)
    else:
        import socket

        from bench.bench_service import sh, start, stop, wait_ready
        from shared.data.synthetic import generate_catalogue

        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            env = {k: v for k, v in os.environ.items() if not k.startswith("FIR_")}
            env.update(FIR_HOME=str(home), FIR_LOADER_WORKERS="0", FIR_WORKER_HEARTBEAT_S="2")
            # a small model (random weights, --image-size px): the load is on the service
            cat = generate_catalogue(home / "catalogue", size=args.image_size,
                                     per_category={"train": 20, "val": 4, "test": 4})
            size = str(args.image_size)
            sh("db", "upgrade", env=env)
            sh("train", "--dataset", str(cat), "--weights", "none", "--epochs", "0", "--image-size", size, env=env)
            sh("extract", "--dataset", str(cat), "--splits", "train,val", env=env)
            sh("train-router", "--cv", "2", env=env)
            sh("models", "activate", env=env)
            sh("index", str(cat), "--name", args.catalogue, env=env)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            procs = start(env, port, home)
            try:
                base = f"http://127.0.0.1:{port}"
                wait_ready(base)
                print(f"service: embedded default (SQLite, filesystem broker) at {base}, 1 worker, 2 API workers, "
                      f"ResNet50 at {args.image_size} px")
                report = run_load(base, args.catalogue, args.queries, args.clients, headers=headers)
            finally:
                stop(procs)
    print(report.table(args.clients))
    for err in report.errors[:10]:
        print("error:", err)
    if report.errors or report.lost or report.accepted != args.queries:
        sys.exit(1)


if __name__ == "__main__":
    main()
