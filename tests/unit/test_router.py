from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import EmptyDataset, ModelMismatch
from shared.vision.router import Router


def _clusters(n: int = 30, d: int = 16, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(3, d))
    labels = ["dress", "shirt", "toptee"]
    x = np.concatenate([c + rng.normal(0, 1, size=(n, d)) for c in centres]).astype(np.float32)
    y = [lab for lab in labels for _ in range(n)]
    return x, y


def test_router_round_trip_and_predictions(tmp_path: Path) -> None:
    x, y = _clusters()
    router = Router.fit(x, y, model_id="m1", backbone="resnet50", cv=3)
    assert router.labels == ["dress", "shirt", "toptee"]
    assert router.cv_accuracy is not None and router.cv_accuracy > 0.9
    cats, probs = router.route(x)
    assert np.mean(np.asarray(cats) == np.asarray(y)) > 0.95
    assert probs.shape == (90, 3) and np.allclose(probs.sum(1), 1.0)
    router.save(tmp_path / "r.joblib")
    again = Router.load(tmp_path / "r.joblib", expect_model_id="m1")
    assert again.labels == router.labels and again.params == router.params
    np.testing.assert_allclose(again.predict_proba(x[:5]), router.predict_proba(x[:5]))


def test_router_refused_beside_another_model(tmp_path: Path) -> None:
    x, y = _clusters(n=10)
    Router.fit(x, y, model_id="m1", backbone="resnet50", cv=2).save(tmp_path / "r.joblib")
    with pytest.raises(ModelMismatch, match="trained on features of model m1"):
        Router.load(tmp_path / "r.joblib", expect_model_id="m2")


def test_grid_includes_the_study_setting() -> None:
    from shared.vision.router import DEFAULT_GRID

    rbf = [g for g in DEFAULT_GRID if g["svc__kernel"] == ["rbf"]][0]
    assert 1.0 in rbf["svc__C"] and "auto" in rbf["svc__gamma"]


def test_router_needs_two_examples_per_category() -> None:
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(EmptyDataset, match="at least 2 examples"):
        Router.fit(x, ["a", "a", "b"], model_id="m", backbone="resnet50")


def test_single_category_router() -> None:
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    router = Router.fit(x, ["dress"] * 5, model_id="m", backbone="resnet50")
    cats, probs = router.route(x)
    assert cats == ["dress"] * 5 and probs.shape == (5, 1)
