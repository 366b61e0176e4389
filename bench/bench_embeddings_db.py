"""Bulk-write and load embeddings through shared.db on SQLite and PostgreSQL.

Each backend gets a fresh, migrated database (a SQLite file in a temporary folder; a new
PostgreSQL database created beside FIR_TEST_POSTGRES_URL's and dropped afterwards). The bench
creates one catalogue of N items and one model version, then times
``write_embeddings`` (N x D float32, committed) and, after a checkpoint, ``load_vectors``
(into numpy; PostgreSQL also with ``parallel=1``), checks the loaded matrix equals what was
written, and prints a markdown table.

    python bench/bench_embeddings_db.py [--n 100000] [--dim 2048] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.db import migrate  # noqa: E402
from shared.db.services import (  # noqa: E402
    ScannedItem,
    create_catalogue,
    load_vectors,
    register_model_version,
    upsert_items,
    write_embeddings,
)
from shared.db.session import create_fir_engine, session_scope  # noqa: E402

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOADS = 5


@contextmanager
def sqlite_database() -> Iterator[tuple[str, Callable[[], float]]]:
    with tempfile.TemporaryDirectory(prefix="fir-bench-") as folder:
        path = Path(folder) / "bench.db"

        def size_mb() -> float:
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            return sum(f.stat().st_size for f in files if f.exists()) / 1e6

        yield f"sqlite:///{path}", size_mb


@contextmanager
def postgres_database(base_url: str) -> Iterator[tuple[str, Callable[[], float]]]:
    name = f"fir_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)

    def size_mb() -> float:
        engine = create_engine(url)
        with engine.connect() as conn:
            size = conn.execute(text("SELECT pg_total_relation_size('embeddings')")).scalar_one()
        engine.dispose()
        return float(size) / 1e6

    try:
        yield url, size_mb
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_backend(
    url: str, n: int, dim: int, dtype: str, rng: np.random.Generator
) -> dict[str, object]:
    migrate.upgrade(url)
    engine = create_fir_engine(url)
    try:
        with session_scope(engine) as session:
            cat = create_catalogue(session, "bench", source_kind="folder", source_path="/x").id
            scanned = [
                ScannedItem(
                    key=f"img/{i:07d}.jpg",
                    sha256=hashlib.sha256(str(i).encode()).hexdigest(),
                    given_category=("dress", "shirt", "toptee")[i % 3],
                    width=512,
                    height=512,
                    size_bytes=50_000,
                    location=f"store/{i:07d}.jpg",
                )
                for i in range(n)
            ]
            ids = upsert_items(session, cat, scanned).needs_embedding
            digest = hashlib.sha256(b"bench").hexdigest()
            mv = register_model_version(
                session,
                backbone="resnet50",
                weights_source="none",
                labels=["dress", "shirt", "toptee"],
                model_id=digest[:16],
                checkpoint_path="/nowhere/model.pt",
                checkpoint_sha256=digest,
                embedding_dim=dim,
            ).id
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        expected = vectors.astype(dtype).astype(np.float32)

        start = time.perf_counter()
        with session_scope(engine) as session:
            write_embeddings(session, mv, ids, vectors, dtype=dtype)
        insert_s = time.perf_counter() - start
        # Settle before timing loads: statistics, and the insert's dirty pages written out.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("VACUUM ANALYZE embeddings"))
                conn.execute(text("ANALYZE items"))
                with contextlib.suppress(Exception):  # needs superuser or pg_checkpoint
                    conn.execute(text("CHECKPOINT"))
            else:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

        def timed_loads(**kwargs: int) -> list[float]:
            times = []
            for _ in range(LOADS):
                start = time.perf_counter()
                with session_scope(engine) as session:
                    got_ids, got, cats = load_vectors(session, cat, mv, **kwargs)
                times.append(time.perf_counter() - start)
                assert got_ids.tolist() == ids and len(cats) == n
                assert np.array_equal(got, expected), "loaded vectors differ from the written"
                del got
            return times

        loads = {"default": timed_loads()}
        if engine.dialect.name == "postgresql":
            loads["parallel=1"] = timed_loads(parallel=1)
        return {"insert_s": insert_s, "loads": loads}
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("FIR_TEST_POSTGRES_URL", DEFAULT_PG)
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    rows = []
    for backend in args.backends.split(","):
        ctx = sqlite_database() if backend == "sqlite" else postgres_database(args.postgres_url)
        try:
            with ctx as (url, size_mb):
                res = run_backend(url, args.n, args.dim, args.dtype, rng)
                mb = size_mb()
        except Exception as exc:  # report a backend that cannot run, keep the others
            rows.append(f"| {backend} | failed: {type(exc).__name__}: {exc} | | | | | |")
            continue
        loads = res["loads"]
        assert isinstance(loads, dict)
        for label, times in loads.items():
            name = backend if label == "default" else f"{backend} ({label})"
            insert = f"{res['insert_s']:.2f}" if label == "default" else "(same)"
            rows.append(
                f"| {name} | {insert} | {times[0]:.2f} | {statistics.median(times):.2f} | "
                f"{min(times):.2f} | {max(times):.2f} | {mb:.0f} |"
            )

    item_bytes = np.dtype(args.dtype).itemsize
    raw_mb = args.n * args.dim * item_bytes / 1e6
    print(
        f"## Embeddings in the database: {args.n:,} x {args.dim} {args.dtype} "
        f"({raw_mb:.0f} MB of vectors)"
    )
    print()
    print(
        f"- machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"- command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`")
    print()
    print(
        "| backend | insert s (write_embeddings + commit) | load s, first "
        f"| load s, median of {LOADS} | best | worst | MB on disk |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print()
    print(
        "load = load_vectors() into numpy float32 (ids + matrix + categories), checked equal "
        "to what was written. MB on disk: SQLite = database file + WAL (items included); "
        "PostgreSQL = pg_total_relation_size('embeddings') (heap + TOAST + indexes)."
    )


if __name__ == "__main__":
    main()
