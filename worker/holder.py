"""The per-process model holder: the active model version, its router and each catalogue's
in-memory index, loaded once after the fork and followed without a restart.

Every task calls :meth:`ModelHolder.snapshot` first: one cheap query for the active model
version and the catalogue's index generation. A model switch reloads the model; a new
generation reloads that catalogue's vectors. A snapshot is immutable, so a task that holds
one never mixes two models even if another thread reloads meanwhile.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import services
from shared.db.session import session_scope
from shared.engine import RetrievalEngine
from shared.errors import FirError, NotFound
from shared.search.ann import IndexOptions
from shared.vision.embed import Embedder
from shared.vision.features import FeatureSet
from shared.vision.modelfile import LoadedModel, load_model
from shared.vision.router import Router

log = logging.getLogger(__name__)


class NoActiveModel(FirError):
    code = "no_active_model"
    http_status = 409


@dataclass(frozen=True)
class LoadedVersion:
    version_id: int
    model: LoadedModel
    router: Router | None
    embedder: Embedder


@dataclass(frozen=True)
class Snapshot:
    version: LoadedVersion
    catalogue_id: int
    generation: int
    engine: RetrievalEngine
    item_ids: npt.NDArray[np.int64]


class ModelHolder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._version: LoadedVersion | None = None
        self._catalogues: dict[int, Snapshot] = {}

    def _load_version(self, version_id: int) -> LoadedVersion:
        with session_scope(self.settings) as session:
            info = services.get_model_version(session, version_id)
        if not info.checkpoint_path:
            raise NotFound(f"model version {version_id} has no checkpoint")
        model = load_model(Path(info.checkpoint_path))
        router = Router.load(Path(info.router_path), expect_model_id=model.model_id) if info.router_path else None
        embedder = Embedder(model.net, model.meta.backbone, model.meta.image_size,
                            device=self.settings.device, precision=self.settings.precision,
                            max_pixels=self.settings.max_image_pixels)
        log.info("loaded model version %d (%s, %s)", version_id, model.model_id, embedder.describe())
        return LoadedVersion(version_id, model, router, embedder)

    def _active_id(self, session: Session) -> int:
        active = services.get_active_model_version(session)
        if active is None:
            raise NoActiveModel("no active model version; train one and activate it (`fir models activate`)")
        return active.id

    def _loaded(self, version_id: int) -> LoadedVersion:
        with self._lock:
            if self._version is None or self._version.version_id != version_id:
                self._version = self._load_version(version_id)
                self._catalogues.clear()
            return self._version

    def version(self) -> LoadedVersion:
        """The active model version, loaded (reloaded after a switch)."""
        with session_scope(self.settings) as session:
            active_id = self._active_id(session)
        return self._loaded(active_id)

    def snapshot(self, catalogue_id: int) -> Snapshot:
        with session_scope(self.settings) as session:  # one read for the version and the generation
            active_id = self._active_id(session)
            generation = services.get_index_generation(session, catalogue_id, active_id)
        version = self._loaded(active_id)
        with self._lock:
            cached = self._catalogues.get(catalogue_id)
            if cached is not None and cached.version is version and cached.generation == generation:
                return cached
        with session_scope(self.settings) as session:
            ids, vectors, categories = services.load_vectors(session, catalogue_id, version.version_id)
            infos = services.get_items(session, ids.tolist())
        feats = FeatureSet(
            vectors=vectors if len(ids) else np.zeros((0, version.model.net.feature_dim), np.float32),
            keys=[infos[int(i)].external_key for i in ids],
            categories=list(categories),
            splits=[""] * len(ids),
            paths=[infos[int(i)].location or "" for i in ids],
            model_id=version.model.model_id,
            backbone=version.model.meta.backbone,
        )
        engine = RetrievalEngine(version.model, feats, version.router, embedder=version.embedder,
                                 index_options=IndexOptions.from_settings(self.settings, version.embedder.device))
        snap = Snapshot(version, catalogue_id, generation, engine, ids)
        with self._lock:
            self._catalogues[catalogue_id] = snap
        log.info("catalogue %d: %d vectors loaded (generation %d)", catalogue_id, len(ids), generation)
        return snap


_holder: ModelHolder | None = None


def get_holder(settings: Settings) -> ModelHolder:
    """The process's holder (created lazily; safe to call twice)."""
    global _holder
    if _holder is None:
        _holder = ModelHolder(settings)
    return _holder


def reset_holder() -> None:
    global _holder
    _holder = None
