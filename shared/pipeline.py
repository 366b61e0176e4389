"""The study's pipeline as functions over the artifact store: train, extract, train the
router, evaluate. The ``fir`` commands and the demo are thin wrappers around these."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.data.readers import DatasetScan, Sample
from shared.errors import EmptyDataset
from shared.store.artifacts import ArtifactStore
from shared.vision.embed import Embedder
from shared.vision.features import FeatureSet, extract_features
from shared.vision.modelfile import LoadedModel, load_model
from shared.vision.router import Router, Selection
from shared.vision.training import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)


def split_for_training(scan: DatasetScan) -> tuple[list[Sample], list[Sample]]:
    """Train and validation samples: the dataset's own splits where it has them, else a
    deterministic 1-in-10 hold-out from everything."""
    train_s = scan.split("train")
    val_s = scan.split("val")
    if train_s:
        return train_s, val_s
    samples = sorted(scan.samples, key=lambda s: s.key)
    val_s = samples[::10]
    held = {s.key for s in val_s}
    return [s for s in samples if s.key not in held], val_s


def train_model(scan: DatasetScan, store: ArtifactStore, cfg: TrainConfig,
                resume: Path | None = None, progress: bool = True) -> TrainResult:
    scan.require_samples()
    train_s, val_s = split_for_training(scan)
    if not train_s:
        raise EmptyDataset(f"no training images in {scan.source}")
    run_dir = resume.parent if resume is not None else store.new_run_dir()
    result = train(train_s, val_s, run_dir, cfg, resume=resume, progress=progress)
    model_path = store.import_model(result.best_path, result.model_id)
    store.set_current(model=model_path)
    result.best_path = model_path
    return result


def embedder_for(model: LoadedModel, device: str = "auto", precision: str = "auto") -> Embedder:
    return Embedder(model.net, model.meta.backbone, model.meta.image_size, device=device, precision=precision)


@dataclass
class ExtractOutcome:
    features: FeatureSet
    path: Path
    ms_per_image: float


def extract(samples: Sequence[Sample], model: LoadedModel, store: ArtifactStore, name: str = "catalogue",
            batch_size: int = 16, workers: int = 1, device: str = "auto", precision: str = "auto",
            progress: bool = True, out: Path | None = None, make_current: bool = True) -> ExtractOutcome:
    if not samples:
        raise EmptyDataset("no images to extract features from")
    embedder = embedder_for(model, device, precision)
    t0 = time.perf_counter()
    feats = extract_features(embedder, samples, model.model_id, batch_size=batch_size,
                             workers=workers, progress=progress)
    ms = (time.perf_counter() - t0) * 1000 / max(len(samples), 1)
    if len(feats) == 0:
        raise EmptyDataset(f"none of the {len(samples)} images could be decoded")
    path = out or store.features_path(model.model_id, name)
    feats.save(path)
    if make_current:
        store.set_current(features=path)
    return ExtractOutcome(feats, path, ms)


def train_router(features: FeatureSet, store: ArtifactStore, cv: int = 3, seed: int = 0,
                 out: Path | None = None, select: Selection = "best",
                 pca_dim: int | None = None) -> tuple[Router, Path]:
    usable = features.subset([bool(c) for c in features.categories])
    router = Router.fit(usable.vectors, usable.categories, usable.model_id, usable.backbone, cv=cv, seed=seed,
                        select=select, pca_dim=pca_dim)
    path = out or store.router_path(features.model_id)
    router.save(path)
    store.set_current(router=path)
    return router, path


def load_current_model(store: ArtifactStore, given: Path | None) -> LoadedModel:
    return load_model(store.require("model", given, "train one with `fir train`"))
