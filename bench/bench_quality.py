"""Retrieval quality on clothing_dataset_small: backbones, fine-tuning and routing modes.

For each configuration (a backbone, its weights, and a fine-tune or none) it trains with the
study's method (cross-entropy over the categories, Adam), extracts the pooled features of every
photo once, and evaluates two label sets: the three FashionIQ categories (dress / shirt /
toptee, the photos that map to one) and all ten labels. Gallery = train + validation, queries
= test; the SVM router is trained on the gallery features (grid search, 3-fold CV). Per routing
mode: mAP@100, mAP@1000, precision@10 with 95 % bootstrap intervals over the test queries,
router accuracy with a Wilson interval, and matching time per query. The CNN's own test
accuracy (its linear head over the same features) stands beside the study's 0.91.

    python -m bench.bench_quality                          # all configurations (a GPU: minutes)
    python -m bench.bench_quality --configs lite0-frozen   # one; on this CPU about 3 minutes
    python -m bench.bench_quality --smoke                  # tiny sizes, a few photos, seconds

Real photos are found through FIR_SHARED_DATA (``Settings().shared_data``) or ``--data``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import machine_header


@dataclass(frozen=True)
class Config:
    name: str
    backbone: str
    weights: str
    train_on: str  # "fiq_category" (3 categories) or "label" (10)
    epochs: int
    lr: float = 1e-3
    body_lr: float | None = None
    seed: int = 0
    note: str = ""


CONFIGS: dict[str, Config] = {c.name: c for c in (
    Config("r50-none", "resnet50", "none", "fiq_category", 0, note="untrained ResNet50, no fine-tune"),
    Config("r50-scratch", "resnet50", "none", "fiq_category", 10, note="the study's recipe from random init"),
    Config("lite0-frozen", "efficientnet_lite0", "imagenet", "fiq_category", 0, note="ImageNet features, no fine-tune"),
    Config("lite0-ft-study", "efficientnet_lite0", "imagenet", "fiq_category", 10,
           note="the study's recipe: Adam lr 1e-3 everywhere"),
    Config("lite0-ft", "efficientnet_lite0", "imagenet", "fiq_category", 10, body_lr=1e-4,
           note="head lr 1e-3, body lr 1e-4"),
    Config("lite0-ft-10", "efficientnet_lite0", "imagenet", "label", 10, body_lr=1e-4,
           note="fine-tuned on the 10 labels, body lr 1e-4"),
)}
MODES = ("label", "svm", "svm-fallback", "none")
KS = (10, 100, 1000)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def bootstrap(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(rounds, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def relabel(feats: Any, by_key: dict[str, str]) -> Any:
    """The feature set restricted to keys with a label in ``by_key``, relabelled."""
    from shared.vision.features import FeatureSet

    keep = [k in by_key for k in feats.keys]
    sub = feats.subset(keep)
    return FeatureSet(vectors=sub.vectors, keys=sub.keys, categories=[by_key[k] for k in sub.keys],
                      splits=sub.splits, paths=sub.paths, model_id=sub.model_id, backbone=sub.backbone)


def cnn_accuracy(net: Any, feats: Any, labels: list[str]) -> float | None:
    """Accuracy of the network's own linear head on precomputed pooled features."""
    import torch

    if len(feats) == 0 or any(c not in labels for c in feats.categories):
        return None
    head = net.head.float().cpu()
    with torch.inference_mode():
        pred = head(torch.from_numpy(np.asarray(feats.vectors, dtype=np.float32))).argmax(1).numpy()
    truth = np.asarray([labels.index(c) for c in feats.categories])
    return float((pred == truth).mean())


def scan_labels(csv_path: Path) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    from shared.data.readers import read_manifest

    scans = {col: read_manifest(csv_path, path_column="image", category_column=col)
             for col in ("fiq_category", "label")}
    return scans, {col: {s.key: str(s.category) for s in scan.samples} for col, scan in scans.items()}


def train_and_extract(cfg: Config, csv_path: Path, args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], Any]:
    """Fine-tune (or not) and embed every photo: the run's record and its feature set."""
    import torch

    from shared.pipeline import embedder_for
    from shared.vision.features import extract_features
    from shared.vision.modelfile import load_model
    from shared.vision.training import TrainConfig, train

    scans, label_of = scan_labels(csv_path)
    everything = scans["label"].samples  # every photo has one of the 10 labels
    if args.limit:
        everything = everything[:: max(1, len(everything) // args.limit)]
    keys = {s.key for s in everything}
    trained_on = [s for s in scans[cfg.train_on].samples if s.key in keys]
    train_s = [s for s in trained_on if s.split == "train"]
    val_s = [s for s in trained_on if s.split == "val"]

    t0 = time.perf_counter()
    tc = TrainConfig(backbone=cfg.backbone, weights=cfg.weights, epochs=cfg.epochs, lr=cfg.lr,
                     body_lr=cfg.body_lr, batch_size=args.batch_size, image_size=args.image_size,
                     seed=cfg.seed, workers=args.workers, device=args.device,
                     max_steps_per_epoch=args.max_steps)
    result = train(train_s, val_s, work / cfg.name, tc, progress=False)
    train_s_elapsed = time.perf_counter() - t0
    model = load_model(result.best_path)
    embedder = embedder_for(model, device=args.device, precision="fp32")
    t0 = time.perf_counter()
    extract_batch = args.extract_batch or (64 if torch.cuda.is_available() else 16)
    feats = extract_features(embedder, everything, model.model_id, batch_size=extract_batch, workers=args.workers,
                             progress=False)
    extract_ms = (time.perf_counter() - t0) * 1000 / max(len(everything), 1)
    if args.models_dir and cfg.name in args.keep_models.split(","):
        shutil.copy(result.best_path, args.models_dir / f"{cfg.name}.pt")
    test = relabel(feats, label_of[cfg.train_on]).by_split("test")
    run: dict[str, Any] = {
        "config": cfg.__dict__, "model_id": model.model_id, "weights_used": result.weights_source,
        "device": str(embedder.device), "train_seconds": round(train_s_elapsed, 1),
        "extract_ms_per_image": round(extract_ms, 2), "history": result.history,
        "best_epoch": result.best.get("epoch"), "n_train": len(train_s), "n_val": len(val_s),
        "cnn_test_accuracy": cnn_accuracy(model.net, test, model.meta.labels) if cfg.epochs else None,
        "label_sets": {},
    }
    del model, embedder
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return run, feats


def save_features(feats: Any, path: Path) -> None:
    """Compact transfer copy: float16 vectors, compressed (features are evaluated as float32)."""
    np.savez_compressed(path, vectors=feats.vectors.astype(np.float16), keys=np.asarray(feats.keys, dtype=str),
                        categories=np.asarray(feats.categories, dtype=str),
                        splits=np.asarray(feats.splits, dtype=str), paths=np.asarray(feats.paths, dtype=str),
                        meta=np.asarray(json.dumps({"model_id": feats.model_id, "backbone": feats.backbone})))


def load_features(path: Path) -> Any:
    from shared.vision.features import FeatureSet

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return FeatureSet(vectors=z["vectors"].astype(np.float32), keys=z["keys"].tolist(),
                          categories=z["categories"].tolist(), splits=z["splits"].tolist(),
                          paths=z["paths"].tolist(), model_id=meta["model_id"], backbone=meta["backbone"])


def evaluate_run(run: dict[str, Any], feats: Any, label_of: dict[str, dict[str, str]],
                 args: argparse.Namespace) -> None:
    """Router per label set, every routing mode, intervals; fills ``run["label_sets"]``."""
    from shared.evaluation.evaluate import evaluate_retrieval
    from shared.vision.router import Router

    for col in ("fiq_category", "label"):
        fs = relabel(feats, label_of[col])
        gallery, queries = fs.by_split("train", "val"), fs.by_split("test")
        t0 = time.perf_counter()
        router = Router.fit(gallery.vectors, gallery.categories, gallery.model_id, gallery.backbone, cv=3,
                            n_jobs=args.jobs)
        fit_s = time.perf_counter() - t0
        rep = evaluate_retrieval(gallery, queries, router, modes=MODES, ks=KS, latency_sample=50,
                                 keep_per_query=True)
        rows: dict[str, Any] = {}
        for mode in rep.meta["modes"]:
            r10, r100, r1000 = (rep.row(mode, k) for k in KS)
            pq = rep.per_query[mode]
            row: dict[str, Any] = {
                "map100": r100.mean_ap, "map100_ci": bootstrap(pq["ap@100"]),
                "map1000": r1000.mean_ap, "p10": r10.mean_precision, "p10_ci": bootstrap(pq["p@10"]),
                "ms_matching": r100.ms_matching, "ms_router": r100.ms_router,
            }
            if r100.router_accuracy is not None:
                hits = round(r100.router_accuracy * len(queries))
                row["router_accuracy"] = r100.router_accuracy
                row["router_accuracy_ci"] = wilson(hits, len(queries))
            rows[mode] = row
        run["label_sets"][col] = {
            "n_gallery": len(gallery), "n_queries": len(queries),
            "queries_per_category": rep.meta["queries_per_category"],
            "router_params": router.params, "router_cv_accuracy": router.cv_accuracy,
            "router_fit_seconds": round(fit_s, 1), "ms_router_single": rep.meta["ms_router_single"],
            "modes": rows,
        }


def fmt_ci(value: float | None, ci: Any) -> str:
    if value is None:
        return "-"
    if ci is None or any(v != v for v in ci):
        return f"{value:.3f}"
    return f"{value:.3f} ({ci[0]:.2f}-{ci[1]:.2f})"


def tables(results: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    names = {"fiq_category": "3 FashionIQ categories", "label": "10 labels"}
    for col in ("fiq_category", "label"):
        lines += [f"## {names[col]}", "",
                  "| configuration | routing | mAP@100 (95% CI) | mAP@1000 | P@10 (95% CI) | router accuracy "
                  "(95% CI) | CNN test acc. | match ms |", "|---|---|---|---|---|---|---|---|"]
        for res in results:
            ls = res["label_sets"].get(col)
            if ls is None:
                continue
            cnn = res["cnn_test_accuracy"] if col == res["config"]["train_on"] else None
            for mode, row in ls["modes"].items():
                lines.append(
                    f"| {res['config']['name']} | {mode} | {fmt_ci(row['map100'], row['map100_ci'])} | "
                    f"{row['map1000']:.3f} | {fmt_ci(row['p10'], row['p10_ci'])} | "
                    f"{fmt_ci(row.get('router_accuracy'), row.get('router_accuracy_ci'))} | "
                    f"{'-' if cnn is None else f'{cnn:.3f}'} | {row['ms_matching']:.2f} |")
        lines.append("")
        for res in results:
            ls = res["label_sets"].get(col)
            if ls and "svm-fallback" in ls["modes"] and "none" in ls["modes"]:
                fb, no = ls["modes"]["svm-fallback"]["map100"], ls["modes"]["none"]["map100"]
                lines.append(f"- {res['config']['name']}: svm-fallback mAP@100 {fb:.3f} vs none {no:.3f} "
                             f"({'not below' if fb >= no else 'BELOW'})")
        lines.append("")
    lines += ["## Runs", "", "| configuration | weights used | train images | epochs | best epoch | "
              "val accuracy | train s | extract ms/image |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        hist = res["history"]
        best = res["best_epoch"]
        val = next((h["val_accuracy"] for h in hist if h["epoch"] == best), None)
        lines.append(f"| {res['config']['name']} | {res['weights_used']} | {res['n_train']} | "
                     f"{res['config']['epochs']} | {'-' if best is None or best < 0 else int(best) + 1} | "
                     f"{'-' if val is None else f'{val:.3f}'} | {res['train_seconds']} | "
                     f"{res['extract_ms_per_image']} |")
    lines += ["", "Study (FashionIQ, ResNet50 ImageNet fine-tuned): CNN test accuracy 0.91, SVM test "
              "accuracy 0.898, routed mAP 0.898, 0.006 s per routed query."]
    return "\n".join(lines)


def main() -> None:
    from shared.config import Settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None,
                    help="clothing_dataset_small/labels.csv (default: under FIR_SHARED_DATA)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)}")
    ap.add_argument("--seeds", default="0", help="seeds for the fine-tuned configurations, e.g. 0,1,2")
    ap.add_argument("--epochs", type=int, default=None, help="override every fine-tune's epochs")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--extract-batch", type=int, default=0, help="feature extraction batch (0: 64 on a GPU, 16 on CPU)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--jobs", type=int, default=-1, help="processes for the router's grid search")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-steps", type=int, default=None, help="training batches per epoch (quick runs)")
    ap.add_argument("--limit", type=int, default=0, help="use about this many photos (0: all)")
    ap.add_argument("--json", type=Path, default=None, help="write every result (per run) here")
    ap.add_argument("--phase", default="all", choices=["all", "extract", "evaluate"],
                    help="extract: train and embed only (a GPU machine); evaluate: from --features")
    ap.add_argument("--features", type=Path, default=None,
                    help="folder for each run's features (float16, compressed) and runs.json")
    ap.add_argument("--models-dir", type=Path, default=None, help="copy the model files of --keep-models here")
    ap.add_argument("--keep-models", default="", help="comma-separated configuration names whose model to keep")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: 64 px, 2 steps, ~300 photos")
    ap.add_argument("--report", default="",
                    help="comma-separated result files (--json of earlier runs): print their tables and exit")
    args = ap.parse_args()
    if args.report:
        merged = [r for f in args.report.split(",") for r in json.loads(Path(f).read_text())]
        print(tables(merged))
        return
    if args.smoke:
        args.image_size, args.max_steps, args.limit, args.epochs = 64, 2, 300, 1
        args.batch_size, args.workers = 8, 0
    csv_path = args.data or Settings().shared_data / "clothing_dataset_small" / "labels.csv"
    if not csv_path.is_file():
        raise SystemExit(f"no labels.csv at {csv_path} (set FIR_SHARED_DATA or --data)")
    for folder in (args.features, args.models_dir):
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
    print(machine_header("Retrieval quality on clothing_dataset_small"), flush=True)
    runs: list[Config] = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r} (one of {', '.join(CONFIGS)})")
        cfg = CONFIGS[name]
        if args.epochs is not None and cfg.epochs:
            cfg = replace(cfg, epochs=args.epochs)
        seeds = [int(s) for s in args.seeds.split(",")] if cfg.epochs else [0]
        runs += [replace(cfg, seed=s, name=cfg.name if s == 0 else f"{cfg.name}-s{s}") for s in seeds]
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    feature_dir = args.features
    if feature_dir:
        feature_dir.mkdir(parents=True, exist_ok=True)
    _, label_of = scan_labels(csv_path)

    def write() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))

    if args.phase == "evaluate":  # from a folder an earlier --phase extract filled (another machine)
        if not feature_dir or not (feature_dir / "runs.json").is_file():
            raise SystemExit("--phase evaluate needs --features DIR holding runs.json and the feature files")
        wanted = {cfg.name for cfg in runs}
        todo = [(r, feature_dir / f"{r['config']['name']}.npz")
                for r in json.loads((feature_dir / "runs.json").read_text()) if r["config"]["name"] in wanted]
    else:
        todo = []
    with tempfile.TemporaryDirectory(prefix="fir-quality-") as tmp:
        for cfg in runs if args.phase != "evaluate" else []:
            t0 = time.perf_counter()
            try:
                run, feats = train_and_extract(cfg, csv_path, args, Path(tmp))
                if feature_dir:
                    save_features(feats, feature_dir / f"{cfg.name}.npz")
                if args.phase == "all":
                    evaluate_run(run, feats, label_of, args)
            except Exception as exc:  # one failed configuration must not lose the others
                print(f"{cfg.name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
                continue
            results.append(run)
            print(f"{cfg.name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
            if feature_dir:
                (feature_dir / "runs.json").write_text(json.dumps(results, indent=1, default=str))
            write()
    for run, path in todo:
        t0 = time.perf_counter()
        try:
            evaluate_run(run, load_features(path), label_of, args)
        except Exception as exc:
            print(f"{run['config']['name']}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        results.append(run)
        print(f"{run['config']['name']}: evaluated in {time.perf_counter() - t0:.0f} s", flush=True)
        write()
    print(f"\nfinished in {time.perf_counter() - start:.0f} s\n")
    print(tables(results))
    expected = len(todo) if args.phase == "evaluate" else len(runs)
    if len(results) < expected:
        raise SystemExit(f"{expected - len(results)} configuration(s) failed")


if __name__ == "__main__":
    main()
