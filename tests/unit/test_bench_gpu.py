"""bench/gpu.py is prepared for a GPU machine; its smoke mode (tiny sizes) runs on a CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_runs_in_smoke_mode() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for title in ("Bare forward", "Loading pipeline", "Decoding on the CPU", "Query micro-batching",
                  "FIR's index on cpu"):
        assert f"## {title}" in out
    # the micro-batching table has its two rows (m = 1 and 2)
    assert "\n| 1 |" in out and "\n| 2 |" in out
    # the index on the device (torch on the CPU here) finds what fp32 finds; nvJPEG's stand-in ran
    assert "| 3,000 | fp32 |" in out and "| 3,000 | fp16 |" in out and "failed" not in out
