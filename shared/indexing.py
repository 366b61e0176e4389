"""Incremental indexing of a catalogue into the database.

Scan the catalogue's source -> hash every file (sha256) -> upsert items (new, changed,
unchanged) -> embed only what has no vector for the active model version -> route items
without a given category -> mark what disappeared as removed -> bump the index generation,
so that workers reload. Unchanged images are never embedded twice; an image that fails to
decode is recorded as bad with its reason and the run goes on.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shared.config import Settings
from shared.data.readers import DatasetScan, Sample, read_dataset
from shared.db import listing, services
from shared.db.catalogues import BadItem, ScannedItem
from shared.db.session import session_scope
from shared.dedup.phash import phash_file
from shared.errors import BadImage, NotFound
from shared.imaging import probe_image
from shared.vision.embed import Embedder, EmbedResult, merge_results
from shared.vision.router import Router

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class IndexReport:
    catalogue_id: int
    model_version_id: int
    scanned: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    bad: int = 0
    embedded: int = 0
    generation: int = 0
    bad_reasons: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["bad_reasons"] = dict(list(self.bad_reasons.items())[:50])
        return out

    def summary(self) -> str:
        return (f"{self.scanned} scanned: {self.new} new, {self.changed} changed, {self.unchanged} unchanged, "
                f"{self.removed} removed, {self.bad} bad; {self.embedded} embedded; "
                f"index generation {self.generation}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def scan_samples(samples: Sequence[Sample], max_pixels: int,
                 show_bar: bool = False) -> tuple[list[ScannedItem], list[BadItem]]:
    """Hash and probe (header only) every sample."""
    from tqdm import tqdm

    good: list[ScannedItem] = []
    bad: list[BadItem] = []
    for s in tqdm(samples, desc="scanning", unit="file", disable=not show_bar, leave=False):
        try:
            size = s.path.stat().st_size
            sha = file_sha256(s.path)
        except OSError as exc:
            bad.append(BadItem(key=s.key, reason=f"unreadable: {exc}", location=str(s.path)))
            continue
        try:
            _, width, height = probe_image(s.path, max_pixels=max_pixels)
        except BadImage as exc:
            bad.append(BadItem(key=s.key, reason=exc.reason, sha256=sha, size_bytes=size, location=str(s.path)))
            continue
        meta = dict(s.metadata) if s.metadata else None
        if s.split:
            meta = {**(meta or {}), "split": s.split}
        good.append(ScannedItem(key=s.key, sha256=sha, location=str(s.path), width=width, height=height,
                                size_bytes=size, given_category=s.category, meta=meta,
                                phash=_phash_or_none(s.path)))
    return good, bad


def _phash_or_none(path: Path) -> str | None:
    """The image's perceptual hash for dedup, decoded cheaply (JPEG at 1/8 scale where it can
    be); None when it does not decode (embedding then records the image as bad)."""
    try:
        return phash_file(str(path))
    except (BadImage, OSError):
        return None


def read_source(source_kind: str, source_path: str) -> DatasetScan | None:
    """The catalogue's source as a dataset scan; ``None`` for a catalogue fed only by uploads."""
    if not source_path:
        return None
    path = Path(source_path)
    if not path.exists():
        raise NotFound(f"the catalogue's source {source_path} does not exist")
    return read_dataset(path, "manifest" if source_kind == "manifest" else "auto")


class _ChunkWriter:
    """Writes embedded chunks to the database in a background thread, so that the write of
    chunk i overlaps with embedding chunk i + 1. At most ``depth`` chunks wait; the first
    error stops the writer and is raised to the producer (at its next ``submit`` or at
    ``close``). Writes happen in submission order, one transaction per chunk."""

    def __init__(self, write: Callable[[object], None], depth: int = 2) -> None:
        self._write = write
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fir-index-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as exc:  # noqa: BLE001 - handed to the producer
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, item: object) -> None:
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Wait for every submitted chunk to be written; raise the writer's error if any."""
        self._queue.put(_STOP)
        self._thread.join()
        self._raise()


_STOP = object()


@dataclass
class _Chunk:
    ids: list[int]  # every item of the chunk, embedded or bad
    result: EmbedResult  # positions relative to the chunk


def embed_missing(
    settings: Settings,
    catalogue_id: int,
    model_version_id: int,
    embedder: Embedder,
    router: Router | None,
    report: IndexReport,
    progress: Progress | None = None,
    batch_size: int = 64,
    show_bar: bool = False,
    embed_batch: int | None = None,
) -> None:
    """Embed every active item with no vector for the model version.

    One loader runs over all the items (``settings.loader_workers`` processes decoding ahead
    of the model, ``embed_batch`` images per forward, default ``settings.batch_size``); every
    ``batch_size`` items form a chunk, committed in its own transaction with its progress (so a
    crash loses at most the chunks in flight) by a writer thread while the next chunk embeds.
    Images that fail to decode are recorded as bad with their reason.
    """
    with session_scope(settings) as session:
        todo = services.items_missing_embeddings(session, catalogue_id, model_version_id)
        infos = services.get_items(session, todo)
    total = len(todo)
    if progress:
        progress(0, total)
    if not todo:
        return
    done = 0

    def write(item: object) -> None:
        nonlocal done
        assert isinstance(item, _Chunk)
        ids, result = item.ids, item.result
        ok_ids = [ids[j] for j in result.ok]
        bad = [BadItem(key=infos[ids[j]].external_key, reason=reason, sha256=infos[ids[j]].sha256,
                       size_bytes=infos[ids[j]].size_bytes, location=infos[ids[j]].location)
               for j, reason in result.errors.items()]
        # IMMEDIATE: take SQLite's write lock up front, so two indexing processes queue on the
        # busy timeout instead of failing to upgrade a read transaction ("database is locked")
        with session_scope(settings, immediate=True) as session:
            if ok_ids:
                services.write_embeddings(session, model_version_id, ok_ids, result.vectors)
                if router is not None:
                    unlabelled = [k for k, i in enumerate(ok_ids) if not infos[i].given_category]
                    if unlabelled:
                        cats, _ = router.route(result.vectors[unlabelled])
                        services.set_predicted_categories(
                            session, {ok_ids[k]: c for k, c in zip(unlabelled, cats, strict=True)})
            if bad:
                services.record_bad_items(session, catalogue_id, bad)
        done += len(ids)
        report.embedded += len(ok_ids)
        report.bad += len(bad)
        report.bad_reasons.update({b.key: b.reason for b in bad})
        if progress:
            progress(done, total)

    paths = [Path(infos[i].location or "") for i in todo]
    compiled = use_compile(settings, embedder, total)
    writer = _ChunkWriter(write)
    pending: list[EmbedResult] = []
    start = 0  # position in ``todo`` of the pending chunk's first item
    covered = 0  # items the pending batches cover
    try:
        for part in embedder.iter_paths(paths, batch_size=embed_batch or settings.batch_size,
                                        workers=settings.loader_workers, progress=show_bar, desc="embedding",
                                        compiled=compiled):
            pending.append(part)
            covered += len(part.ok) + len(part.errors)
            if covered >= batch_size:
                writer.submit(_chunk(todo, start, covered, pending, embedder.feature_dim))
                start, covered, pending = start + covered, 0, []
        if covered:
            writer.submit(_chunk(todo, start, covered, pending, embedder.feature_dim))
    finally:
        writer.close()


def _chunk(todo: list[int], start: int, count: int, parts: list[EmbedResult], dim: int) -> _Chunk:
    merged = merge_results(parts, dim)
    rel = EmbedResult(merged.vectors, merged.ok - start, {i - start: r for i, r in merged.errors.items()})
    return _Chunk(ids=todo[start : start + count], result=rel)


def use_compile(settings: Settings, embedder: Embedder, images: int) -> bool:
    """Whether a bulk embedding of ``images`` images runs through the compiled forward
    (``settings.compile``; only where :meth:`Embedder.can_compile` allows)."""
    if settings.compile == "off" or not embedder.can_compile():
        return False
    wanted = settings.compile == "on" or images >= settings.compile_min_images
    if wanted:
        log.info("embedding %d images through torch.compile (first batch waits for the compile)", images)
    return wanted


def index_catalogue(
    settings: Settings,
    catalogue_id: int,
    model_version_id: int,
    embedder: Embedder,
    router: Router | None,
    full: bool = False,
    progress: Progress | None = None,
    show_bar: bool = False,
) -> IndexReport:
    """Bring the catalogue's index up to date with its source for one model version."""
    report = IndexReport(catalogue_id=catalogue_id, model_version_id=model_version_id)
    with session_scope(settings) as session:
        cat = services.get_catalogue(session, catalogue_id)
    scan = read_source(cat.source_kind, cat.source_path)
    if scan is not None:
        good, bad = scan_samples(scan.samples, settings.max_image_pixels, show_bar=show_bar)
        report.scanned = len(scan.samples)
        with session_scope(settings, immediate=True) as session:  # read-then-write: lock at BEGIN
            up = services.upsert_items(session, catalogue_id, good)
            report.new, report.changed, report.unchanged = up.new, up.changed, up.unchanged + up.reactivated
            if bad:
                services.record_bad_items(session, catalogue_id, bad)
                report.bad += len(bad)
                report.bad_reasons.update({b.key: b.reason for b in bad})
            uploaded = listing.uploaded_item_keys(session, catalogue_id,
                                                  str(settings.resolved_home() / "images"))
            report.removed = services.mark_unseen_removed(
                session, catalogue_id, {g.key for g in good} | {b.key for b in bad} | uploaded)
    if full:
        with session_scope(settings, immediate=True) as session:
            listing.delete_embeddings(session, catalogue_id, model_version_id)
    embed_missing(settings, catalogue_id, model_version_id, embedder, router, report, progress,
                  batch_size=max(settings.batch_size * 4, 64), show_bar=show_bar)
    with session_scope(settings, immediate=True) as session:
        report.generation = services.bump_index_generation(session, catalogue_id, model_version_id)
    log.info("catalogue %d indexed: %s", catalogue_id, report.summary())
    return report


def vectors_for(settings: Settings, catalogue_id: int, model_version_id: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with session_scope(settings) as session:
        return services.load_vectors(session, catalogue_id, model_version_id)
