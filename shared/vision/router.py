"""The SVM router: predicts a query's category from its feature.

The router is a scikit-learn pipeline (standardisation, then ``SVC``) chosen by grid search
with cross-validation over C, kernel and gamma; the grid always includes the study's best
(C=1, rbf, gamma='auto'). It is saved with joblib together with its label list and the
``model_id`` and backbone of the feature model it was trained on; loading it beside another
feature model is refused.

Prediction has a fast path (:class:`FastCalibratedSVC`): scikit-learn's ``SVC`` evaluates its
kernel support vector by support vector inside libsvm (5-14 ms for one query with thousands of
support vectors); the same decision function is one matrix product of the query with all
support vectors, then the one-vs-one sums, sklearn's one-vs-rest transform and the Platt
calibrators. In float64 the probabilities equal sklearn's (to about 1e-14); the default,
``predictor="fast"``, reads the support vectors as float32 (half the memory traffic, which is
what one query costs) and lands within about 1e-7 of sklearn's probabilities; a query whose
two best categories are closer than :data:`RECHECK_MARGIN` is recomputed by sklearn itself, so
the routing decisions are sklearn's. Pipelines of another shape fall back to scikit-learn.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
import numpy.typing as npt
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from shared.errors import EmptyDataset, InvalidInput, ModelMismatch, NotFound
from shared.threads import single_thread_blas

log = logging.getLogger(__name__)

FORMAT = "fir-router/1"

DEFAULT_GRID: list[dict[str, list[Any]]] = [
    {"svc__kernel": ["rbf"], "svc__C": [0.1, 1.0, 10.0], "svc__gamma": ["auto", "scale"]},
    {"svc__kernel": ["linear"], "svc__C": [0.1, 1.0]},
]
STUDY_PARAMS: dict[str, Any] = {"svc__kernel": "rbf", "svc__C": 1.0, "svc__gamma": "auto"}
# How the grid search picks: ``best``, the highest cross-validated accuracy; ``simplest``, a
# linear kernel whenever one scores within one standard error of the best (the one-standard-
# error rule): a linear router is one hyperplane per class pair, microseconds per query
# whatever its training set, where an RBF router reads every support vector for every query.
Selection = Literal["best", "simplest"]
SELECTIONS: tuple[str, ...] = ("best", "simplest")

FloatArray = npt.NDArray[np.float64]
# Up to this many queries the fast path runs its matrix product on one BLAS thread: a
# matrix-vector product is memory-bound, and on a shared 2-core machine OpenBLAS's second
# thread costs far more in synchronisation than it saves (see bench/RESULTS.md).
SINGLE_THREAD_QUERIES = 8
# ``fast`` routing recomputes with sklearn any query whose top two probabilities are closer
# than this (the float32 path's error is about 1e-7): the argmax is then always sklearn's.
RECHECK_MARGIN = 1e-4


class FastCalibratedSVC:
    """``StandardScaler -> CalibratedClassifierCV(SVC)`` prediction as dense matrix products.

    Reproduces, for a fitted pipeline: ``SVC.decision_function`` (one-vs-one sums over the
    support vectors of each class pair, libsvm's ``rho``; for three or more classes sklearn's
    ``_ovr_decision_function`` vote + confidence transform; for two classes the sign flip),
    then each calibrator (``calibrator.predict``, sklearn's own code) and the normalisation of
    ``_CalibratedClassifier.predict_proba``, averaged over the calibrated classifiers.
    ``dtype=float32`` halves the memory read per query at the cost of exactness (about 1e-7
    in the probabilities); float64 matches sklearn to rounding.
    """

    def __init__(self, pipeline: Pipeline, dtype: type[np.floating[Any]] = np.float64) -> None:
        steps = [step for _, step in pipeline.steps]
        self.pca: PCA | None = None
        if len(steps) == 3 and isinstance(steps[1], PCA):
            self.pca = steps.pop(1)  # StandardScaler -> PCA -> calibrated SVC (Router.fit(pca_dim=...))
        if len(steps) != 2 or not isinstance(steps[0], StandardScaler) \
                or not isinstance(steps[1], CalibratedClassifierCV):
            raise TypeError("not a StandardScaler [-> PCA] -> CalibratedClassifierCV pipeline")
        self.scaler: StandardScaler = steps[0]
        calibrated: CalibratedClassifierCV = steps[1]
        self.classes = np.asarray(calibrated.classes_)
        self.dtype = np.dtype(dtype)
        self.members: list[tuple[_FastSVC, list[Any], npt.NDArray[np.int64]]] = []
        for cc in calibrated.calibrated_classifiers_:
            if getattr(cc, "method", "sigmoid") not in ("sigmoid", "isotonic"):
                raise TypeError(f"calibration method {cc.method!r} has no fast path")
            svc = cc.estimator
            if not isinstance(svc, SVC):
                raise TypeError("the calibrated estimator is not an SVC")
            positions = np.searchsorted(np.asarray(cc.classes), svc.classes_).astype(np.int64)
            self.members.append((_FastSVC(svc, self.dtype), list(cc.calibrators), positions))

    def _scale(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``StandardScaler.transform`` without its input validation (about 0.2 ms a call):
        the same operations (mean and scale cast to the input's float type, in place on a
        copy), so the same rounding."""
        dtype = np.float32 if x.dtype == np.float32 else np.float64
        z: npt.NDArray[Any] = np.array(x, dtype=dtype, copy=True)
        if self.scaler.with_mean:
            z -= np.asarray(self.scaler.mean_, dtype=dtype)
        if self.scaler.with_std:
            z /= np.asarray(self.scaler.scale_, dtype=dtype)
        if self.pca is not None:  # PCA.transform: centre, project on the components, whiten
            z -= np.asarray(self.pca.mean_, dtype=dtype)
            with single_thread_blas() if len(z) <= SINGLE_THREAD_QUERIES else contextlib.nullcontext():
                z = z @ np.asarray(self.pca.components_, dtype=dtype).T
            if self.pca.whiten:
                z /= np.sqrt(np.asarray(self.pca.explained_variance_, dtype=dtype))
        return z

    def predict_proba(self, x: npt.NDArray[np.float32]) -> FloatArray:
        z = self._scale(x)
        n_classes = len(self.classes)
        mean = np.zeros((len(z), n_classes))
        for svc, calibrators, positions in self.members:
            dec = svc.decision_function(z)
            if dec.ndim == 1:
                dec = dec[:, None]
            proba = np.zeros((len(z), n_classes))
            for class_idx, pred, calibrator in zip(positions, dec.T, calibrators, strict=False):
                proba[:, class_idx + 1 if n_classes == 2 else class_idx] = _calibrate(calibrator, pred)
            if n_classes == 2:
                proba[:, 0] = 1.0 - proba[:, 1]
            else:
                denominator = proba.sum(axis=1)[:, None]
                uniform = np.full_like(proba, 1 / n_classes)
                proba = np.divide(proba, denominator, out=uniform, where=denominator != 0)
            proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0
            mean += proba
        return mean / len(self.members)


def _reducer(pca_dim: int | None, shape: tuple[int, ...], seed: int) -> list[Any]:
    """The steps before the SVC: standardisation, and PCA to ``pca_dim`` dimensions (at most
    the features' dimension, and fewer than the smallest training fold has rows), whitened:
    every component comes out with unit variance, as the SVC's ``gamma`` (``auto``:
    1 / n_features; ``scale``) assumes of standardised input. Unwhitened, the first
    components dwarf the rest and an RBF kernel with gamma = 1/256 memorised the training set
    (accuracy 0.60 where the whitened projection gave 0.96, bench/RESULTS.md section 4)."""
    steps: list[Any] = [StandardScaler()]
    if pca_dim is not None and pca_dim < shape[1]:
        steps.append(PCA(n_components=min(pca_dim, max(1, shape[0] // 2 - 1)), whiten=True, random_state=seed))
    return steps


def _simplest(results: dict[str, Any], folds: int) -> tuple[dict[str, Any], float]:
    """The one-standard-error rule over a grid search's results: the best-scoring linear-kernel
    candidate if its mean accuracy is within one standard error (fold std / sqrt(folds)) of
    the best candidate's, else the best candidate (the first of equals, as GridSearchCV)."""
    means = np.asarray(results["mean_test_score"], dtype=np.float64)
    stds = np.asarray(results["std_test_score"], dtype=np.float64)
    top = int(np.argmax(means))
    floor = means[top] - stds[top] / np.sqrt(folds)
    linear = [i for i, p in enumerate(results["params"]) if p.get("svc__kernel") == "linear"]
    pick = max(linear, key=lambda i: (means[i], -float(results["params"][i].get("svc__C", 1.0))), default=top)
    if means[pick] < floor - 1e-12:
        pick = top
    return dict(results["params"][pick]), float(means[pick])


def _calibrate(calibrator: Any, pred: FloatArray) -> FloatArray:
    """``calibrator.predict(pred)``; Platt's sigmoid computed directly (sklearn's
    ``_SigmoidCalibration.predict`` is ``expit(-(a * T + b))`` behind input validation)."""
    a, b = getattr(calibrator, "a_", None), getattr(calibrator, "b_", None)
    if type(calibrator).__name__ == "_SigmoidCalibration" and a is not None and b is not None:
        return np.asarray(expit(-(a * pred + b)), dtype=np.float64)
    return np.asarray(calibrator.predict(pred), dtype=np.float64)


class _FastSVC:
    """One fitted ``SVC``'s ``decision_function`` as matrix products (dense, fixed kernels)."""

    def __init__(self, svc: SVC, dtype: np.dtype[Any]) -> None:
        if svc.kernel not in ("rbf", "linear", "poly", "sigmoid") or getattr(svc, "_sparse", False):
            raise TypeError(f"kernel {svc.kernel!r} has no fast path")
        self.kernel = str(svc.kernel)
        self.gamma = float(svc._gamma)
        self.coef0 = float(svc.coef0)
        self.degree = float(svc.degree)
        self.n_classes = len(svc.classes_)
        self.ovr = svc.decision_function_shape == "ovr" and self.n_classes > 2
        self.pairs = _pair_matrices(self.n_classes) if self.ovr else None
        self.dtype = dtype
        sv = np.asarray(svc.support_vectors_, dtype=np.float64)
        dual = np.asarray(svc._dual_coef_, dtype=np.float64)  # libsvm's sv_coef, [n_classes - 1, n_sv]
        intercept = np.asarray(svc._intercept_, dtype=np.float64)  # -rho, one per class pair
        counts = np.asarray(svc.n_support_, dtype=np.int64)
        start = np.concatenate([[0], np.cumsum(counts)])
        pairs = [(i, j) for i in range(self.n_classes) for j in range(i + 1, self.n_classes)]
        # weights[s, p]: the coefficient of support vector s in pair p's decision value (libsvm:
        # class i's vectors carry sv_coef[j - 1], class j's carry sv_coef[i])
        weights = np.zeros((sv.shape[0], len(pairs)))
        for p, (i, j) in enumerate(pairs):
            weights[start[i]:start[i + 1], p] = dual[j - 1, start[i]:start[i + 1]]
            weights[start[j]:start[j + 1], p] = dual[i, start[j]:start[j + 1]]
        self.binary_flip = self.n_classes == 2
        self.intercept = intercept
        # ``support``: [n, d] rows, multiplied as ``z @ support.T`` (BLAS reads it transposed,
        # no copy); in float64 it is the SVC's own array, not a second copy.
        if self.kernel == "linear":
            # a linear decision needs no per-vector kernel: fold the vectors into one hyperplane per pair
            self.support = np.ascontiguousarray((sv.T @ weights).T.astype(dtype))
            self.weights = None
            self.sv_sq = None
        else:
            self.support = np.ascontiguousarray(sv, dtype=dtype)
            self.weights = weights
            self.sv_sq = np.einsum("ij,ij->i", sv, sv)

    def _dots(self, z: npt.NDArray[Any]) -> FloatArray:
        zz = np.ascontiguousarray(z, dtype=self.dtype)
        if len(zz) <= SINGLE_THREAD_QUERIES:
            with single_thread_blas():
                dots = zz @ self.support.T
        else:
            dots = zz @ self.support.T
        return dots.astype(np.float64, copy=False)

    def decision_function(self, z: npt.NDArray[Any]) -> FloatArray:
        z64 = np.asarray(z, dtype=np.float64)
        dots = self._dots(z64)
        if self.kernel == "linear":
            ovo = dots + self.intercept
        else:
            if self.kernel == "rbf":
                assert self.sv_sq is not None
                sq = np.einsum("ij,ij->i", z64, z64)[:, None] + self.sv_sq[None, :] - 2.0 * dots
                kern = np.exp(-self.gamma * np.maximum(sq, 0.0))
            elif self.kernel == "poly":
                kern = (self.gamma * dots + self.coef0) ** self.degree
            else:  # sigmoid
                kern = np.tanh(self.gamma * dots + self.coef0)
            assert self.weights is not None
            ovo = kern @ self.weights + self.intercept
        if self.binary_flip:
            return -ovo.ravel()
        if self.ovr:
            return _ovr_decision(ovo, self.n_classes, self.pairs)
        return ovo


def _pair_matrices(n_classes: int) -> tuple[FloatArray, FloatArray]:
    """For the class pairs (i, j), i < j, in libsvm's order: ``first[p, i] = 1`` and
    ``second[p, j] = 1``."""
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    first = np.zeros((len(pairs), n_classes))
    second = np.zeros((len(pairs), n_classes))
    for p, (i, j) in enumerate(pairs):
        first[p, i] = 1.0
        second[p, j] = 1.0
    return first, second


def _ovr_decision(ovo: FloatArray, n_classes: int,
                  pairs: tuple[FloatArray, FloatArray] | None = None) -> FloatArray:
    """sklearn's ``_ovr_decision_function(ovo < 0, -ovo, n_classes)``: votes per class plus
    the summed pair confidences squashed into (-1/3, 1/3). Computed as two small matrix
    products over the class pairs (a Python loop over 45 pairs cost about 1 ms a query)."""
    first, second = pairs if pairs is not None else _pair_matrices(n_classes)
    j_wins = (ovo < 0).astype(np.float64)
    votes = (1.0 - j_wins) @ first + j_wins @ second
    conf = ovo @ (first - second)
    return votes + conf / (3 * (np.abs(conf) + 1))


@dataclass
class Router:
    labels: list[str]
    model_id: str
    backbone: str
    pipeline: Pipeline | None  # None when the catalogue has a single category
    params: dict[str, Any] = field(default_factory=dict)
    cv_accuracy: float | None = None
    # How predict_proba computes (not saved; the same fitted model either way):
    # ``fast``: float32 matrix products, near-ties recomputed by sklearn (same decisions);
    # ``exact``: float64 matrix products (sklearn's probabilities to rounding);
    # ``sklearn``: the pipeline's own predict_proba (libsvm). ``fast``/``exact`` fall back to
    # ``sklearn`` for a pipeline of another shape.
    predictor: Literal["fast", "exact", "sklearn"] = "fast"
    _fast: FastCalibratedSVC | None = field(default=None, init=False, repr=False, compare=False)
    _fast_failed: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def fit(
        cls,
        features: npt.NDArray[np.float32],
        categories: list[str],
        model_id: str,
        backbone: str,
        grid: list[dict[str, list[Any]]] | None = None,
        cv: int = 3,
        seed: int = 0,
        n_jobs: int = 1,
        select: Selection = "best",
        params: dict[str, Any] | None = None,
        pca_dim: int | None = None,
    ) -> Router:
        """Grid search (``cv`` >= 2 folds) or, with ``cv`` < 2, the SVC parameters ``params``
        (``svc__``-prefixed; default the study's), then a Platt-calibrated SVC on all data.

        ``pca_dim``: the standardised features are projected on their first ``pca_dim``
        principal components before the SVC (fitted inside each fold): fewer dimensions per
        support vector, and usually fewer support vectors; a different model from the plain
        one, so its accuracy is what the cross-validation measures."""
        if select not in SELECTIONS:
            raise InvalidInput(f"unknown router selection {select!r} (expected one of {', '.join(SELECTIONS)})")
        if len(features) == 0:
            raise EmptyDataset("no features to train the router on")
        if pca_dim is not None and pca_dim < 1:
            raise InvalidInput(f"pca_dim must be a positive integer, got {pca_dim}")
        if len(features) != len(categories):
            raise InvalidInput("one category per feature vector is required")
        labels = sorted(set(categories))
        if len(labels) == 1:
            return cls(labels=labels, model_id=model_id, backbone=backbone, pipeline=None)
        y = np.asarray(categories)
        smallest = min(int((y == c).sum()) for c in labels)
        if smallest < 2:
            raise EmptyDataset(
                "the router needs at least 2 examples of every category; "
                + ", ".join(f"{c}: {int((y == c).sum())}" for c in labels)
            )
        folds = max(2, min(cv, smallest))
        params = dict(params or STUDY_PARAMS)
        cv_acc: float | None = None
        if cv >= 2:
            search = GridSearchCV(
                make_pipeline(*_reducer(pca_dim, features.shape, seed), SVC()),
                grid or DEFAULT_GRID,
                cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                scoring="accuracy",
                n_jobs=n_jobs,
            )
            search.fit(features, y)
            params = dict(search.best_params_)
            cv_acc = float(search.best_score_)
            if select == "simplest":
                params, cv_acc = _simplest(search.cv_results_, folds)
            log.info("router grid search (%s): %s, cv accuracy %.3f", select, params, cv_acc)
        svc_params = {k.removeprefix("svc__"): v for k, v in params.items()}
        # Probabilities by Platt scaling over cross-validated decision values of one SVC
        # (``ensemble=False``): the SVC refit on all data routes, calibrated.
        calibrated = CalibratedClassifierCV(SVC(**svc_params), method="sigmoid", cv=max(2, min(folds, 5)),
                                            ensemble=False)
        pipe = make_pipeline(*_reducer(pca_dim, features.shape, seed), calibrated)
        pipe.fit(features, y)
        if isinstance(pipe.steps[1][1], PCA):
            svc_params["pca_dim"] = int(pipe.steps[1][1].n_components_)
        return cls(labels=labels, model_id=model_id, backbone=backbone, pipeline=pipe,
                   params=svc_params, cv_accuracy=cv_acc)

    def predict_proba(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Probability per category, columns in ``self.labels`` order."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float32))
        if self.pipeline is None:
            return np.ones((len(x), 1))
        fast = self._fast_predictor() if self.predictor != "sklearn" else None
        if fast is None:
            proba = self.pipeline.predict_proba(x)
        else:
            proba = fast.predict_proba(x)
            if fast.dtype != np.float64 and proba.shape[1] > 1:
                top2 = -np.partition(-proba, 1, axis=1)[:, :2]
                near = np.flatnonzero(top2[:, 0] - top2[:, 1] < RECHECK_MARGIN)
                if len(near):
                    proba[near] = self.pipeline.predict_proba(x[near])
        classes = list(self.pipeline.classes_)
        return np.asarray(proba[:, [classes.index(c) for c in self.labels]])

    def _fast_predictor(self) -> FastCalibratedSVC | None:
        dtype = np.float64 if self.predictor == "exact" else np.float32
        if self._fast is not None and self._fast.dtype != dtype:
            self._fast = None  # the predictor was switched
        if self._fast is None and not self._fast_failed and self.pipeline is not None:
            try:
                self._fast = FastCalibratedSVC(self.pipeline, dtype)
            except (TypeError, AttributeError) as exc:
                log.info("router predicts through scikit-learn (no fast path: %s)", exc)
                self._fast_failed = True
        return self._fast

    def route(self, features: npt.NDArray[np.float32]) -> tuple[list[str], npt.NDArray[np.float64]]:
        """The most probable category of each feature, and the probabilities."""
        proba = self.predict_proba(features)
        return [self.labels[i] for i in proba.argmax(axis=1)], proba

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(
            {
                "format": FORMAT,
                "labels": self.labels,
                "model_id": self.model_id,
                "backbone": self.backbone,
                "pipeline": self.pipeline,
                "params": self.params,
                "cv_accuracy": self.cv_accuracy,
            },
            path,
        )

    @classmethod
    def load(cls, path: Path, expect_model_id: str | None = None) -> Router:
        if not Path(path).is_file():
            raise NotFound(f"router file {path} does not exist")
        try:
            payload = joblib.load(path)
        except Exception as exc:
            raise InvalidInput(f"{path} is not a readable router file: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise InvalidInput(f"{path} is not a FIR router file")
        router = cls(
            labels=list(payload["labels"]),
            model_id=str(payload["model_id"]),
            backbone=str(payload["backbone"]),
            pipeline=payload["pipeline"],
            params=dict(payload.get("params") or {}),
            cv_accuracy=payload.get("cv_accuracy"),
        )
        if expect_model_id is not None:
            router.check_model(expect_model_id)
        return router

    def check_model(self, model_id: str) -> None:
        if model_id != self.model_id:
            raise ModelMismatch(
                f"the router was trained on features of model {self.model_id} "
                f"({self.backbone}); it cannot route features of model {model_id}. "
                "Retrain it with `fir train-router`."
            )
