"""bench/bench_search_real.py on a tiny generated photo set laid out as clothing_dataset_small
(labels.csv with FashionIQ categories): it embeds, caches, and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_real_feature_search_bench_runs_small(tmp_path: Path) -> None:
    from shared.data.synthetic import CATEGORIES, draw_garment

    data = tmp_path / "clothing"
    lines = ["image,split,label,fiq_category"]
    for i in range(12):
        label = ("dress", "shirt", "t-shirt", "pants")[i % 4]
        fiq = {"dress": "dress", "shirt": "shirt", "t-shirt": "toptee"}.get(label, "")
        (data / "train" / label).mkdir(parents=True, exist_ok=True)
        draw_garment(CATEGORIES[i % 3], 96, seed=i).save(data / "train" / label / f"{i}.jpg", quality=90)
        lines.append(f"train/{label}/{i}.jpg,train,{label},{fiq}")
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "bench.bench_search_real", "--data", str(data), "--cache", str(tmp_path / "cache"),
           "--backbone", "resnet50", "--weights", "none", "--size", "32", "--copies", "3", "--queries", "5",
           "--exact-queries", "3", "--ef", "16,default"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "catalogue 36 x 2048; shards dress 9, other 9, shirt 9, toptee 9" in first.stdout
    rows = [line for line in first.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| exact"] + ["| HNSW fp16"] * 2 + ["| HNSW fp16, PCA auto"] * 2
    for row in rows:  # shards this small are scanned exactly: every answer is the exact one
        assert row.split(" | ")[4] == "1.000" and row.split(" | ")[6] == "1.000", row
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "- features from" in again.stdout
