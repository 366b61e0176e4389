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


def test_decode_bench_runs_small(tmp_path: Path) -> None:
    """bench/bench_decode.py on a few generated JPEGs: both decoders through the product's
    Embedder, every table, and the device path's features close to Pillow's."""
    from shared.data.synthetic import CATEGORIES, draw_garment

    for i in range(12):
        draw_garment(CATEGORIES[i % 3], 160, seed=i).save(tmp_path / f"{i}.jpg", quality=90)
    proc = subprocess.run([sys.executable, "-m", "bench.bench_decode", "--photos", str(tmp_path), "--n", "24",
                           "--fidelity-n", "12", "--large", "3", "--batch", "8", "--workers", "0", "--size", "32",
                           "--seconds", "0.2", "--full-chroma"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| loader (Pillow) | 0 |" in out and "| device | 0 |" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| as they are", "| re-encoded", "| upscaled"))]
    assert len(rows) == 6  # printed as it goes, then in the table
    for row in rows:
        assert float(row[2]) > 0.99 and float(row[-1].rstrip(" |")) > 0.9999, row
