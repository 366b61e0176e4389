"""Query matching on real photo features at FashionIQ's size: exact scan, FIR's HNSW graphs
and ``FIR_SEARCH_PCA_DIM=auto``, as ``bench_search`` measures them on synthetic data.

The catalogue: every photo of ``clothing_dataset_small`` (found through ``FIR_SHARED_DATA``)
seen ``--copies`` times through FIR's training augmentation (a random resized crop and a flip,
seeded), embedded by an ImageNet-pretrained network (EfficientNet-Lite0, the one that installs
offline; ``--backbone`` / ``--weights``), so 3,781 photos x 20 = 75,620 vectors, about
FashionIQ's 77,000. It is a catalogue of products photographed many times each, which real
catalogues are too, with the features of a real network instead of a generator's. The shards
are the labels' FashionIQ categories (dress, shirt, toptee) and ``other`` for the rest. The
queries: a fresh augmented view (another seed) of ``--queries`` photos drawn at random, routed
to their photo's shard; recall@10 is against the exact answer of the same index.

    python -m bench.bench_search_real [--copies 20] [--queries 200] [--ef 64,128,default]

The features are cached (``--cache``, default ``$FIR_HOME/bench-cache``): embedding 75,620
views takes several minutes on two cores, the searches seconds.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bench._common import machine_header
from bench.bench_search import recall_at, rss_mb, time_single
from shared.config import Settings
from shared.imaging import load_image
from shared.search.ann import IndexOptions, describe_graph
from shared.search.index import ShardedIndex
from shared.vision.backbone import build_network
from shared.vision.embed import Embedder
from shared.vision.preprocess import make_transform

FIQ = ("dress", "shirt", "toptee")


def catalogue_photos(root: Path) -> list[tuple[Path, str]]:
    """(photo, shard) for every photo in ``labels.csv``."""
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [(root / r["image"], r["fiq_category"] if r["fiq_category"] in FIQ else "other") for r in rows]


def embed_views(paths: list[Path], copies: int, seed: int, emb: Embedder, transform: Any,
                batch: int) -> npt.NDArray[np.float32]:
    """``copies`` augmented views of each photo, embedded: ``[len(paths) * copies, d]``, the
    views of photo i at rows ``i * copies ... i * copies + copies - 1``."""
    out: list[npt.NDArray[np.float32]] = []
    pending: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for i, path in enumerate(paths):
        image = load_image(path)
        torch.manual_seed(seed * 1_000_003 + i)  # each photo's views: the same on every run
        pending.extend(transform(image) for _ in range(copies))
        while len(pending) >= batch:
            out.append(emb.embed_tensor(torch.stack(pending[:batch])))
            pending = pending[batch:]
        if (i + 1) % 500 == 0:
            print(f"  {i + 1:,} photos embedded ({time.perf_counter() - t0:.0f} s)", flush=True)
    if pending:
        out.append(emb.embed_tensor(torch.stack(pending)))
    return np.concatenate(out).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=20, help="augmented views per photo in the catalogue")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--exact-queries", type=int, default=50)
    ap.add_argument("--ef", default="64,128,default",
                    help="efSearch values; 'default': each graph's own (FIR's 128, twice it for a PCA graph)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cache", type=Path, default=None, help="where the embedded views are kept between runs")
    ap.add_argument("--data", type=Path, default=None, help="clothing_dataset_small (default: FIR_SHARED_DATA's)")
    args = ap.parse_args()
    s = Settings()
    root = args.data or s.shared_data / "clothing_dataset_small"
    if not (root / "labels.csv").exists():
        raise SystemExit(f"no clothing_dataset_small at {root} (set FIR_SHARED_DATA or --data)")
    print(machine_header("Query matching on real photo features (augmented views, pretrained network)"))
    print(f"- load average at start: {os.getloadavg()[0]:.2f}")
    photos = catalogue_photos(root)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(photos), min(args.queries, len(photos)), replace=False)
    cache = args.cache or s.resolved_home() / "bench-cache"
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"{args.backbone}-{args.weights.replace('/', '_')}-{args.size}px-{len(photos)}x{args.copies}"
    cat_file, q_file = cache / f"{stem}-catalogue.npy", cache / f"{stem}-queries{len(picked)}.npy"
    if cat_file.exists() and q_file.exists():
        vectors, queries = np.load(cat_file), np.load(q_file)
        print(f"- features from {cache}")
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        net, used = build_network(args.backbone, args.weights, num_classes=len(FIQ))
        emb = Embedder(net, args.backbone, args.size, device="cpu", precision="fp32")
        transform = make_transform(args.backbone, args.size, train=True)
        print(f"- embedding {len(photos):,} photos x {args.copies} views ({args.backbone}, {used})", flush=True)
        t0 = time.perf_counter()
        vectors = embed_views([p for p, _ in photos], args.copies, 1, emb, transform, args.batch)
        queries = embed_views([photos[i][0] for i in picked], 1, 2, emb, transform, args.batch)
        print(f"- embedded in {time.perf_counter() - t0:.0f} s", flush=True)
        np.save(cat_file, vectors)
        np.save(q_file, queries)
    cats = [c for _, c in photos for _ in range(args.copies)]
    routes = [(photos[i][1],) for i in picked]
    n, d = vectors.shape
    sizes = {c: cats.count(c) for c in sorted(set(cats))}
    print(f"- catalogue {n:,} x {d}; shards {', '.join(f'{c} {k:,}' for c, k in sizes.items())}; "
          f"{len(queries)} queries (fresh views); graphs above {IndexOptions().ann_threshold:,} per shard\n", flush=True)
    efs: list[int | None] = [None if e == "default" else int(e) for e in args.ef.split(",")]
    variants = [("exact", IndexOptions(ann="exact")),
                ("HNSW fp16", IndexOptions(storage="fp16")),
                ("HNSW fp16, PCA auto", IndexOptions(storage="fp16", pca_dim=256, pca_min_recall=0.99))]
    rows: list[str] = []
    truth_routed = truth_all = None
    for name, opts in variants:
        gc.collect()
        rss0, t0 = rss_mb(), time.perf_counter()
        index = ShardedIndex(vectors, cats, "cosine", options=opts)
        build, grow = time.perf_counter() - t0, rss_mb() - rss0
        for cat, shard in index._shards.items():
            g = shard.ann
            if g is not None:
                print(f"  {name}: shard {cat} ({g.size:,}): {describe_graph(g)}", flush=True)
        mem = index.nbytes() / 1e6
        if truth_routed is None:
            truth_routed = index.search(queries, 10, routes, exact=True).indices
            truth_all = index.search(queries, 10, None, exact=True).indices
        assert truth_routed is not None and truth_all is not None
        for ef in ([None] if opts.ann == "exact" else efs):
            m = args.exact_queries if opts.ann == "exact" else len(queries)
            p50, p90, got = time_single(index, queries, routes, 10, m, ef=ef)
            u50, _, got_all = time_single(index, queries, None, 10, m, ef=ef)
            r = recall_at(got, truth_routed[:m])
            ru = recall_at(got_all, truth_all[:m])
            label = "-" if opts.ann == "exact" else ("default" if ef is None else str(ef))
            rows.append(f"| {name} | {label} | {p50:.2f} | {p90:.2f} | {r:.3f} | {u50:.2f} | {ru:.3f} "
                        f"| {mem:,.0f} (RSS +{grow:,.0f}) | {build:.1f} |")
        print(f"{name}: built in {build:.1f} s", flush=True)
        del index
    print()
    print("| search | efSearch | routed p50 ms | routed p90 ms | routed recall@10 | unrouted p50 ms "
          "| unrouted recall@10 | index memory MB | build s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}. Shards under the graph threshold are scanned "
          "exactly in every variant.")


if __name__ == "__main__":
    main()
