"""Feature sets: the vectors of a dataset, with their keys, categories, splits and the
identity of the model that made them. Stored as one ``.npz`` file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.data.readers import Sample
from shared.errors import InvalidInput, ModelMismatch, NotFound
from shared.vision.embed import Embedder

FORMAT = "fir-features/1"


@dataclass
class FeatureSet:
    vectors: npt.NDArray[np.float32]  # [n, d]
    keys: list[str]
    categories: list[str]
    splits: list[str]  # "" where unknown
    paths: list[str]
    model_id: str
    backbone: str
    bad: dict[str, str] = field(default_factory=dict)  # key -> reason, images that failed

    def __post_init__(self) -> None:
        n = len(self.vectors)
        for name in ("keys", "categories", "splits", "paths"):
            if len(getattr(self, name)) != n:
                raise InvalidInput(f"feature set: {name} has {len(getattr(self, name))} entries for {n} vectors")

    def __len__(self) -> int:
        return len(self.vectors)

    def subset(self, mask: npt.NDArray[np.bool_] | Sequence[bool]) -> FeatureSet:
        m = np.asarray(mask, dtype=bool)
        pick = np.flatnonzero(m)
        return FeatureSet(
            vectors=self.vectors[pick],
            keys=[self.keys[i] for i in pick],
            categories=[self.categories[i] for i in pick],
            splits=[self.splits[i] for i in pick],
            paths=[self.paths[i] for i in pick],
            model_id=self.model_id,
            backbone=self.backbone,
        )

    def by_split(self, *splits: str) -> FeatureSet:
        wanted = set(splits)
        return self.subset([s in wanted for s in self.splits])

    def check_model(self, model_id: str) -> None:
        if model_id != self.model_id:
            raise ModelMismatch(
                f"these features were made by model {self.model_id} ({self.backbone}), "
                f"not by model {model_id}; re-extract them with `fir extract`"
            )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"format": FORMAT, "model_id": self.model_id, "backbone": self.backbone,
                                "bad": self.bad}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            vectors=self.vectors,
            keys=np.asarray(self.keys, dtype=str),
            categories=np.asarray(self.categories, dtype=str),
            splits=np.asarray(self.splits, dtype=str),
            paths=np.asarray(self.paths, dtype=str),
            meta=np.asarray(json.dumps(meta)),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FeatureSet:
        if not Path(path).is_file():
            raise NotFound(f"feature file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != FORMAT:
                    raise InvalidInput(f"{path} is not a FIR feature file")
                return cls(
                    vectors=z["vectors"].astype(np.float32, copy=False),
                    keys=z["keys"].tolist(),
                    categories=z["categories"].tolist(),
                    splits=z["splits"].tolist(),
                    paths=z["paths"].tolist(),
                    model_id=str(meta["model_id"]),
                    backbone=str(meta["backbone"]),
                    bad=dict(meta.get("bad") or {}),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise InvalidInput(f"{path} is not a readable FIR feature file: {exc}") from exc


def extract_features(
    embedder: Embedder,
    samples: Sequence[Sample],
    model_id: str,
    batch_size: int = 16,
    workers: int = 1,
    progress: bool = True,
) -> FeatureSet:
    """Embed every sample; images that fail to decode are recorded in ``bad``, not fatal."""
    result = embedder.embed_paths([s.path for s in samples], batch_size=batch_size,
                                  workers=workers, progress=progress, desc="extracting")
    kept = [samples[i] for i in result.ok]
    return FeatureSet(
        vectors=result.vectors,
        keys=[s.key for s in kept],
        categories=[str(s.category) if s.category is not None else "" for s in kept],
        splits=[s.split or "" for s in kept],
        paths=[str(s.path) for s in kept],
        model_id=model_id,
        backbone=embedder.backbone,
        bad={samples[i].key: reason for i, reason in result.errors.items()},
    )
