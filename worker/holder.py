"""The per-process model holder: the active model version, its router and each catalogue's
in-memory index, loaded once after the fork and followed without a restart.

Every task calls :meth:`ModelHolder.snapshot` first: one cheap query for the active model
version and the catalogue's index generation. A model switch reloads the model; a new
generation reloads that catalogue's vectors. A snapshot is immutable, so a task that holds
one never mixes two models even if another thread reloads meanwhile.

Loading a catalogue (its vectors from the database, its index and graphs) takes seconds to
minutes for a large one. :meth:`ModelHolder.warm` does it for every indexed catalogue when a
query worker process starts (a background thread, ``FIR_WORKER_WARM_INDEXES``), so the first
queries do not wait for it. A query that needs a catalogue being built waits for that build
instead of repeating it; a query for another catalogue does not wait.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import services, stats
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
        # one load per catalogue at a time (module docstring); catalogues load independently
        self._build_locks: dict[int, threading.Lock] = {}
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
                            max_pixels=self.settings.max_image_pixels, jpeg_decode=self.settings.jpeg_decode)
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

    def state(self, session: Session, catalogue_id: int) -> tuple[int, int]:
        """(the active model version's id, the catalogue's index generation under it), read in
        the caller's transaction: what :meth:`snapshot` must be current with."""
        state = services.active_index_state(session, catalogue_id)
        if state is None:
            raise NoActiveModel("no active model version; train one and activate it (`fir models activate`)")
        return state

    def snapshot(self, catalogue_id: int, state: tuple[int, int] | None = None) -> Snapshot:
        """The catalogue's engine under the active model, current with ``state`` (:meth:`state`,
        read here when not given: a query's worker reads it in the transaction that claims
        the job)."""
        if state is None:
            with session_scope(self.settings) as session:  # one read for the version and the generation
                state = self.state(session, catalogue_id)
        active_id, generation = state
        version = self._loaded(active_id)
        cached = self._cached(catalogue_id, version, generation)
        if cached is not None:
            return cached
        with self._lock:
            build_lock = self._build_locks.setdefault(catalogue_id, threading.Lock())
        with build_lock:
            cached = self._cached(catalogue_id, version, generation)  # built while this call waited
            if cached is not None:
                return cached
            return self._build(catalogue_id, version, generation)

    def _cached(self, catalogue_id: int, version: LoadedVersion, generation: int) -> Snapshot | None:
        with self._lock:
            cached = self._catalogues.get(catalogue_id)
        if cached is not None and cached.version is version and cached.generation == generation:
            return cached
        return None

    def _build(self, catalogue_id: int, version: LoadedVersion, generation: int) -> Snapshot:
        t0 = time.perf_counter()
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
        log.info("catalogue %d: %d vectors loaded (generation %d) in %.1f s", catalogue_id, len(ids), generation,
                 time.perf_counter() - t0)
        return snap

    def warm(self) -> list[int]:
        """Loads the active model version and every catalogue indexed with it (vectors, index,
        graphs), as the first query of each would; returns the catalogues loaded. A catalogue
        that fails to load is logged and skipped (its first query reports the error)."""
        with session_scope(self.settings) as session:
            active_id = self._active_id(session)
            generations = services.list_index_generations(session)
            metrics = {c.id: c.default_metric for c in services.list_catalogues(session)}
            sizes = {c.catalogue_id: c.indexed for c in stats.catalogue_sizes(session, active_id)}
            last = stats.last_queried(session)
        indexed = [c for (c, v), g in generations.items() if v == active_id and g >= 1 and c in metrics]
        chosen, skipped = warm_order({c: sizes.get(c, 0) for c in indexed}, last, self.settings.worker_warm_max_items)
        if skipped:
            log.info("warm-up: catalogues %s left for their first query (FIR_WORKER_WARM_MAX_ITEMS=%d)",
                     skipped, self.settings.worker_warm_max_items)
        loaded = []
        for catalogue_id in chosen:
            try:
                # the index for the catalogue's default metric, graphs included
                self.snapshot(catalogue_id).engine.index(metrics[catalogue_id])  # type: ignore[arg-type]
            except FirError as exc:
                log.warning("warm-up: catalogue %d not loaded: %s", catalogue_id, exc.message)
                continue
            loaded.append(catalogue_id)
        return loaded

    def warm_model(self) -> None:
        """Loads the active model version and runs one forward of a blank image: the first
        query would otherwise pay for the framework's first-call set-up (kernels, memory pools,
        the calling thread's compute threads, so call it on the thread that answers queries)."""
        self.version().embedder.warm()


def warm_order(sizes: dict[int, int], last_queried: dict[int, datetime],
               max_items: int) -> tuple[list[int], list[int]]:
    """Which catalogues a warm-up loads, in order, and which it leaves: the most recently
    queried first, then those never queried (smallest first), each while the items loaded stay
    within ``max_items`` (0: no cap; a catalogue too large for what is left is skipped, and a
    smaller one after it may still fit)."""
    def key(c: int) -> tuple[int, float, int, int]:
        when = last_queried.get(c)
        if when is None:
            return (1, 0.0, sizes[c], c)
        if when.tzinfo is None:  # SQLite hands back naive UTC times
            when = when.replace(tzinfo=UTC)
        return (0, -when.timestamp(), sizes[c], c)

    chosen, skipped, held = [], [], 0
    for c in sorted(sizes, key=key):
        if max_items and held + sizes[c] > max_items:
            skipped.append(c)
            continue
        chosen.append(c)
        held += sizes[c]
    return chosen, skipped


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
