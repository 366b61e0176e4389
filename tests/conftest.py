"""Shared fixtures: generated images, the real-photo folder, and ONE small trained model
that every test needing a model shares (trained once per test session)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from shared.config import Settings

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def shared_data_dir() -> Path:
    """The real-photo folder, from the one setting ``FIR_SHARED_DATA``."""
    return Settings().shared_data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "clothing_dataset_small" / "labels.csv").is_file():
        reason = f"real photos not found at {root} (set FIR_SHARED_DATA to the kit's data folder)"
        if ON_CI:
            pytest.fail(f"{reason}; they are required on CI")
        pytest.skip(reason)
    return root


@pytest.fixture(scope="session")
def synthetic_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shared.data.synthetic import generate_catalogue

    return generate_catalogue(
        tmp_path_factory.mktemp("catalogue"),
        size=64,
        per_category={"train": 16, "val": 4, "test": 4},
    )


@dataclass
class Trained:
    home: Path
    catalogue: Path
    model_path: Path
    features_path: Path
    router_path: Path
    model_id: str


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_catalogue: Path) -> Trained:
    """A ResNet50 (random init) trained for a few steps at 64 px on the generated catalogue,
    with its catalogue features and SVM router: the one shared trained fixture."""
    from shared.data.readers import read_folder
    from shared.pipeline import extract, train_model, train_router
    from shared.store.artifacts import ArtifactStore
    from shared.vision.modelfile import load_model
    from shared.vision.training import TrainConfig

    home = tmp_path_factory.mktemp("fir-home")
    store = ArtifactStore(home)
    scan = read_folder(synthetic_catalogue)
    cfg = TrainConfig(
        backbone="resnet50",
        weights="none",
        epochs=1,
        image_size=64,
        batch_size=16,
        workers=0,
        max_steps_per_epoch=3,
        seed=0,
    )
    result = train_model(scan, store, cfg, progress=False)
    model = load_model(result.best_path)
    feats = extract(scan.split("train", "val"), model, store, workers=0, progress=False)
    _, router_path = train_router(feats.features, store, cv=2)
    return Trained(
        home, synthetic_catalogue, result.best_path, feats.path, router_path, model.model_id
    )
