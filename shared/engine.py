"""The retrieval engine: a loaded model, its router and its catalogue index, answering
"what in my catalogue looks like this photo?".

Used by the ``fir`` command line and, held once per process, by the workers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from shared.errors import InvalidInput
from shared.imaging import DEFAULT_MAX_PIXELS
from shared.search.ann import IndexOptions, resolve_search_device
from shared.search.index import METRICS, Metric, ShardedIndex
from shared.search.routing import check_mode, plan_routes
from shared.vision.embed import Embedder
from shared.vision.features import FeatureSet
from shared.vision.modelfile import LoadedModel, load_model
from shared.vision.router import Router

MAX_K = 10_000


@dataclass
class Match:
    rank: int
    index: int  # row in the catalogue's feature set
    key: str
    category: str
    score: float
    path: str


@dataclass
class Answer:
    matches: list[Match]
    route: list[str] | None  # categories searched; None = whole catalogue
    probabilities: dict[str, float] = field(default_factory=dict)
    model_id: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)


def check_query_params(k: int, metric: str, routing: str) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k > MAX_K:
        raise InvalidInput(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if metric not in METRICS:
        raise InvalidInput(f"unknown metric {metric!r} (expected one of {', '.join(METRICS)})")
    check_mode(routing)


class RetrievalEngine:
    def __init__(self, model: LoadedModel, catalogue: FeatureSet, router: Router | None,
                 device: str = "auto", precision: str = "auto", embedder: Embedder | None = None,
                 index_options: IndexOptions | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        catalogue.check_model(model.model_id)
        if router is not None:
            router.check_model(model.model_id)
        self.model = model
        self.catalogue = catalogue
        self.router = router
        self.embedder = embedder or Embedder(model.net, model.meta.backbone, model.meta.image_size,
                                             device=device, precision=precision, max_pixels=max_pixels)
        # default: the index on the model's GPU when it runs on one (search_device=auto)
        self.index_options = index_options or IndexOptions(
            device=resolve_search_device("auto", self.embedder.device))
        self._indexes: dict[str, ShardedIndex] = {}
        # one build per metric, also across threads; the metrics build side by side
        self._index_locks = {m: threading.Lock() for m in METRICS}

    @classmethod
    def from_files(cls, model: Path, features: Path, router: Path | None,
                   device: str = "auto", precision: str = "auto",
                   index_options: IndexOptions | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> RetrievalEngine:
        loaded = load_model(model)
        feats = FeatureSet.load(features)
        rtr = Router.load(router, expect_model_id=loaded.model_id) if router is not None else None
        return cls(loaded, feats, rtr, device=device, precision=precision, index_options=index_options,
                   max_pixels=max_pixels)

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def categories(self) -> list[str]:
        return sorted(set(self.catalogue.categories))

    def index(self, metric: Metric) -> ShardedIndex:
        """The catalogue's index for ``metric``, built on first use (a worker's warm-up builds
        it in the background; a query that asks meanwhile waits for that build)."""
        index = self._indexes.get(metric)
        if index is None:
            with self._index_locks[metric]:
                index = self._indexes.get(metric)
                if index is None:
                    index = ShardedIndex(self.catalogue.vectors, self.catalogue.categories, metric,
                                         options=self.index_options)
                    self._indexes[metric] = index
        return index

    def query_vectors(
        self,
        vectors: npt.NDArray[np.float32],
        k: int = 10,
        metric: str = "cosine",
        routing: str = "svm-fallback",
        categories: Sequence[str | None] | None = None,
        threshold: float = 0.6,
    ) -> list[Answer]:
        check_query_params(k, metric, routing)
        n = len(vectors)
        t0 = time.perf_counter()
        probs = labels = None
        if routing in ("svm", "svm-fallback"):
            if self.router is None:
                raise InvalidInput(f"routing {routing!r} needs a router; train one with `fir train-router`")
            probs = self.router.predict_proba(vectors)
            labels = self.router.labels
        t1 = time.perf_counter()
        routes = plan_routes(routing, n, labels, probs, categories, threshold, known=self.categories)
        result = self.index(metric).search(vectors, k, routes)  # type: ignore[arg-type]
        t2 = time.perf_counter()
        answers = []
        for i in range(n):
            matches = [
                Match(rank=r + 1, index=idx, key=self.catalogue.keys[idx],
                      category=self.catalogue.categories[idx], score=float(score),
                      path=self.catalogue.paths[idx])
                for r, (idx, score) in enumerate(result.row(i))
            ]
            route = routes[i]
            answers.append(Answer(
                matches=matches,
                route=list(route) if route is not None else None,
                probabilities=({lab: float(p) for lab, p in zip(labels, probs[i], strict=True)}
                               if labels is not None and probs is not None else {}),
                model_id=self.model_id,
                timings_ms={"router": (t1 - t0) * 1000 / max(n, 1), "search": (t2 - t1) * 1000 / max(n, 1)},
            ))
        return answers

    def query_images(self, images: Sequence[Image.Image], **kwargs: object) -> list[Answer]:
        """Answers for decoded images (resized and cropped here)."""
        t0 = time.perf_counter()
        vectors = self.embedder.embed_images(list(images))
        return self._answer(vectors, (time.perf_counter() - t0) * 1000 / max(len(images), 1), **kwargs)

    def query_paths(self, paths: Sequence[Path], **kwargs: object) -> list[Answer]:
        """Answers for image files, decoded as indexing decodes them (:meth:`Embedder.prepare`,
        what the worker does): a catalogue photo sent as a query gets the vector it was indexed
        with. Raises :class:`~shared.errors.BadImage` for a file that is not a readable image."""
        t0 = time.perf_counter()
        crops = [self.embedder.prepare(Path(p)) for p in paths]
        vectors = self.embedder.embed_crops(crops, batch_size=max(1, min(len(crops), 32)))
        return self._answer(vectors, (time.perf_counter() - t0) * 1000 / max(len(crops), 1), **kwargs)

    def _answer(self, vectors: npt.NDArray[np.float32], embed_ms: float, **kwargs: object) -> list[Answer]:
        answers = self.query_vectors(vectors, **kwargs)  # type: ignore[arg-type]
        for a in answers:
            a.timings_ms["embed"] = embed_ms
        return answers
