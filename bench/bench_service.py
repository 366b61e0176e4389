"""End-to-end query latency through the running service, beside the bare model forward time.

    python -m bench.bench_service [--backend embedded|redis-postgres|both] [--queries 20] [--burst 200]

For each backend it sets up a fresh FIR home (a ResNet50 with random weights at 224 px, its
router, a generated catalogue indexed), starts a real worker and the API (gunicorn), then:
- single queries one after another: submit -> succeeded (the client keeps its connection
  alive and long-polls the job with ``?wait=10``), p50 / p95, and the p50 of each stage: the
  submit request, submitted -> started (broker and claim), the worker (started -> finished),
  finished -> answer received; and, alternately with those, queries answered in one request
  (``wait=10`` on the submit itself: 200 with the finished job);
- a burst of N queries submitted at once: time until all have succeeded, with micro-batching
  (queries waiting together embedded together, FIR_QUERY_BATCH_MAX=16) and without (=1).
The bare forward time is one warm 224 px image through the same model in this process, timed
alternately with the single queries (one forward, one query, ...) while the service idles,
under the workers' OpenMP setting (``GOMP_SPINCOUNT``, :func:`shared.threads.calm_openmp`).
"p50 / forward" divides the two medians; "paired" is the median of each query's latency over
the mean of the forwards timed just before and after it (robust to the VM's speed drifting).
"worker CPU per query" is the worker's processes' CPU time over the single queries, divided
by their number (its forward runs on two threads: about twice the forward's wall time);
"API CPU" the same for the gunicorn processes, and "database + broker CPU" for every
``postgres`` and ``redis-server`` process on the machine (with the embedded backend, what
they spend idle).
``--service-env KEY=VALUE`` sets a variable for the worker and the API only (to compare
settings, or a server from another checkout on ``PYTHONPATH``, against the same client).
``--split-cores`` (a diagnostic, not FIR's deployment on one small machine): the worker and
its forward on the last core with one thread, the API, the client and everything else on the
others, so that the forward no longer evicts the other steps' code and data from their
core's caches; the bare forward is then timed on that core with one thread too. Compare the
fixed cost per query (e2e p50 minus bare forward, ms) with and without it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import requests

from bench._common import machine_header
from shared.threads import calm_openmp

calm_openmp()  # the bare forward below runs under the workers' OpenMP setting
BIN = Path(sys.executable).parent


def sh(*args: str, env: dict[str, str]) -> None:
    subprocess.run([str(BIN / "fir"), *args], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def setup_home(home: Path, env: dict[str, str]) -> Path:
    from shared.data.synthetic import generate_catalogue

    cat = generate_catalogue(home / "catalogue", size=224, per_category={"train": 20, "val": 4, "test": 4})
    sh("db", "upgrade", env=env)
    sh("train", "--dataset", str(cat), "--weights", "none", "--epochs", "0", "--image-size", "224", env=env)
    sh("extract", "--dataset", str(cat), "--splits", "train,val", env=env)
    sh("train-router", "--cv", "2", env=env)
    sh("models", "activate", env=env)
    sh("index", str(cat), "--name", "bench", env=env)
    return cat


def start(env: dict[str, str], port: int, log_dir: Path, pool: str = "prefork",
          worker_core: int | None = None) -> list[subprocess.Popen[bytes]]:
    """The worker and the API; ``worker_core`` (``--split-cores``): the worker alone on that
    core with one thread, the API on the other cores."""
    cmds = [
        [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "-Q", "gpu,cpu", "-c", "1", "-n", "bench@%h",
         "-P", pool],
        [str(BIN / "gunicorn"), "-c", "python:api.gunicorn_conf", "-w", "2", "-b", f"127.0.0.1:{port}",
         "api.wsgi:app"],
    ]
    envs = [env, env]
    if worker_core is not None:
        rest = ",".join(str(c) for c in sorted(os.sched_getaffinity(0) - {worker_core}))
        cmds = [["taskset", "-c", str(worker_core), *cmds[0]], ["taskset", "-c", rest, *cmds[1]]]
        envs[0] = {**env, "OMP_NUM_THREADS": "1"}
    procs = []
    for i, cmd in enumerate(cmds):
        out = open(log_dir / f"proc{i}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, env=envs[i], stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    import signal

    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def wait_ready(base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError("service did not become ready")


STAGES = ("submit", "queue", "work", "answer")


def _cpu_s(match: Callable[[str, list[str]], bool]) -> float:
    """CPU seconds (user + system) used so far by the live processes that ``match`` accepts,
    given each one's name and its /proc stat fields after the name (Linux; 0 elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        head, rest = text.rsplit(")", 1)
        fields = rest.split()  # state ppid pgrp ... utime(11) stime(12)
        if match(head[head.find("(") + 1 :], fields):
            total += int(fields[11]) + int(fields[12])
    return total / tick


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by the live processes of a process group."""
    return _cpu_s(lambda _, fields: int(fields[2]) == pgid)


def named_cpu_s(names: tuple[str, ...]) -> float:
    """CPU seconds used so far by the live processes with one of these names."""
    return _cpu_s(lambda name, _: name in names)


SERVERS = ("postgres", "redis-server")

_client = threading.local()


def http() -> requests.Session:
    """This thread's HTTP session: connections kept alive, as a client of a polled API keeps them."""
    if not hasattr(_client, "session"):
        _client.session = requests.Session()
    return _client.session  # type: ignore[no-any-return]


def one_query(base: str, image: bytes, stages: list[dict[str, float]] | None = None,
              one_request: bool = False) -> float:
    """One query's latency (ms); with ``stages``, appends where the time went (ms): the submit
    request, submitted -> started (broker and claim), started -> finished (the worker), and
    finished -> answer received (the long poll noticing it and the response).
    ``one_request``: the submit itself waits for the answer (``wait=10``, a 200 with the job)."""
    wall0, t0 = time.time(), time.perf_counter()
    form = {"catalogue": "bench", "k": "10", **({"wait": "10"} if one_request else {})}
    r = http().post(f"{base}/api/v1/queries", data=form, files={"file": ("q.jpg", image, "image/jpeg")}, timeout=60)
    r.raise_for_status()
    t_submitted = time.perf_counter()
    job_id = r.json()["job_id"]
    if r.status_code == 200:  # answered in the submit's response
        if r.json()["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} {r.json()['status']}")
        return (t_submitted - t0) * 1000
    while True:  # long polling: the API answers as soon as the job has finished
        job = http().get(f"{base}/api/v1/jobs/{job_id}", params={"wait": 10}, timeout=60).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}")
            t_done = time.perf_counter()
            if stages is not None:
                # the job's timestamps on this run's perf_counter clock
                started, finished = (t0 + datetime.fromisoformat(job[k]).timestamp() - wall0
                                     for k in ("started_at", "finished_at"))
                stages.append({"submit": (t_submitted - t0) * 1000, "queue": (started - t_submitted) * 1000,
                               "work": (finished - started) * 1000, "answer": (t_done - finished) * 1000})
            return (t_done - t0) * 1000


def burst(base: str, image: bytes, n: int) -> float:
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: one_query(base, image), range(n)))
    return time.perf_counter() - t0


def bare_forward(home: Path, cores: set[int] | None = None) -> Callable[[], float]:
    """One warm single-image forward of the service's model in this process, timed (ms);
    ``cores``: run it on these cores only (with one thread per core), the rest of this process
    on the others."""
    import torch

    from shared.imaging import load_image
    from shared.pipeline import embedder_for
    from shared.vision.modelfile import load_model

    model = load_model(next((home / "models").glob("*.pt")))
    emb = embedder_for(model, "cpu", "fp32")
    img = load_image(next((home / "catalogue" / "test" / "dress").glob("*.jpg")))
    others = (os.sched_getaffinity(0) - cores) if cores else set()

    def timed() -> float:
        if cores:
            os.sched_setaffinity(0, cores)
        t0 = time.perf_counter()
        emb.embed_images([img])
        took = (time.perf_counter() - t0) * 1000
        if cores:
            os.sched_setaffinity(0, others)
        return took

    if cores:
        torch.set_num_threads(len(cores))
        os.sched_setaffinity(0, others)
    for _ in range(3):
        timed()

    return timed


def run_backend(name: str, queries: int, burst_n: int, pool: str = "prefork",
                service_env: dict[str, str] | None = None, split_cores: bool = False) -> list[str]:
    import socket

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIR_")}
        env.update(FIR_HOME=str(home), FIR_LOADER_WORKERS="0", FIR_WORKER_HEARTBEAT_S="2")
        if name == "redis-postgres":
            from sqlalchemy import create_engine, text

            db = f"fir_bench_{os.getpid()}"
            admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
                c.execute(text(f'CREATE DATABASE "{db}"'))
            env.update(FIR_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
                       FIR_BROKER_URL="redis://127.0.0.1:6379/12")
            import redis

            redis.Redis.from_url("redis://127.0.0.1:6379/12").flushdb()
        cat = setup_home(home, env)
        image = next((cat / "test" / "shirt").glob("*.jpg")).read_bytes()
        all_cores = os.sched_getaffinity(0)
        worker_core = max(all_cores) if split_cores else None
        forward_once = bare_forward(home, None if worker_core is None else {worker_core})
        for batch_max in (16, 1):
            env["FIR_QUERY_BATCH_MAX"] = str(batch_max)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            base = f"http://127.0.0.1:{port}"
            procs = start({**env, **(service_env or {})}, port, home, pool, worker_core)
            try:
                wait_ready(base)
                for _ in range(3):
                    one_query(base, image)  # warm-up: model loaded, index in memory
                # each query beside one bare forward, alternately: the ratio compares the two over
                # the same minutes (this VM's speed drifts by 10-20 % between runs)
                stages: list[dict[str, float]] = []
                lat, lat_one, forwards = [], [], []
                cpu0 = group_cpu_s(procs[0].pid)  # the worker (its own session: pgid = pid)
                api0, servers0 = group_cpu_s(procs[1].pid), named_cpu_s(SERVERS)
                for _ in range(queries):
                    forwards.append(forward_once())
                    lat.append(one_query(base, image, stages))
                    forwards.append(forward_once())
                    lat_one.append(one_query(base, image, one_request=True))
                # each query against the forwards timed just before and after it: robust to the
                # VM's speed drifting during the run
                worker_cpu = (group_cpu_s(procs[0].pid) - cpu0) * 1000 / (2 * queries)
                api_cpu = (group_cpu_s(procs[1].pid) - api0) * 1000 / (2 * queries)
                servers_cpu = (named_cpu_s(SERVERS) - servers0) * 1000 / (2 * queries)
                paired = statistics.median(q / ((forwards[2 * i] + forwards[2 * i + 1]) / 2)
                                           for i, q in enumerate(lat))
                lat.sort()
                one = statistics.median(lat_one)
                forward = statistics.median(forwards)
                split = " / ".join(f"{statistics.median(st[k] for st in stages):.1f}" for k in STAGES)
                p50 = statistics.median(lat)
                p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
                total = burst(base, image, burst_n)
            finally:
                stop(procs)
            label = f"{name} (split cores)" if split_cores else name
            rows.append(f"| {label} | {batch_max} | {forward:.0f} | {p50:.0f} | {p95:.0f} | {p50 / forward:.2f}x "
                        f"| {p50 - forward:.0f} "
                        f"| {paired:.2f}x | {worker_cpu:.0f} | {api_cpu:.1f} | {servers_cpu:.1f} "
                        f"| {split} | {one:.0f} | {one / forward:.2f}x | {total:.1f} | {burst_n / total:.1f} |")
        if worker_core is not None:
            os.sched_setaffinity(0, all_cores)  # the bare forward's pinning ends with the backend
        if name == "redis-postgres":
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="both", choices=["embedded", "redis-postgres", "both"])
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--pool", default="prefork", choices=["prefork", "solo"],
                    help="the worker's Celery pool (FIR runs prefork: Celery's time limits need it)")
    ap.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable for the worker and the API only (repeatable)")
    ap.add_argument("--split-cores", action="store_true",
                    help="diagnostic: the worker alone on the last core (one thread), all else on the others")
    args = ap.parse_args()
    service_env = dict(kv.split("=", 1) for kv in args.service_env)
    print(machine_header("End-to-end query latency (HTTP submit -> result ready)"))
    print(f"- GOMP_SPINCOUNT {os.environ.get('GOMP_SPINCOUNT', 'unset')} (this process and the worker)"
          + (f"; the services' own environment: {' '.join(args.service_env)}" if args.service_env else ""))
    print("| backend | query batch max | bare forward (ms) | e2e p50 (ms) | e2e p95 (ms) | p50 / forward "
          "| e2e p50 - forward (ms) | paired: p50 of query / its forwards | worker CPU per query (ms) "
          "| API CPU per query (ms) "
          "| database + broker CPU per query (ms) "
          f"| p50 {' / '.join(STAGES)} (ms) | one request: p50 (ms) | one request / forward "
          f"| {args.burst} at once (s) | queries/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    backends = ["embedded", "redis-postgres"] if args.backend == "both" else [args.backend]
    for b in backends:
        for row in run_backend(b, args.queries, args.burst, args.pool, service_env, args.split_cores):
            print(row, flush=True)


if __name__ == "__main__":
    main()
