"""JPEG decoding for bulk embedding: FIR's loader processes (Pillow) against the device decoder
(``FIR_JPEG_DECODE=device``: nvJPEG on a GPU), both through ``Embedder.iter_paths``.

    python -m bench.bench_decode [--photos DIR] [--n 1536] [--batch 256] [--workers 4,8,15]

Prints, for each decoder and loader-process count, images/s and the share of the bare forward
at the same batch size and precision; then the fidelity of the device decoder against the
loader's: cosine of each image's feature, and the share of queries whose top-10 neighbours in
the set are the same, on real photos as they are and upscaled 4x (a large JPEG, which the loader
path lets libjpeg downscale while decoding). Real photos come from ``--photos`` or the kit
(``FIR_SHARED_DATA``); without them, generated ones. On a CPU the device decoder is torchvision's
CPU decoder in the embedding process: it runs, it is not meant to be faster there.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench._common import machine_header
from shared.config import Settings
from shared.vision.backbone import build_network
from shared.vision.embed import Embedder, pick_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def find_photos(given: Path | None, n: int, tmp: Path) -> tuple[list[Path], str]:
    root = given or Settings().shared_data / "clothing_dataset_small"
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")) if root.is_dir() else []
    if found:
        step = max(1, len(found) // n)
        picked = found[::step][:n]
        return picked, f"{len(picked)} real photos from {root}"
    from shared.data.synthetic import CATEGORIES, draw_garment

    out = []
    for i in range(n):
        out.append(tmp / f"gen-{i}.jpg")
        draw_garment(CATEGORIES[i % 3], 400, seed=i).save(out[-1], quality=90)
    return out, f"{n} generated 400 px garments (no real photos found)"


def upscale(paths: list[Path], folder: Path, factor: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        with Image.open(p) as im:
            big = im.convert("RGB").resize((im.width * factor, im.height * factor), Image.Resampling.BICUBIC)
        out.append(folder / p.name)
        big.save(out[-1], quality=90)
    return out


def reencode(paths: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        out.append(folder / p.name)
        with Image.open(p) as im:
            im.convert("RGB").save(out[-1], quality=95, subsampling=0)
    return out


def embed_rate(emb: Embedder, paths: list[Path], batch: int, workers: int) -> float:
    list(emb.iter_paths(paths[: batch * 2], batch_size=batch, workers=workers))  # warm-up
    sync(emb.device)
    t0 = time.perf_counter()
    n = sum(len(part.ok) for part in emb.iter_paths(paths, batch_size=batch, workers=workers))
    sync(emb.device)
    return n / (time.perf_counter() - t0)


def fidelity(loader: Embedder, device: Embedder, paths: list[Path], batch: int, workers: int) -> str:
    a = loader.embed_paths(paths, batch_size=batch, workers=workers, progress=False)
    b = device.embed_paths(paths, batch_size=batch, workers=workers, progress=False)
    assert a.ok.tolist() == b.ok.tolist(), "the two decoders accepted different files"
    x = a.vectors / np.linalg.norm(a.vectors, axis=1, keepdims=True)
    y = b.vectors / np.linalg.norm(b.vectors, axis=1, keepdims=True)
    cos = np.sum(x * y, axis=1)
    queries = np.arange(0, len(x), 5)
    same = 0
    for q in queries:
        top_x = set(np.argsort(-(x @ x[q]))[1:11].tolist())
        top_y = set(np.argsort(-(y @ y[q]))[1:11].tolist())
        same += top_x == top_y
    # the query path (Embedder.prepare, one file at a time) against the indexing path
    few = min(16, len(paths))
    q = device.embed_crops([device.prepare(p) for p in paths[:few]], batch_size=few)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    self_cos = np.sum(q * y[:few], axis=1).min()
    # the crops' pixels (uint8, after resize and crop) from each decoder
    diffs = [(loader.prepare(p).int() - device.prepare(p).cpu().int()).abs().float() for p in paths[:64]]
    pix = f"{np.mean([d.mean().item() for d in diffs]):.2f} / {max(d.max().item() for d in diffs):.0f}"
    return (f"{len(x)} | {cos.min():.5f} | {cos.mean():.6f} | {np.mean(cos >= 0.999):.3f} "
            f"| {same}/{len(queries)} | {pix} | {self_cos:.6f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=Path, default=None, help="a folder of JPEGs (default: the kit's photos)")
    ap.add_argument("--n", type=int, default=3072, help="files per throughput run (the photos again as needed)")
    ap.add_argument("--max-photos", type=int, default=1024, help="distinct photos to read")
    ap.add_argument("--fidelity-n", type=int, default=512, help="photos for the fidelity table")
    ap.add_argument("--large", type=int, default=128, help="photos upscaled 4x for the large-JPEG rows")
    ap.add_argument("--full-chroma", action="store_true", help="also the photos re-encoded 4:4:4")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", default="4,8,15")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--weights", default="none")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds for the bare forward")
    args = ap.parse_args()
    print(machine_header("JPEG decoding for bulk embedding: loader processes against the device decoder"))
    device = pick_device("auto")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net, used = build_network(args.backbone, args.weights, num_classes=3)
    loader = Embedder(net, args.backbone, args.size, device=str(device), precision=args.precision, jpeg_decode="cpu")
    on_dev = Embedder(net, args.backbone, args.size, device=str(device), precision=args.precision,
                      jpeg_decode="device")
    print(f"- model: {used}; loader path: {loader.describe()}; device path: {on_dev.describe()}", flush=True)
    workers = [w for w in (int(v) for v in args.workers.split(",")) if w <= (os.cpu_count() or 1)]

    x = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=device)
    loader.embed_tensor(x)
    sync(device)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.seconds or n == 0:
        loader.embed_tensor(x)
        n += args.batch
    sync(device)
    forward = n / (time.perf_counter() - t0)
    print(f"bare forward: {forward:.0f} img/s", flush=True)

    rows = ["| decoding | loader processes | images/s | share of the bare forward |", "|---|---|---|---|"]
    fid = ["| photos | images | cosine min | cosine mean | share >= 0.999 | same top-10 "
           "| crop pixels, mean / max abs difference | device: query path vs indexing path, cosine min |",
           "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="fir-decode-") as tmp:
        photos, source = find_photos(args.photos, args.max_photos, Path(tmp))
        print(f"- photos: {source}", flush=True)
        timed = (photos * (args.n // len(photos) + 1))[: args.n]  # the set again, to n files
        for w in workers:
            for name, emb in (("loader (Pillow)", loader), ("device", on_dev)):
                r = embed_rate(emb, timed, args.batch, w)
                rows.append(f"| {name} | {w} | {r:.0f} | {r / forward:.2f} |")
                print(rows[-1], flush=True)
        sample = photos[: args.fidelity_n]
        w = workers[-1] if workers else 0
        fid.append(f"| as they are | {fidelity(loader, on_dev, sample, args.batch, w)}")
        print(fid[-1], flush=True)
        if args.full_chroma:
            # the same photos re-encoded without chroma subsampling: is it the chroma upsampling?
            full = reencode(sample[: args.large], Path(tmp) / "444")
            fid.append(f"| re-encoded 4:4:4, q95 | {fidelity(loader, on_dev, full, args.batch, w)}")
            print(fid[-1], flush=True)
        big = upscale(sample[: args.large], Path(tmp) / "x4", 4)
        fid.append(f"| upscaled 4x (JPEG q90) | {fidelity(loader, on_dev, big, args.batch, w)}")
        print(fid[-1], flush=True)
        big_rate = {name: embed_rate(emb, big, args.batch, w) for name, emb in (("loader", loader), ("device", on_dev))}
    print(f"\n## Throughput ({args.backbone}, {used}, {loader.precision}, batch {args.batch}; bare forward "
          f"{forward:.0f} images/s; {source})\n")
    print("\n".join(rows))
    print(f"\nUpscaled 4x, {w} loader processes: loader {big_rate['loader']:.0f} images/s, "
          f"device {big_rate['device']:.0f} images/s")
    print("\n## Fidelity: the device decoder's features against the loader's\n")
    print("\n".join(fid))


if __name__ == "__main__":
    main()
