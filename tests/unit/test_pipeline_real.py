"""The whole pipeline on a small subset of the real clothing photos: a short training at
small resolution, extraction, the router, the evaluation report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from shared.cli import main

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

PER_SPLIT = {"train": 8, "validation": 3, "test": 4}


def _subset_manifest(shared_data: Path, out: Path) -> Path:
    root = shared_data / "clothing_dataset_small"
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    chosen = []
    for split, n in PER_SPLIT.items():
        for cat in ("dress", "shirt", "toptee"):
            picked = [r for r in rows if r["split"] == split and r["fiq_category"] == cat][:n]
            chosen += [{"path": str(root / r["image"]), "category": cat, "split": split, "label": r["label"]}
                       for r in picked]
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "category", "split", "label"])
        writer.writeheader()
        writer.writerows(chosen)
    return out


def test_pipeline_on_real_photos(shared_data: Path, tmp_path: Path) -> None:
    manifest = _subset_manifest(shared_data, tmp_path / "subset.csv")
    runner = CliRunner()

    def fir(*args: str) -> str:
        res = runner.invoke(main, ["--home", str(tmp_path / "home"), *args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res.output

    out = fir("train", "--dataset", str(manifest), "--weights", "none", "--epochs", "1", "--image-size", "64",
              "--batch-size", "8", "--max-steps", "2")
    assert "weights used: none" in out
    out = fir("extract", "--dataset", str(manifest), "--splits", "train,val")
    assert "33 vectors of 2048 dimensions" in out
    fir("train-router", "--cv", "2")
    report_dir = tmp_path / "report"
    fir("evaluate", "--dataset", str(manifest), "--k", "5,10,100", "--out", str(report_dir))
    report = json.loads((report_dir / "report.json").read_text())
    rows = {(r["mode"], r["k"]): r for r in report["rows"]}
    assert set(rows) == {(m, k) for m in ("label", "svm", "svm-fallback", "none") for k in (5, 10, 100)}
    assert report["meta"]["n_gallery"] == 33 and report["meta"]["n_queries"] == 12
    for k in (5, 10, 100):
        label, none_, svm, fallback = (rows[(m, k)] for m in ("label", "none", "svm", "svm-fallback"))
        # routing by the true label only ever searches relevant items
        assert label["mean_ap"] == pytest.approx(1.0) and label["mean_ap"] >= none_["mean_ap"]
        for row in (label, none_, svm, fallback):
            assert 0.0 <= row["mean_ap"] <= 1.0 and 0.0 <= row["mean_precision"] <= 1.0
            assert row["ms_matching"] > 0
        assert 0.0 <= svm["router_accuracy"] <= 1.0
        assert fallback["router_coverage"] >= svm["router_accuracy"] - 1e-9
    # unrouted search returns everything at k=100: precision there is the share of same-category items
    assert rows[("none", 100)]["mean_returned"] == 33
    assert (report_dir / "examples.png").stat().st_size > 10_000
    assert "| routing | k | mAP |" in (report_dir / "report.md").read_text()
