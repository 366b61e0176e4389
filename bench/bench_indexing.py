"""Indexing pipeline throughput against the bare model forward, and with 1 or 2 processes.

The pipeline is ``shared.indexing.index_catalogue`` end to end: scan (sha256, header probe,
perceptual hash), read JPEG, decode, preprocess, embed, write vectors and predicted
categories to a fresh SQLite database (a temporary FIR home, migrated). The bare forward is
``Embedder.embed_tensor`` on tensors decoded beforehand, at the same batch size, precision
and image size. Rounds alternate (bare, pipeline, bare, pipeline, ...) so load on the machine
hits both; the table gives the median of each and the median per-round ratio.

``--workers 1,2``: the same catalogue indexed by N processes at once, each its own half
(its own catalogue in the same SQLite database) with 2/N torch threads; aggregate images/s.

    python -m bench.bench_indexing [--images 256] [--size 160] [--batch 16] [--precision fp32]
        [--rounds 3] [--workers 1,2] [--source real|generated]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench._common import machine_header

CATS = ("dress", "shirt", "toptee")


def make_catalogue(root: Path, images: int, source: str) -> str:
    """``root/train/<category>/*.jpg``: real photos (symlinks) when present, else generated."""
    from shared.config import Settings

    real = Settings().shared_data / "clothing_dataset_small" / "train"
    if source == "real" and real.is_dir():
        cats = sorted(p.name for p in real.iterdir() if p.is_dir())
        per = -(-images // len(cats))
        n = 0
        for cat in cats:
            folder = root / "train" / cat
            folder.mkdir(parents=True, exist_ok=True)
            for p in sorted((real / cat).glob("*.jpg"))[:per]:
                if n < images:
                    (folder / p.name).symlink_to(p)
                    n += 1
        return f"{n} real photos (clothing_dataset_small/train, {len(cats)} categories, ~500 px JPEGs)"
    from shared.data.synthetic import generate_catalogue

    generate_catalogue(root, per_category={"train": -(-images // 3)}, size=224)
    return f"{3 * -(-images // 3)} generated 224 px JPEGs"


def build_embedder(backbone: str, size: int, precision: str) -> Any:
    from shared.vision.backbone import build_network
    from shared.vision.embed import Embedder

    net, _ = build_network(backbone, "none", num_classes=3)
    return Embedder(net, backbone, size, device="cpu", precision=precision)


def fresh_home(parent: Path, name: str, batch: int, workers: int, precision: str) -> Any:
    from shared.config import Settings
    from shared.db.migrate import upgrade

    home = parent / name
    settings = Settings(home=home, loader_workers=workers, batch_size=batch, precision=precision)  # type: ignore[arg-type]
    upgrade(settings.resolved_database_url())
    return settings


def register(settings: Any, catalogue: Path, name: str) -> tuple[int, int]:
    from shared.db import services
    from shared.db.session import session_scope

    with session_scope(settings) as session:
        mv = services.register_model_version(
            session, backbone="resnet50", weights_source="none", labels=list(CATS), model_id="0" * 16,
            checkpoint_path="/dev/null", checkpoint_sha256="0" * 64)
        cat = services.create_catalogue(session, name, source_kind="folder", source_path=str(catalogue),
                                        root=str(catalogue))
    return cat.id, mv.id


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (loader workers), user + system."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bare_forward(embedder: Any, tensors: torch.Tensor, batch: int) -> tuple[float, float]:
    """Images/s of wall time, and images per CPU-second."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    for lo in range(0, len(tensors), batch):
        embedder.embed_tensor(tensors[lo : lo + batch])
    return len(tensors) / (time.perf_counter() - t0), len(tensors) / (cpu_seconds() - c0)


def pipeline(embedder: Any, settings: Any, catalogue: Path, name: str) -> tuple[float, float, int]:
    """Images/s of wall time, images per CPU-second, images embedded."""
    from shared.indexing import index_catalogue

    cat_id, mv_id = register(settings, catalogue, name)
    c0, t0 = cpu_seconds(), time.perf_counter()
    report = index_catalogue(settings, cat_id, mv_id, embedder, None)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return report.embedded / wall, report.embedded / cpu, report.embedded


def _worker(args: tuple[Any, ...], results: Any) -> None:
    """One indexing process: build the model, wait for the others, index its half; puts its seconds."""
    backbone, size, precision, threads, settings, catalogue, name, barrier = args
    torch.set_num_threads(threads)
    embedder = build_embedder(backbone, size, precision)
    from shared.indexing import index_catalogue

    cat_id, mv_id = register(settings, catalogue, name)
    barrier.wait()
    t0 = time.perf_counter()
    index_catalogue(settings, cat_id, mv_id, embedder, None)
    results.put(time.perf_counter() - t0)


def split_catalogue(root: Path, parts: int, dest: Path) -> list[Path]:
    files = sorted(root.rglob("*.jpg"))
    out = []
    for p in range(parts):
        part = dest / f"part{p}"
        for f in files[p::parts]:
            target = part / f.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f.resolve())
        out.append(part)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="", help="e.g. 1,2: also index with that many processes at once")
    ap.add_argument("--source", default="real", choices=["real", "generated"])
    args = ap.parse_args()
    print(machine_header(f"Indexing pipeline vs bare forward: {args.backbone} at {args.size}px"))
    print(f"- load average at start: {os.getloadavg()[0]:.2f}")

    from shared.imaging import load_image
    from shared.vision.preprocess import make_transform

    with tempfile.TemporaryDirectory(prefix="fir-bench-index-") as tmp:
        tmpdir = Path(tmp)
        catalogue = tmpdir / "catalogue"
        what = make_catalogue(catalogue, args.images, args.source)
        embedder = build_embedder(args.backbone, args.size, args.precision)
        print(f"- catalogue: {what}; batch {args.batch}; {embedder.describe()}; "
              f"loader workers {args.loader_workers}; torch threads {torch.get_num_threads()}\n", flush=True)
        transform = make_transform(args.backbone, args.size)
        tensors = torch.stack([transform(load_image(p)) for p in sorted(catalogue.rglob("*.jpg"))])
        embedder.embed_tensor(tensors[: args.batch])  # warm-up
        bare, piped, ratios, cpu_ratios = [], [], [], []
        for r in range(args.rounds):
            b, b_cpu = bare_forward(embedder, tensors, args.batch)
            settings = fresh_home(tmpdir, f"home{r}", args.batch, args.loader_workers, args.precision)
            p, p_cpu, embedded = pipeline(embedder, settings, catalogue, f"cat{r}")
            assert embedded == len(tensors), (embedded, len(tensors))
            bare.append(b)
            piped.append(p)
            ratios.append(p / b)
            cpu_ratios.append(p_cpu / b_cpu)
            print(f"round {r + 1}: bare {b:.1f} img/s ({b_cpu:.2f} img/CPU-s), pipeline {p:.1f} img/s "
                  f"({p_cpu:.2f} img/CPU-s); wall ratio {p / b:.2f}, CPU ratio {p_cpu / b_cpu:.2f}; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
        print()
        print("| images | size | batch | precision | bare forward img/s | pipeline img/s "
              "| pipeline / bare, wall (median; rounds) | pipeline / bare, per CPU-second (median; rounds) |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {len(tensors)} | {args.size} | {args.batch} | {embedder.precision} | {statistics.median(bare):.1f} "
              f"| {statistics.median(piped):.1f} | {statistics.median(ratios):.2f} "
              f"({', '.join(f'{x:.2f}' for x in ratios)}) | {statistics.median(cpu_ratios):.2f} "
              f"({', '.join(f'{x:.2f}' for x in cpu_ratios)}) |")
        print("\nper CPU-second: images per second of CPU time (this process + its loader workers); on a "
              "loaded machine it says what the wall-time ratio would be on an idle one, where the model's "
              "threads fill both cores and every CPU-second of decoding or writing is taken from them.")

        if args.workers:
            print("\n| processes | torch threads each | images | wall s | aggregate img/s | vs 1 process |")
            print("|---|---|---|---|---|---|")
            base = None
            ctx = mp.get_context("spawn")
            for nproc in [int(w) for w in args.workers.split(",")]:
                parts = split_catalogue(catalogue, nproc, tmpdir / f"split{nproc}")
                settings = fresh_home(tmpdir, f"procs{nproc}", args.batch, args.loader_workers, args.precision)
                barrier = ctx.Barrier(nproc)
                results = ctx.Queue()
                threads = max(1, torch.get_num_threads() // nproc)
                procs = [ctx.Process(target=_worker, args=((args.backbone, args.size, args.precision, threads,
                                                            settings, part, f"part{i}", barrier), results))
                         for i, part in enumerate(parts)]  # not daemonic: each starts its loader workers
                for proc in procs:
                    proc.start()
                seconds = [results.get(timeout=3600) for _ in procs]
                for proc in procs:
                    proc.join()
                wall = max(seconds)
                rate = len(tensors) / wall
                base = base or rate
                print(f"| {nproc} | {threads} | {len(tensors)} | {wall:.1f} | {rate:.1f} | {rate / base:.2f} |", flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
