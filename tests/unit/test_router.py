from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import EmptyDataset, InvalidInput, ModelMismatch
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


@pytest.mark.parametrize(
    ("n_classes", "kernel", "gamma"),
    [(3, "rbf", "auto"), (2, "rbf", "scale"), (4, "rbf", "scale"), (3, "linear", "auto"),
     (3, "poly", "scale"), (5, "sigmoid", "auto"), (10, "linear", "auto"), (10, "rbf", "auto")],
)
def test_fast_predictor_equals_sklearn(n_classes: int, kernel: str, gamma: str) -> None:
    """The matrix-product decision function (ovo sums, ovr transform, Platt calibrators) gives
    sklearn's probabilities: float64 to rounding, the float32 default within 1e-6, and the
    same argmax everywhere."""
    from shared.vision.router import FastCalibratedSVC

    rng = np.random.default_rng(n_classes)
    d = 24
    centres = rng.normal(0, 1.0, size=(n_classes, d))
    x = np.concatenate([c + rng.normal(0, 1, size=(60, d)) for c in centres]).astype(np.float32)
    y = [f"c{i}" for i in range(n_classes) for _ in range(60)]
    grid = [{"svc__kernel": [kernel], "svc__C": [1.0], "svc__gamma": [gamma]}]
    router = Router.fit(x, y, model_id="m", backbone="resnet50", grid=grid, cv=2)
    assert router.pipeline is not None
    queries = rng.normal(0, 1.5, size=(400, d)).astype(np.float32)
    ref = router.pipeline.predict_proba(queries)
    exact = FastCalibratedSVC(router.pipeline).predict_proba(queries)
    np.testing.assert_allclose(exact, ref, rtol=0, atol=1e-9)
    for predictor in ("fast", "exact"):
        router.predictor = predictor  # type: ignore[assignment]
        proba = router.predict_proba(queries)
        np.testing.assert_allclose(proba, ref, rtol=0, atol=1e-6)
        assert np.array_equal(proba.argmax(1), ref.argmax(1))
        one = router.predict_proba(queries[0])  # a single query takes the same path
        np.testing.assert_allclose(one, ref[:1], rtol=0, atol=1e-6)
    router.predictor = "sklearn"
    np.testing.assert_array_equal(router.predict_proba(queries), ref)


def test_fast_predictor_recomputes_near_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    """A query whose two best categories are within RECHECK_MARGIN gets sklearn's answer."""
    import shared.vision.router as router_mod

    x, y = _clusters()
    router = Router.fit(x, y, model_id="m1", backbone="resnet50", cv=0)
    assert router.pipeline is not None
    calls: list[int] = []
    original = router.pipeline.predict_proba

    def spy(q: np.ndarray) -> np.ndarray:
        calls.append(len(q))
        return original(q)

    monkeypatch.setattr(router.pipeline, "predict_proba", spy)
    monkeypatch.setattr(router_mod, "RECHECK_MARGIN", 2.0)  # every query counts as a near-tie
    router.predict_proba(x[:7])
    assert calls == [7]
    monkeypatch.setattr(router_mod, "RECHECK_MARGIN", 0.0)
    router.predict_proba(x[:7])
    assert calls == [7]


def test_router_without_fast_shape_uses_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _clusters()
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    router = Router(labels=sorted(set(y)), model_id="m", backbone="resnet50", pipeline=pipe)
    np.testing.assert_allclose(router.predict_proba(x[:5]), pipe.predict_proba(x[:5]))


def test_simplest_selection_prefers_a_linear_router_within_one_standard_error() -> None:
    from shared.vision.router import _simplest

    results = {"params": [{"svc__kernel": "rbf", "svc__C": 1.0}, {"svc__kernel": "linear", "svc__C": 1.0},
                          {"svc__kernel": "linear", "svc__C": 0.1}],
               "mean_test_score": [0.95, 0.94, 0.94], "std_test_score": [0.03, 0.0, 0.0]}
    best = results["params"][0]
    # 0.95 - 0.03 / sqrt(3) = 0.933: both linear candidates qualify; the smaller C wins the tie
    assert _simplest(results, 3) == ({"svc__kernel": "linear", "svc__C": 0.1}, 0.94)
    results["std_test_score"] = [0.01, 0.0, 0.0]  # 0.944: no linear candidate is close enough
    assert _simplest(results, 3) == (best, 0.95)
    rbf_only = {"params": [best], "mean_test_score": [0.95], "std_test_score": [0.0]}
    assert _simplest(rbf_only, 3) == (best, 0.95)


def test_simplest_selection_on_data() -> None:
    """Separable clusters: a linear router is as good, and is chosen. Rings (the class is the
    radius): no hyperplane separates them, and the RBF router stays."""
    x, y = _clusters()
    assert Router.fit(x, y, model_id="m", backbone="resnet50", cv=3).params["kernel"] in ("rbf", "linear")
    simple = Router.fit(x, y, model_id="m", backbone="resnet50", cv=3, select="simplest")
    assert simple.params["kernel"] == "linear"
    rng = np.random.default_rng(1)
    direction = rng.normal(size=(150, 8))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = np.repeat([1.0, 3.0, 5.0], 50)
    rings = (direction * (radius + rng.normal(0, 0.2, 150))[:, None]).astype(np.float32)
    labels = [c for c in ("dress", "shirt", "toptee") for _ in range(50)]
    kept = Router.fit(rings, labels, model_id="m", backbone="resnet50", cv=3, select="simplest")
    assert kept.params["kernel"] == "rbf"
    assert np.mean(np.asarray(kept.route(rings)[0]) == np.asarray(labels)) > 0.9
    with pytest.raises(InvalidInput, match="unknown router selection"):
        Router.fit(x, y, model_id="m", backbone="resnet50", select="fastest")  # type: ignore[arg-type]


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_pca_router_fast_path_matches_sklearn(kernel: str) -> None:
    """Router.fit(pca_dim=...): StandardScaler -> PCA -> calibrated SVC; the fast path folds
    the projection in and gives sklearn's probabilities and decisions."""
    from shared.vision.router import FastCalibratedSVC

    rng = np.random.default_rng(3)
    d = 40
    centres = rng.normal(0, 1.0, size=(3, d))
    x = np.concatenate([c + rng.normal(0, 1, size=(80, d)) for c in centres]).astype(np.float32)
    y = [f"c{i}" for i in range(3) for _ in range(80)]
    router = Router.fit(x, y, model_id="m", backbone="resnet50", cv=0, pca_dim=8,
                        params={"svc__kernel": kernel, "svc__C": 1.0, "svc__gamma": "scale"})
    assert router.params["pca_dim"] == 8
    assert router.pipeline is not None and len(router.pipeline.steps) == 3
    fast = FastCalibratedSVC(router.pipeline)
    assert fast.pca is not None
    queries = rng.normal(0, 1.5, size=(300, d)).astype(np.float32)
    ref = router.pipeline.predict_proba(queries)
    np.testing.assert_allclose(fast.predict_proba(queries), ref, rtol=0, atol=1e-6)
    router.predictor = "fast"
    assert np.array_equal(router.predict_proba(queries).argmax(1), ref.argmax(1))
    assert np.mean(np.asarray(router.route(x)[0]) == np.asarray(y)) > 0.9
    with pytest.raises(InvalidInput, match="pca_dim"):
        Router.fit(x, y, model_id="m", backbone="resnet50", cv=0, pca_dim=0)


def test_pca_router_generalises_on_correlated_features() -> None:
    """Correlated features (a shared low-rank structure, as CNN features have): the projected
    components must come out with unit variance, or an RBF kernel with gamma = 1/pca_dim
    only memorises the training points."""
    rng = np.random.default_rng(7)
    d = 256
    centres = rng.normal(0, 0.25, (3, d))
    basis = rng.normal(0, 1, (16, d)) / 2

    def draw(m: int) -> tuple[np.ndarray, list[str]]:
        cls = rng.integers(0, 3, m)
        x = centres[cls] + rng.normal(0, 1, (m, 16)) @ basis + rng.normal(0, 1, (m, d))
        return x.astype(np.float32), [("dress", "shirt", "toptee")[c] for c in cls]

    x, y = draw(600)
    xt, yt = draw(300)
    plain = Router.fit(x, y, model_id="m", backbone="resnet50", cv=0)
    small = Router.fit(x, y, model_id="m", backbone="resnet50", cv=0, pca_dim=32)
    acc_plain = np.mean(np.asarray(plain.route(xt)[0]) == np.asarray(yt))
    acc_small = np.mean(np.asarray(small.route(xt)[0]) == np.asarray(yt))
    assert acc_plain > 0.8
    assert acc_small > acc_plain - 0.1
