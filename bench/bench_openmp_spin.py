"""OpenMP's idle spinning after a single-query forward, per ``GOMP_SPINCOUNT``.

    python -m bench.bench_openmp_spin [--counts default,300000,20000,10000,3000] [--rounds 2]
        [--forwards 25] [--size 224]

GNU OpenMP (libgomp, torch's and faiss's) keeps an idle thread spinning after each parallel
region before it sleeps. A query worker runs one forward and then writes the answer while
the API sends it; what the spinning thread burns there is taken from those processes on a
small machine. libgomp reads the setting once, when it loads, so each count runs in a fresh
process (rounds interleave the counts). For each: the single-image ResNet50 forward (p50 and
min), the CPU time the process used during a 50 ms sleep right after each forward (p50: the
spinning), and batch-16 throughput. FIR's workers set 20,000 (``shared.threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from bench._common import machine_header

CHILD = r"""
import json, resource, statistics, sys, time
import torch, torchvision
forwards, size = int(sys.argv[1]), int(sys.argv[2])
net = torchvision.models.resnet50().eval()
one, batch = torch.randn(1, 3, size, size), torch.randn(16, 3, size, size)
fwd, spin = [], []
with torch.inference_mode():
    for _ in range(3):
        net(one)
    for _ in range(forwards):
        t0 = time.perf_counter()
        net(one)
        fwd.append((time.perf_counter() - t0) * 1000)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(0.05)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        spin.append((r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * 1000)
    net(batch)
    t0 = time.perf_counter()
    for _ in range(3):
        net(batch)
    ips = 48 / (time.perf_counter() - t0)
print(json.dumps({"fwd_p50": statistics.median(fwd), "fwd_min": min(fwd),
                  "spin_p50": statistics.median(spin), "batch16": ips}))
"""


def run(count: str, forwards: int, size: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    if count != "default":
        env["GOMP_SPINCOUNT"] = count
    out = subprocess.run([sys.executable, "-c", CHILD, str(forwards), str(size)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="default,300000,20000,10000,3000")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--forwards", type=int, default=25)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    print(machine_header("OpenMP spinning after a single-image forward (ResNet50, fp32)"))
    print("| round | GOMP_SPINCOUNT | forward p50 (ms) | forward min (ms) | CPU in the 50 ms after a forward, p50 (ms) "
          "| batch 16 (img/s) |")
    print("|---|---|---|---|---|---|")
    for r in range(1, args.rounds + 1):
        for count in args.counts.split(","):
            m = run(count, args.forwards, args.size)
            print(f"| {r} | {count} | {m['fwd_p50']:.1f} | {m['fwd_min']:.1f} | {m['spin_p50']:.1f} "
                  f"| {m['batch16']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
