"""ResNet50 (or another backbone) feature throughput on this machine: fp32, channels_last,
bf16 autocast (NCHW and channels_last), optionally torch.compile; and the fidelity of each
mode against fp32 (cosine per image, same top-10 neighbours).

    python -m bench.bench_embed [--backbone resnet50] [--size 224] [--batches 1,8] [--compile]

All modes run in the same process, interleaved, so the ratios are comparable.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench._common import machine_header
from shared.vision.backbone import build_network
from shared.vision.embed import autocast_context


def run_mode(net: torch.nn.Module, x: torch.Tensor, precision: str, channels_last: bool) -> torch.Tensor:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_context(torch.device("cpu"), precision):
        return net.features(x).float()  # type: ignore[operator,no-any-return]


def fidelity_inputs(backbone: str, size: int, n: int = 64) -> tuple[torch.Tensor, str]:
    from shared.config import Settings
    from shared.data.synthetic import CATEGORIES, draw_garment
    from shared.imaging import load_image
    from shared.vision.preprocess import make_transform

    transform = make_transform(backbone, size)
    root = Settings().shared_data / "clothing_dataset_small" / "test"
    paths = sorted(root.glob("*/*.jpg"))[:: max(1, len(sorted(root.glob("*/*.jpg"))) // n)][:n] if root.is_dir() else []
    if len(paths) >= n:
        return torch.stack([transform(load_image(p)) for p in paths]), f"{n} real photos from {root}"
    images = [draw_garment(CATEGORIES[i % 3], 128, seed=i) for i in range(n)]
    return torch.stack([transform(im) for im in images]), f"{n} generated garments (no real photos found)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--weights", default="none")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per mode and batch size")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow first call)")
    args = ap.parse_args()
    print(machine_header(f"Feature extraction throughput: {args.backbone} at {args.size}px"))

    torch.manual_seed(0)
    net, used = build_network(args.backbone, args.weights, num_classes=3)
    net.eval()
    net_cl = build_network(args.backbone, args.weights, num_classes=3)[0].eval()
    net_cl.load_state_dict(net.state_dict())
    net_cl = net_cl.to(memory_format=torch.channels_last)
    print(f"weights: {used}\n")
    modes = [("fp32", net, "fp32", False), ("fp32 channels_last", net_cl, "fp32", True),
             ("bf16 autocast", net, "bf16", False), ("bf16 autocast channels_last", net_cl, "bf16", True)]
    if args.compile:
        compiled = torch.compile(net_cl)
        modes.append(("compile bf16 channels_last", compiled, "bf16", True))

    # fidelity on 64 real photos (FIR_SHARED_DATA) or, without them, 64 generated garments
    fid_x, source = fidelity_inputs(args.backbone, args.size)
    print(f"fidelity inputs: {source}\n")
    ref = torch.cat([run_mode(net, fid_x[i:i + 8], "fp32", False) for i in range(0, 64, 8)]).numpy()
    ref_n = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    fidelity = {}
    for name, m, prec, cl in modes:
        feats = torch.cat([run_mode(m, fid_x[i:i + 8], prec, cl) for i in range(0, 64, 8)]).numpy()
        fn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        cos = (fn * ref_n).sum(1)
        top_ref = np.argsort(-(ref_n @ ref_n.T), axis=1)[:, 1:11]
        top = np.argsort(-(fn @ fn.T), axis=1)[:, 1:11]
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_ref, top, strict=True)])
        fidelity[name] = (float(cos.min()), float(cos.mean()), float(overlap))

    batches = [int(b) for b in args.batches.split(",")]
    results: dict[tuple[str, int], float] = {}
    for b in batches:
        x = torch.randn(b, 3, args.size, args.size)
        for _name, m, prec, cl in modes:  # warm-up
            run_mode(m, x, prec, cl)
        # interleave: several rounds over all modes, so machine noise hits every mode alike
        counts = {name: 0 for name, *_ in modes}
        spent = {name: 0.0 for name, *_ in modes}
        rounds = 3
        for _ in range(rounds):
            for name, m, prec, cl in modes:
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < args.seconds / rounds:
                    run_mode(m, x, prec, cl)
                    counts[name] += b
                spent[name] += time.perf_counter() - t0
        for name, *_ in modes:
            results[(name, b)] = counts[name] / spent[name]

    head = "| mode | " + " | ".join(f"batch {b} (img/s)" for b in batches) + \
        f" | vs fp32 (batch {batches[-1]}) | min cosine to fp32 | mean cosine | same top-10 |"
    print(head)
    print("|" + "---|" * (len(batches) + 5))
    for name, *_ in modes:
        speed = " | ".join(f"{results[(name, b)]:.1f}" for b in batches)
        ratio = results[(name, batches[-1])] / results[("fp32", batches[-1])]
        mn, mean, ov = fidelity[name]
        print(f"| {name} | {speed} | {ratio:.2f}x | {mn:.5f} | {mean:.5f} | {ov:.3f} |")
    print("\nfaithful = min cosine >= 0.999 and the same top-10 (overlap 1.000) on these inputs")


if __name__ == "__main__":
    main()
