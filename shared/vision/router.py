"""The SVM router: predicts a query's category from its feature.

The router is a scikit-learn pipeline (standardisation, then ``SVC``) chosen by grid search
with cross-validation over C, kernel and gamma; the grid always includes the study's best
(C=1, rbf, gamma='auto'). It is saved with joblib together with its label list and the
``model_id`` and backbone of the feature model it was trained on; loading it beside another
feature model is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from shared.errors import EmptyDataset, InvalidInput, ModelMismatch, NotFound

log = logging.getLogger(__name__)

FORMAT = "fir-router/1"

DEFAULT_GRID: list[dict[str, list[Any]]] = [
    {"svc__kernel": ["rbf"], "svc__C": [0.1, 1.0, 10.0], "svc__gamma": ["auto", "scale"]},
    {"svc__kernel": ["linear"], "svc__C": [0.1, 1.0]},
]
STUDY_PARAMS: dict[str, Any] = {"svc__kernel": "rbf", "svc__C": 1.0, "svc__gamma": "auto"}


@dataclass
class Router:
    labels: list[str]
    model_id: str
    backbone: str
    pipeline: Pipeline | None  # None when the catalogue has a single category
    params: dict[str, Any] = field(default_factory=dict)
    cv_accuracy: float | None = None

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
    ) -> Router:
        if len(features) == 0:
            raise EmptyDataset("no features to train the router on")
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
        params: dict[str, Any] = dict(STUDY_PARAMS)
        cv_acc: float | None = None
        if cv >= 2:
            search = GridSearchCV(
                make_pipeline(StandardScaler(), SVC()),
                grid or DEFAULT_GRID,
                cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                scoring="accuracy",
                n_jobs=n_jobs,
            )
            search.fit(features, y)
            params = dict(search.best_params_)
            cv_acc = float(search.best_score_)
            log.info("router grid search: best %s, cv accuracy %.3f", params, cv_acc)
        svc_params = {k.removeprefix("svc__"): v for k, v in params.items()}
        # Probabilities by Platt scaling over cross-validated decision values of one SVC
        # (``ensemble=False``): the SVC refit on all data routes, calibrated.
        calibrated = CalibratedClassifierCV(SVC(**svc_params), method="sigmoid", cv=max(2, min(folds, 5)),
                                            ensemble=False)
        pipe = make_pipeline(StandardScaler(), calibrated)
        pipe.fit(features, y)
        return cls(labels=labels, model_id=model_id, backbone=backbone, pipeline=pipe,
                   params=svc_params, cv_accuracy=cv_acc)

    def predict_proba(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Probability per category, columns in ``self.labels`` order."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float32))
        if self.pipeline is None:
            return np.ones((len(x), 1))
        proba = self.pipeline.predict_proba(x)
        classes = list(self.pipeline.classes_)
        return np.asarray(proba[:, [classes.index(c) for c in self.labels]])

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
