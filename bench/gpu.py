"""GPU embedding and query benchmark: one prepared run, about 5-8 minutes on one H100.

Sections (each stops early when the time budget runs out; the tables print last):

1. Bare forward throughput of the backbone on tensors already on the device: fp32, fp32
   channels_last, fp16 autocast channels_last, bf16 autocast channels_last, over a batch-size
   sweep (CUDA synchronised; images/s).
2. The loading pipeline (FIR's ``Embedder.iter_paths``: decode + preprocess in DataLoader
   worker processes, pinned memory, non-blocking copies) over generated JPEGs on local disk,
   for several loader worker counts, at the best mode and batch of section 1, with float32
   crops normalised in the loader or uint8 crops normalised on the device (FIR's GPU
   default); the ratio to the bare forward shows whether decoding keeps the GPU busy. Then
   JPEGs decoded on the device (nvJPEG) for comparison, with the features' cosine to FIR's.
3. Query micro-batching: m single-image queries answered together (embed on the device,
   FIR's router fast path, top-10 over a 77,000 x 2048 catalogue with FIR's host index and
   with FIR's index on the device): latency per batch and per query for m = 1..32.
4. FIR's index on the device at 77,000, 300,000 and 1,000,000 items (fp32 and fp16):
   build time, memory, single-query latency routed and unrouted, recall@10 of fp16.

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


def gpu_decode_rows(emb: Any, paths: list[Path], batch: int, args: argparse.Namespace, forward: float) -> Table:
    """FIR's device decoding (``jpeg_decode="device"``: loader processes read the files,
    nvJPEG decodes the batch, resize and crop on the device) through ``Embedder.iter_paths``:
    throughput, and the features' cosine to FIR's Pillow-decoded ones for the same files.
    bench/bench_decode.py measures it on real photos with pretrained features."""
    from shared.vision.embed import Embedder

    dev = Embedder(emb.net, args.backbone, args.size, device=str(emb.device), precision=emb.precision,
                   channels_last=emb.channels_last, jpeg_decode="device")
    rows: Table = []
    probe = paths[: min(len(paths), 256)]
    cpu = emb.embed_paths(probe, batch_size=batch, workers=4 if not args.smoke else 0, progress=False).vectors
    gpu = dev.embed_paths(probe, batch_size=batch, workers=4 if not args.smoke else 0, progress=False).vectors
    cos = np.sum(l2(cpu) * l2(gpu), axis=1)
    for w in (2, 4) if not args.smoke else (0,):
        list(dev.iter_paths(paths[: batch * 2], batch_size=batch, workers=w))
        sync(emb.device)
        t0 = time.perf_counter()
        n = sum(len(part.ok) for part in dev.iter_paths(paths, batch_size=batch, workers=w))
        sync(emb.device)
        r = n / (time.perf_counter() - t0)
        rows.append(f"| nvJPEG + device resize | {w} | {r:.0f} | {r / forward:.2f} | {cos.min():.5f} / {cos.mean():.5f} |")
        print(f"nvJPEG, {w} readers: {r:.0f} img/s", flush=True)
    return rows


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def device_scale_rows(n: int, d: int, device: torch.device, smoke: bool) -> Table:
    """FIR's ShardedIndex on ``device`` over ``n`` clustered vectors, fp32 and fp16 storage."""
    from shared.search.ann import IndexOptions
    from shared.search.index import ShardedIndex

    gen = torch.Generator(device=device).manual_seed(n)
    centres = torch.randn(max(8, n // 500), d, device=device, generator=gen)
    assign = torch.randint(0, centres.shape[0], (n,), device=device, generator=gen)
    vectors_t = centres[assign] + 0.35 * torch.randn(n, d, device=device, generator=gen)
    vectors = vectors_t.cpu().numpy()
    queries = (vectors_t[torch.randint(0, n, (200,), device=device, generator=gen)]
               + 0.2 * torch.randn(200, d, device=device, generator=gen)).cpu().numpy()
    del vectors_t, centres, assign
    cats = np.asarray(["dress", "shirt", "toptee"], dtype=object)[np.arange(n) % 3].tolist()
    qcat = [(c,) for c in np.asarray(["dress", "shirt", "toptee"])[np.arange(200) % 3].tolist()]
    rows: Table = []
    reference = None
    reps = 5 if smoke else 100
    for storage in ("fp32", "fp16"):
        t0 = time.perf_counter()
        index = ShardedIndex(vectors, cats, options=IndexOptions(device=str(device), storage=storage))
        sync(device)
        build = time.perf_counter() - t0
        found = index.search(queries, 10, qcat)
        if reference is None:
            reference = found.indices
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.indices.tolist(), reference.tolist(),
                                                                   strict=True)])
        lat = {}
        for name, routes in (("routed", qcat), ("unrouted", None)):
            times = []
            for i in range(reps):
                t0 = time.perf_counter()
                index.search(queries[i % 200], 10, None if routes is None else [routes[i % 200]])
                times.append(time.perf_counter() - t0)
            lat[name] = float(np.median(times)) * 1000
        t0 = time.perf_counter()
        for i in range(0, 192 if not smoke else 32, 32):
            index.search(queries[i : i + 32], 10, qcat[i : i + 32])
        batch_ms = (time.perf_counter() - t0) * 1000 / (192 if not smoke else 32)
        rows.append(f"| {n:,} | {storage} | {build:.1f} | {index.nbytes() / 2**20:,.0f} | {lat['routed']:.2f} "
                    f"| {lat['unrouted']:.2f} | {batch_ms:.3f} | {recall:.3f} |")
        del index
    if not smoke and n <= 100_000:  # the device index agrees with the host's exact scan
        host = ShardedIndex(vectors, cats, ann="exact").search(queries[:50], 10, qcat[:50])
        dev = ShardedIndex(vectors, cats, options=IndexOptions(device=str(device))).search(queries[:50], 10, qcat[:50])
        agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(dev.indices.tolist(), host.indices.tolist(),
                                                                   strict=True)])
        rows.append(f"| {n:,} | fp32 on {device} vs host numpy exact | | | | | | {agree:.3f} |")
    return rows


def main() -> None:  # noqa: PLR0915 - one linear script
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; runs on a CPU")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="32,64,128,256")
    ap.add_argument("--workers", default="4,8,12,15")
    ap.add_argument("--images", type=int, default=3072, help="JPEGs for the loader section")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    ap.add_argument("--catalogue", type=int, default=77_000)
    ap.add_argument("--scale", default="77000,300000,1000000", help="catalogue sizes for section 4")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; later sections are skipped past it")
    args = ap.parse_args()
    if args.smoke:
        args.size, args.batches, args.workers = 32, "1,2", "0,1"
        args.images, args.seconds, args.catalogue, args.budget = 6, 0.0, 2_000, 1e9
    start = time.perf_counter()
    print(machine_header("GPU embedding, loading and query micro-batching" + (" (smoke)" if args.smoke else "")))
    print(f"- load average at start: {os.getloadavg()[0]:.2f}", flush=True)

    from shared.search.ann import IndexOptions
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

    # 2. loader workers: float32 crops normalised in the loader, or uint8 crops normalised on
    # the device (FIR's GPU default); then JPEGs decoded on the GPU (nvJPEG), for comparison
    size_px = 64 if args.smoke else 400
    forward = done.get((best_mode, best_batch), float("nan"))
    loaders = {"float32": Embedder(net, args.backbone, args.size, device=str(device), precision=best.precision,
                                   channels_last=best.channels_last, normalise_on_device=False),
               "uint8": Embedder(net, args.backbone, args.size, device=str(device), precision=best.precision,
                                 channels_last=best.channels_last, normalise_on_device=True)}
    rows = ["| loader workers | float32 crops, images/s | uint8 crops, images/s | uint8 / float32 "
            "| uint8 vs bare forward |", "|---|---|---|---|---|"]
    decode_rows = ["| decoding | loader workers | images/s | vs bare forward | cosine to the CPU-decoded feature, "
                   "min / mean |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="fir-gpu-") as tmp:
        if left() > 30 or args.smoke:
            t0 = time.perf_counter()
            paths = make_images(Path(tmp), args.images, size_px, max(1, (os.cpu_count() or 1)))
            print(f"{len(paths)} JPEGs written in {time.perf_counter() - t0:.0f} s", flush=True)
            for w in [int(v) for v in args.workers.split(",") if int(v) <= (os.cpu_count() or 1)]:
                if left() < 0:
                    break
                got = {}
                for kind, emb in loaders.items():
                    list(emb.iter_paths(paths[: best_batch * 2], batch_size=best_batch, workers=w))  # warm-up
                    sync(device)
                    t0 = time.perf_counter()
                    n = sum(len(part.ok) for part in emb.iter_paths(paths, batch_size=best_batch, workers=w))
                    sync(device)
                    got[kind] = n / (time.perf_counter() - t0)
                rows.append(f"| {w} | {got['float32']:.0f} | {got['uint8']:.0f} | {got['uint8'] / got['float32']:.2f} "
                            f"| {got['uint8'] / forward:.2f} |")
                print(f"loader workers {w}: {got}", flush=True)
            if left() > 15 or args.smoke:
                try:
                    decode_rows += gpu_decode_rows(loaders["uint8"], paths, best_batch, args, forward)
                except Exception as exc:  # noqa: BLE001 - report and go on to the next section
                    decode_rows.append(f"| nvJPEG | - | failed: {type(exc).__name__}: {str(exc)[:150]} | | |")
    tables.append((f"Loading pipeline (Embedder.iter_paths, {best_mode}, batch {best_batch}, "
                   f"{args.images} JPEGs of {size_px}px, pinned memory: {cuda})", rows))
    tables.append(("Decoding on the CPU (FIR's loader, uint8 crops) against nvJPEG on the device "
                   "(torchvision.io.decode_jpeg, resize and crop on the device)", decode_rows))

    # 3. query micro-batching. FIR's worker leaves TF32 matrix products off (torch's default):
    # the index's fp32 products are full fp32, as here from now on.
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = ["| queries per batch | embed ms | router ms | host index top-10 ms | device index top-10 ms "
            "| total ms per batch (embed + router + device index) | ms per query |", "|---|---|---|---|---|---|---|"]
    if left() > 20 or args.smoke:
        rng = np.random.default_rng(0)
        d = net.feature_dim
        cats = [("dress", "shirt", "toptee")[i % 3] for i in range(args.catalogue)]
        vectors = rng.standard_normal((args.catalogue, d), dtype=np.float32)
        host = ShardedIndex(vectors, cats)
        on_device = ShardedIndex(vectors, cats, options=IndexOptions(device=str(device), storage="fp16"))
        train = rng.standard_normal((600, d), dtype=np.float32) + np.repeat(np.eye(3, d, dtype=np.float32) * 3, 200, 0)
        router = Router.fit(train, [c for c in ("dress", "shirt", "toptee") for _ in range(200)], "0" * 16,
                            args.backbone, cv=0)
        emb = embedders["fp16 autocast channels_last" if cuda else "bf16 autocast channels_last"]
        for m in (1, 2, 4, 8, 16, 32) if not args.smoke else (1, 2):
            if left() < 0:
                break
            x = torch.randn(m, 3, args.size, args.size)
            times: dict[str, list[float]] = {"embed": [], "router": [], "host": [], "dev": []}
            for _ in range(3 if args.smoke else 20):
                t0 = time.perf_counter()
                feats = emb.embed_tensor(x.pin_memory() if cuda else x)
                t1 = time.perf_counter()
                labels, _ = router.route(feats)
                routes = [(lab,) for lab in labels]
                t2 = time.perf_counter()
                host.search(feats, 10, routes)
                t3 = time.perf_counter()
                on_device.search(feats, 10, routes)
                t4 = time.perf_counter()
                for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    times[key].append(dt * 1000)
            med = {k: float(np.median(v)) for k, v in times.items()}
            total = med["embed"] + med["router"] + med["dev"]
            rows.append(f"| {m} | {med['embed']:.2f} | {med['router']:.2f} | {med['host']:.2f} | {med['dev']:.2f} "
                        f"| {total:.2f} | {total / m:.2f} |")
            print(rows[-1], flush=True)
        del host, on_device
    tables.append((f"Query micro-batching ({args.catalogue:,} x {net.feature_dim} catalogue, 3 shards; device "
                   f"index: FIR's ShardedIndex on {device}, fp16)", rows))

    # 4. the index on the device at catalogue scale
    rows = ["| items | storage | build s | memory MiB | routed p50 ms | unrouted p50 ms | 32 queries, ms each "
            "| recall@10 vs fp32 |", "|---|---|---|---|---|---|---|---|"]
    sizes = [int(v) for v in args.scale.split(",")] if not args.smoke else [3_000]
    for n in sizes:
        if left() < 10 and not args.smoke:
            break
        try:
            rows += device_scale_rows(n, net.feature_dim, device, args.smoke)
            print("\n".join(rows[-3:]), flush=True)
        except Exception as exc:  # noqa: BLE001 - out of memory on a smaller card: report it
            rows.append(f"| {n:,} | - | failed: {type(exc).__name__}: {str(exc)[:120]} | | | | | |")
        print(f"scale {n:,} done ({time.perf_counter() - start:.0f} s)", flush=True)
    tables.append((f"FIR's index on {device} (exact top-k; clustered 2048-d data, 3 category shards)", rows))

    print(f"\nfinished in {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f}\n")
    for title, table in tables:
        print(f"## {title}\n")
        print("\n".join(table))
        print()


if __name__ == "__main__":
    main()
