"""A catalogue's de-duplication run: load from the database -> compute -> store.

The vectors are the ACTIVE model version's; items without a vector take part in exact (content
hash) grouping only. With ``use_phash``, items that have no perceptual hash yet (indexed
before hashes were computed at scan time) get one first, stored on the item. The run, its
groups and their members are written in one transaction at the end, so a failed run leaves
nothing half-written; a job's run is stored once (a redelivered job finds it).

Progress goes to a callback ``progress(done, total)``; when it returns False (the job was
cancelled) the run stops with :class:`Cancelled`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from shared.config import Settings
from shared.db import dedup as store
from shared.db import services
from shared.db.session import session_scope
from shared.dedup.detect import (
    DEFAULT_PHASH_MAX_DISTANCE,
    DEFAULT_THRESHOLD,
    DedupConfig,
    DedupInput,
    DedupResult,
    find_duplicates,
)
from shared.dedup.groups import KEEP_RULES, ItemFacts
from shared.dedup.pairs import check_threshold
from shared.dedup.phash import parse, phash_file
from shared.errors import BadImage, FirError, InvalidInput, UnknownCategory

log = logging.getLogger(__name__)

Progress = Callable[[int, int], bool | None]


class Cancelled(FirError):
    code = "cancelled"
    http_status = 409


class NoActiveModel(FirError):
    code = "no_active_model"
    http_status = 409


@dataclass(frozen=True)
class DedupRequest:
    """What a client asks for (the job's params, less the catalogue id)."""

    category: str | None = None
    only_new: bool = False
    since: str | None = None  # ISO time; default for only_new: the previous run's start
    threshold: float | None = None  # default DEFAULT_THRESHOLD
    thresholds: dict[str, float] = field(default_factory=dict)  # per category
    use_phash: bool = False
    phash_max_distance: int = DEFAULT_PHASH_MAX_DISTANCE
    keep_rule: str = "oldest"

    def __post_init__(self) -> None:
        if self.threshold is not None:
            check_threshold(self.threshold)
        if self.keep_rule not in KEEP_RULES:
            raise InvalidInput(f"keep_rule must be one of {', '.join(KEEP_RULES)}")
        if self.since is not None:
            self.since_time()

    def since_time(self) -> datetime | None:
        if self.since is None:
            return None
        try:
            value = datetime.fromisoformat(self.since)
        except ValueError as exc:
            raise InvalidInput(f"since must be an ISO 8601 time, not {self.since!r}") from exc
        if value.tzinfo is None:
            raise InvalidInput("since needs a time zone (e.g. 2026-01-31T00:00:00+00:00)")
        return value

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DedupRequest:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in params.items() if k in known and v is not None}
        if "thresholds" in values:
            values["thresholds"] = {str(k): float(v) for k, v in dict(values["thresholds"]).items()}
        return cls(**values)

    def as_params(self) -> dict[str, Any]:
        return asdict(self)

    def config(self) -> DedupConfig:
        return DedupConfig(
            threshold=self.threshold if self.threshold is not None else DEFAULT_THRESHOLD,
            thresholds=dict(self.thresholds),
            use_phash=self.use_phash,
            phash_max_distance=self.phash_max_distance,
            keep_rule=self.keep_rule,
        )

    def scope(self) -> dict[str, Any]:
        """The params that make two runs comparable ("new since the previous run")."""
        return {"category": self.category}


@dataclass
class DedupReport:
    run_id: int
    catalogue_id: int
    model_version_id: int
    groups: int
    dismissed: int
    new_since_previous: int
    previous_run_id: int | None
    stats: dict[str, Any]
    reused: bool = False  # the job's run was already stored

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        s = self.stats
        return (f"dedup run {self.run_id}: {s.get('items', 0)} items ({s.get('vectors', 0)} with vectors), "
                f"{self.groups} groups ({s.get('exact_groups', 0)} exact, {s.get('near_groups', 0)} near; "
                f"{self.new_since_previous} new since the previous run, {self.dismissed} dismissed before) "
                f"in {s.get('seconds', 0):.1f} s")


class _Ticker:
    """Forwards progress at most every ``every`` seconds (and always the last step)."""

    def __init__(self, progress: Progress | None, every: float = 0.5) -> None:
        self.progress = progress
        self.every = every
        self.last = 0.0
        self.offset = 0
        self.total = 0

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        final = done >= total
        if not final and now - self.last < self.every:
            return
        self.last = now
        if self.progress(self.offset + done, self.total) is False:
            raise Cancelled("the dedup job was cancelled")


def _fill_phashes(settings: Settings, items: list[store.DedupItem], ticker: _Ticker) -> dict[int, str]:
    """Perceptual hashes for items that have none (from their image files)."""
    todo = [it for it in items if it.phash is None and it.location]
    found: dict[int, str] = {}
    for n, it in enumerate(todo, start=1):
        try:
            found[it.id] = phash_file(str(it.location))
        except (BadImage, OSError) as exc:
            log.warning("no perceptual hash for item %d: %s", it.id, exc)
        ticker(n, len(todo))
    if found:
        with session_scope(settings) as session:
            store.set_item_phashes(session, found)
    return found


def run_dedup(
    settings: Settings,
    catalogue_id: int,
    request: DedupRequest | None = None,
    *,
    job_id: int | None = None,
    progress: Progress | None = None,
) -> DedupReport:
    """Run a dedup of the catalogue with the active model's vectors and store it."""
    request = request or DedupRequest()
    config = request.config()
    t0 = time.perf_counter()
    with session_scope(settings) as session:
        if job_id is not None:
            done = store.dedup_run_for_job(session, job_id)
            if done is not None:
                return _report_of(session, done, reused=True)
        services.get_catalogue(session, catalogue_id)
        active = services.get_active_model_version(session)
        if active is None:
            raise NoActiveModel("no active model version; train one and activate it (`fir models activate`)")
        items = store.load_dedup_items(session, catalogue_id, category=request.category)
        if request.category is not None and not items:
            raise UnknownCategory(f"catalogue {catalogue_id} has no active items in category {request.category!r}")
        ids, vectors, _ = services.load_vectors(session, catalogue_id, active.id)
        # "New since the previous run" compares with the last full run of the same scope;
        # only_new looks at what came since the last run of that scope, full or not.
        previous = store.previous_dedup_run(session, catalogue_id, scope={**request.scope(), "only_new": False})
        last = store.previous_dedup_run(session, catalogue_id, scope=request.scope())
        is_new = None
        since = request.since_time()
        if request.only_new:
            since = since or (last.created_at if last is not None else None)
            if since is not None:
                changed = store.items_changed_since(session, catalogue_id, active.id, since)
                is_new = np.asarray([it.id in changed for it in items], dtype=bool)
    item_ids = np.asarray([it.id for it in items], dtype=np.int64)
    # Vectors of the items in scope (load_vectors and the items are both ordered by id).
    pos = np.searchsorted(item_ids, ids)
    pos_clipped = np.minimum(pos, max(len(item_ids) - 1, 0))
    in_scope = (pos < len(item_ids)) & (item_ids[pos_clipped] == ids) if len(item_ids) else np.zeros(len(ids), bool)
    if not in_scope.all():
        vectors = vectors[in_scope]
    vector_rows = pos[in_scope].astype(np.int64)
    del ids

    ticker = _Ticker(progress)
    phash_todo = sum(1 for it in items if it.phash is None and it.location) if request.use_phash else 0
    query_rows = int(is_new.sum()) if is_new is not None else len(vector_rows)
    ticker.total = phash_todo + query_rows
    hashes: dict[int, str] = {}
    if phash_todo:
        hashes = _fill_phashes(settings, items, ticker)
        ticker.offset = phash_todo
    data = DedupInput(
        item_ids=item_ids,
        sha256=[it.sha256 for it in items],
        phash=[parse(hashes.get(it.id, it.phash)) for it in items],
        categories=[it.category for it in items],
        facts=[ItemFacts(it.id, it.first_seen_at, it.width, it.height, it.meta, it.category or None)
               for it in items],
        vectors=vectors,
        vector_rows=vector_rows,
        is_new=is_new,
    )
    result = find_duplicates(data, config, progress=ticker)
    del data, vectors
    params = {
        **request.as_params(),
        "threshold": config.threshold,
        "since": since.isoformat() if since is not None else None,
        "previous_run_id": previous.id if previous is not None else None,
    }
    with session_scope(settings) as session:
        if job_id is not None and services.get_job(session, job_id).terminal:
            raise Cancelled(f"job {job_id} was cancelled or has finished meanwhile")
        report = store_result(session, catalogue_id, active.id, result, params=params, job_id=job_id,
                              previous_run_id=previous.id if previous is not None else None)
    report.stats["seconds_total"] = round(time.perf_counter() - t0, 3)
    log.info("catalogue %d: %s", catalogue_id, report.summary())
    return report


def store_result(
    session: Any,
    catalogue_id: int,
    model_version_id: int,
    result: DedupResult,
    *,
    params: dict[str, Any],
    job_id: int | None = None,
    previous_run_id: int | None = None,
) -> DedupReport:
    """Write a computed result as a finished run (in the caller's transaction)."""
    stats = result.stats.as_dict()
    run_id = store.create_dedup_run(session, catalogue_id, model_version_id=model_version_id,
                                    job_id=job_id, params={**params, "stats": stats})
    stored = store.add_dedup_groups(
        session, run_id,
        [store.NewGroup(kind=g.kind, representative_item_id=g.representative_item_id, category=g.category,
                        members=[store.MemberEvidence(m.item_id, m.hash_equal, m.phash_distance, m.cosine)
                                 for m in g.members])
         for g in result.groups],
        previous_run_id=previous_run_id,
    )
    store.finish_dedup_run(session, run_id)
    return DedupReport(run_id=run_id, catalogue_id=catalogue_id, model_version_id=model_version_id,
                       groups=stored.count, dismissed=stored.dismissed,
                       new_since_previous=stored.new_since_previous, previous_run_id=previous_run_id,
                       stats=stats)


def _report_of(session: Any, run: store.DedupRunInfo, reused: bool) -> DedupReport:
    counts = store.count_dedup_groups(session, run.id)
    params = run.params or {}
    return DedupReport(run_id=run.id, catalogue_id=run.catalogue_id, model_version_id=run.model_version_id or 0,
                       groups=counts["all"], dismissed=counts["dismissed"],
                       new_since_previous=counts["new_since_previous"],
                       previous_run_id=params.get("previous_run_id"), stats=dict(params.get("stats") or {}),
                       reused=reused)

