"""CPU embedding precision: speed and retrieval fidelity of each mode against fp32.

Modes (FIR's ``Embedder``, one process, interleaved timing): fp32, fp32 channels_last, bf16
autocast (NCHW and channels_last), and with ``--compile`` torch.compile of the feature
function (fp32 and bf16, channels_last). Fidelity on real photos (``clothing_dataset_small``):
a gallery of train photos and test photos as queries, all embedded in every mode; a mode is
*faithful* when every image's feature has cosine >= 0.999 to its fp32 feature and every
query's top-10 gallery items (cosine) are the fp32 top-10 (as a set; the order is reported
too). Run it for a pretrained network (``efficientnet_lite0`` ImageNet weights ship offline)
and for ResNet50 (random weights here: its features are nearly collinear, so its top-10
comparison says little).

    python -m bench.bench_precision --backbone efficientnet_lite0 --weights imagenet
        [--gallery 600] [--queries 150] [--size 224] [--batch 8] [--seconds 6] [--compile]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from bench._common import machine_header
from shared.config import Settings
from shared.imaging import load_image
from shared.vision.backbone import build_network
from shared.vision.embed import Embedder, autocast_context
from shared.vision.preprocess import make_transform

Fn = Callable[[torch.Tensor], np.ndarray]


def photos(split: str, n: int) -> list:
    root = Settings().shared_data / "clothing_dataset_small" / split
    paths = sorted(root.glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"no real photos under {root} (set FIR_SHARED_DATA)")
    step = max(1, len(paths) // n)
    return paths[::step][:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--gallery", type=int, default=600)
    ap.add_argument("--queries", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per mode")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    print(machine_header(f"CPU embedding precision: {args.backbone} ({args.weights}) at {args.size}px"))
    print(f"- load average at start: {os.getloadavg()[0]:.2f}")
    net, used = build_network(args.backbone, args.weights, num_classes=3)
    transform = make_transform(args.backbone, args.size)
    gallery_paths, query_paths = photos("train", args.gallery), photos("test", args.queries)
    x = torch.stack([transform(load_image(p)) for p in gallery_paths + query_paths])
    print(f"- weights: {used}; {len(gallery_paths)} gallery (train) + {len(query_paths)} query (test) photos; "
          f"batch {args.batch}; torch threads {torch.get_num_threads()}\n", flush=True)

    modes: dict[str, Fn] = {}
    for name, precision, cl in (("fp32", "fp32", False), ("fp32 channels_last", "fp32", True),
                                ("bf16 autocast", "bf16", False), ("bf16 autocast channels_last", "bf16", True)):
        emb = Embedder(net, args.backbone, args.size, device="cpu", precision=precision, channels_last=cl)
        modes[name] = emb.embed_tensor
    if args.compile:
        for name, precision in (("compile fp32 channels_last", "fp32"), ("compile bf16 channels_last", "bf16")):
            emb = Embedder(net, args.backbone, args.size, device="cpu", precision=precision, channels_last=True)
            feats = torch.compile(emb.net.features, dynamic=False)

            def run(batch: torch.Tensor, feats: Callable[..., torch.Tensor] = feats,
                    precision: str = precision) -> np.ndarray:
                with torch.inference_mode(), autocast_context(torch.device("cpu"), precision):
                    out = feats(batch.contiguous(memory_format=torch.channels_last))
                return out.float().numpy()

            t0 = time.perf_counter()
            run(x[: args.batch])
            print(f"- {name}: first call (compilation) {time.perf_counter() - t0:.1f} s", flush=True)
            modes[name] = run

    # fidelity: every image in every mode
    feats_by_mode: dict[str, np.ndarray] = {}
    def batches(fn: Fn) -> np.ndarray:
        """Every image through ``fn`` in batches of exactly ``args.batch`` (the last one padded
        with zeros): one input shape, so a compiled model compiles once."""
        outs = []
        for i in range(0, len(x), args.batch):
            chunk = x[i : i + args.batch]
            pad = args.batch - len(chunk)
            if pad:
                chunk = torch.cat([chunk, chunk.new_zeros((pad, *chunk.shape[1:]))])
            outs.append(fn(chunk)[: args.batch - pad])
        return np.concatenate(outs)

    for name, fn in modes.items():
        out = batches(fn)
        feats_by_mode[name] = out / np.linalg.norm(out, axis=1, keepdims=True)
    ng = len(gallery_paths)
    ref = feats_by_mode["fp32"]
    ref_top = np.argsort(-(ref[ng:] @ ref[:ng].T), axis=1)[:, :10]

    # speed: interleaved rounds over the modes, same batch
    batch = x[: args.batch]
    for fn in modes.values():
        fn(batch)
    counts = {name: 0 for name in modes}
    spent = {name: 0.0 for name in modes}
    rounds = 3
    for _ in range(rounds):
        for name, fn in modes.items():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.seconds / rounds:
                fn(batch)
                counts[name] += len(batch)
            spent[name] += time.perf_counter() - t0
    speed = {name: counts[name] / spent[name] for name in modes}

    print(f"| mode | img/s (batch {args.batch}) | vs fp32 | min cosine to fp32 | mean cosine | queries with the "
          "same top-10 set | same top-10 order | faithful |")
    print("|---|---|---|---|---|---|---|---|")
    for name in modes:
        f = feats_by_mode[name]
        cos = (f * ref).sum(1)
        top = np.argsort(-(f[ng:] @ f[:ng].T), axis=1)[:, :10]
        same_set = float(np.mean([set(a) == set(b) for a, b in zip(top, ref_top, strict=True)]))
        same_order = float(np.mean(np.all(top == ref_top, axis=1)))
        ok = cos.min() >= 0.999 and same_set == 1.0
        print(f"| {name} | {speed[name]:.1f} | {speed[name] / speed['fp32']:.2f}x | {cos.min():.5f} | {cos.mean():.5f} "
              f"| {same_set:.3f} | {same_order:.3f} | {'yes' if ok else 'no'} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
