"""GPU embedding and query benchmark: one prepared run, about 5-8 minutes on one H100.

Sections (each stops early when the time budget runs out; the tables print last):

1. Bare forward throughput of the backbone on tensors already on the device: fp32, fp32
   channels_last, fp16 autocast channels_last, bf16 autocast channels_last, over a batch-size
   sweep (CUDA synchronised; images/s).
2. The loading pipeline (FIR's ``Embedder.iter_paths``: decode + preprocess in DataLoader
   worker processes, pinned memory, non-blocking copies) over generated JPEGs on local disk,
   for several loader worker counts, at the best mode and batch of section 1; the ratio to the
   bare forward shows whether decoding keeps the GPU busy.
3. Query micro-batching: m single-image queries answered together (embed on the device,
   FIR's router fast path, top-10 over a 77,000 x 2048 catalogue: FIR's CPU index, and a
   torch fp16 matrix product on the device): latency per batch and per query for m = 1..32.

    python -m bench.gpu                  # the full run (a GPU machine)
    python -m bench.gpu --smoke          # tiny sizes, runs on a CPU in seconds (CI)
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._common import machine_header

Table = list[str]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn: Callable[[], Any], device: torch.device, images: int, seconds: float) -> float:
    """Images/s of ``fn`` (which handles ``images`` images) over about ``seconds``."""
    fn()
    sync(device)
    count, t0 = 0, time.perf_counter()
    while True:
        fn()
        count += images
        if time.perf_counter() - t0 >= seconds:
            break
    sync(device)
    return count / (time.perf_counter() - t0)


def _draw(job: tuple[str, int, int]) -> None:
    from shared.data.synthetic import CATEGORIES, draw_garment

    path, i, size = job
    draw_garment(CATEGORIES[i % 3], size, seed=i).save(path, quality=90)


def make_images(folder: Path, n: int, size: int, procs: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"{i:05d}.jpg"), i, size) for i in range(n)]
    if procs > 1:
        with mp.get_context("fork").Pool(procs) as pool:
            pool.map(_draw, jobs, chunksize=16)
    else:
        for job in jobs:
            _draw(job)
    return [Path(p) for p, _, _ in jobs]


def main() -> None:  # noqa: PLR0915 - one linear script
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; runs on a CPU")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="32,64,128,256")
    ap.add_argument("--workers", default="0,2,4,8,12")
    ap.add_argument("--images", type=int, default=3072, help="JPEGs for the loader section")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    ap.add_argument("--catalogue", type=int, default=77_000)
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; later sections are skipped past it")
    args = ap.parse_args()
    if args.smoke:
        args.size, args.batches, args.workers = 32, "1,2", "0,1"
        args.images, args.seconds, args.catalogue, args.budget = 6, 0.0, 2_000, 1e9
    start = time.perf_counter()
    print(machine_header("GPU embedding, loading and query micro-batching" + (" (smoke)" if args.smoke else "")))
    print(f"- load average at start: {os.getloadavg()[0]:.2f}", flush=True)

    from shared.search.index import ShardedIndex
    from shared.vision.backbone import build_network
    from shared.vision.embed import Embedder, pick_device
    from shared.vision.router import Router

    device = pick_device("auto")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    net, used = build_network(args.backbone, "none", num_classes=3)
    batches = [int(b) for b in args.batches.split(",")]
    modes = [("fp32", "fp32", False), ("fp32 channels_last", "fp32", True)]
    modes += [("fp16 autocast channels_last", "fp16", True)] if cuda else []
    modes += [("bf16 autocast channels_last", "bf16", True)]
    embedders = {name: Embedder(net, args.backbone, args.size, device=str(device), precision=p, channels_last=cl)
                 for name, p, cl in modes}
    tables: list[tuple[str, Table]] = []

    def left() -> float:
        return float(args.budget - (time.perf_counter() - start))

    # 1. bare forward
    speed: dict[tuple[str, int], float] = {}
    for b in batches:
        x = torch.randn(b, 3, args.size, args.size, device=device)
        for name, emb in embedders.items():
            if left() < 0:
                break
            try:
                speed[(name, b)] = rate(functools.partial(emb.embed_tensor, x), device, b, args.seconds)
            except torch.OutOfMemoryError:
                speed[(name, b)] = float("nan")
        print(f"forward batch {b} done ({time.perf_counter() - start:.0f} s)", flush=True)
    rows = ["| mode | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
    for name in embedders:
        rows.append(f"| {name} | " + " | ".join(f"{speed.get((name, b), float('nan')):.0f}" for b in batches) + " |")
    tables.append((f"Bare forward, {args.backbone} at {args.size}px, images/s ({used})", rows))
    done = {k: v for k, v in speed.items() if v == v}
    best_mode, best_batch = max(done, key=lambda k: done[k]) if done else (modes[0][0], batches[0])
    best = embedders[best_mode]

    # 2. loader workers
    rows = ["| loader workers | pipeline images/s | vs bare forward |", "|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="fir-gpu-") as tmp:
        if left() > 30 or args.smoke:
            t0 = time.perf_counter()
            paths = make_images(Path(tmp), args.images, 64 if args.smoke else 400, max(1, (os.cpu_count() or 1)))
            print(f"{len(paths)} JPEGs written in {time.perf_counter() - t0:.0f} s", flush=True)
            for w in [int(v) for v in args.workers.split(",") if int(v) <= (os.cpu_count() or 1)]:
                if left() < 0:
                    break
                list(best.iter_paths(paths[: best_batch * 2], batch_size=best_batch, workers=w))  # warm-up
                sync(device)
                t0 = time.perf_counter()
                n = sum(len(part.ok) for part in best.iter_paths(paths, batch_size=best_batch, workers=w))
                sync(device)
                r = n / (time.perf_counter() - t0)
                rows.append(f"| {w} | {r:.0f} | {r / done.get((best_mode, best_batch), r):.2f} |")
                print(f"loader workers {w}: {r:.0f} img/s", flush=True)
    tables.append((f"Loading pipeline (Embedder.iter_paths, {best_mode}, batch {best_batch}, "
                   f"{args.images} JPEGs of {64 if args.smoke else 400}px, pinned memory: {cuda})", rows))

    # 3. query micro-batching
    rows = ["| queries per batch | embed ms | router ms | CPU index top-10 ms | device fp16 top-10 ms "
            "| total ms per batch | ms per query |", "|---|---|---|---|---|---|---|"]
    if left() > 20 or args.smoke:
        rng = np.random.default_rng(0)
        d = net.feature_dim
        cats = [("dress", "shirt", "toptee")[i % 3] for i in range(args.catalogue)]
        vectors = rng.standard_normal((args.catalogue, d), dtype=np.float32)
        index = ShardedIndex(vectors, cats)
        train = rng.standard_normal((600, d), dtype=np.float32) + np.repeat(np.eye(3, d, dtype=np.float32) * 3, 200, 0)
        router = Router.fit(train, [c for c in ("dress", "shirt", "toptee") for _ in range(200)], "0" * 16,
                            args.backbone, cv=0)
        base = torch.from_numpy(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        base = base.to(device, torch.float16 if cuda else torch.float32)
        emb = embedders["fp16 autocast channels_last" if cuda else "bf16 autocast channels_last"]
        for m in (1, 2, 4, 8, 16, 32) if not args.smoke else (1, 2):
            if left() < 0:
                break
            x = torch.randn(m, 3, args.size, args.size)
            times: dict[str, list[float]] = {"embed": [], "router": [], "cpu": [], "dev": []}
            for _ in range(3 if args.smoke else 20):
                t0 = time.perf_counter()
                feats = emb.embed_tensor(x.pin_memory() if cuda else x)
                t1 = time.perf_counter()
                _, proba = router.route(feats)
                t2 = time.perf_counter()
                index.search(feats, 10, [(router.labels[int(i)],) for i in proba.argmax(1)])
                t3 = time.perf_counter()
                q = torch.from_numpy(feats).to(device, base.dtype)
                torch.topk(q @ base.T, 10, dim=1)
                sync(device)
                t4 = time.perf_counter()
                for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    times[key].append(dt * 1000)
            med = {k: float(np.median(v)) for k, v in times.items()}
            total = med["embed"] + med["router"] + med["cpu"]
            rows.append(f"| {m} | {med['embed']:.2f} | {med['router']:.2f} | {med['cpu']:.2f} | {med['dev']:.2f} "
                        f"| {total:.2f} | {total / m:.2f} |")
            print(f"micro-batch {m} done", flush=True)
    tables.append((f"Query micro-batching ({args.catalogue:,} x {net.feature_dim} catalogue, 3 shards; "
                   "total = embed + router + CPU index)", rows))

    print(f"\nfinished in {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f}\n")
    for title, table in tables:
        print(f"## {title}\n")
        print("\n".join(table))
        print()


if __name__ == "__main__":
    main()
