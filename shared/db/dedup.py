"""De-duplication runs, their groups and members (with evidence), and reviewers' decisions.

A group's *fingerprint* is the sha256 of its members' sorted ``item_id:sha256`` pairs: the same
items with the same content give the same fingerprint in every run, so a reviewer's decision
(stored by catalogue x fingerprint) applies again when a rerun finds the same group, and stops
applying as soon as a member changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.db._common import check_choice, chunks, json_normal, table_of, upsert_insert
from shared.db.models import (
    DEDUP_DECISIONS,
    DEDUP_KINDS,
    DedupDecision,
    DedupGroup,
    DedupMember,
    DedupRun,
    Item,
    utcnow,
)
from shared.errors import InvalidInput, NotFound

MEMBERS = table_of(DedupMember)
DECISIONS = table_of(DedupDecision)


def group_fingerprint(members: Iterable[tuple[int, str | None]]) -> str:
    """sha256 hex of the sorted ``"item_id:sha256"`` lines of a group's members."""
    lines = sorted(f"{int(item_id)}:{sha or ''}" for item_id, sha in members)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class MemberEvidence:
    """Why an item is in a group, compared with the group's representative."""

    item_id: int
    hash_equal: bool = False  # same content sha256 as the representative
    phash_distance: int | None = None  # Hamming distance of perceptual hashes
    cosine: float | None = None  # cosine similarity of features


@dataclass(frozen=True)
class DedupDecisionInfo:
    id: int
    catalogue_id: int
    fingerprint: str
    decision: str
    kept_item_id: int | None
    decided_by: str
    note: str | None
    decided_at: datetime


@dataclass(frozen=True)
class DedupGroupInfo:
    id: int
    run_id: int
    kind: str
    category: str | None
    representative_item_id: int
    fingerprint: str
    size: int
    members: list[MemberEvidence]
    decision: DedupDecisionInfo | None
    new_since_previous: bool = True
    dismissed: bool = False


def _decision_info(row: DedupDecision) -> DedupDecisionInfo:
    return DedupDecisionInfo(
        id=row.id,
        catalogue_id=row.catalogue_id,
        fingerprint=row.fingerprint,
        decision=row.decision,
        kept_item_id=row.kept_item_id,
        decided_by=row.decided_by,
        note=row.note,
        decided_at=row.decided_at,
    )


def create_dedup_run(
    session: Session,
    catalogue_id: int,
    *,
    model_version_id: int | None = None,
    job_id: int | None = None,
    params: dict[str, Any] | None = None,
) -> int:
    """Start a dedup run (thresholds etc. in ``params``); returns its id."""
    run = DedupRun(
        catalogue_id=catalogue_id,
        model_version_id=model_version_id,
        job_id=job_id,
        params=json_normal(params) if params is not None else None,
        group_count=0,
    )
    session.add(run)
    session.flush()
    return run.id


def add_dedup_group(
    session: Session,
    run_id: int,
    *,
    kind: str,
    representative_item_id: int,
    members: Sequence[MemberEvidence],
    category: str | None = None,
) -> tuple[int, str]:
    """Store one group (the representative must be among ``members``); returns (id, fingerprint)."""
    check_choice("kind", kind, DEDUP_KINDS)
    ids = [m.item_id for m in members]
    if len(ids) < 2 or len(set(ids)) != len(ids):
        raise InvalidInput("a group has at least two distinct members")
    if representative_item_id not in ids:
        raise InvalidInput("the representative must be one of the group's members")
    run = session.get(DedupRun, run_id)
    if run is None:
        raise NotFound(f"dedup run {run_id} not found")
    shas: dict[int, str | None] = {
        item_id: sha
        for item_id, sha in session.execute(
            select(Item.id, Item.sha256).where(
                Item.id.in_(ids), Item.catalogue_id == run.catalogue_id
            )
        )
    }
    if len(shas) != len(ids):
        raise InvalidInput(f"some members are not items of catalogue {run.catalogue_id}")
    fingerprint = group_fingerprint(shas.items())
    group = DedupGroup(
        run_id=run_id,
        kind=kind,
        category=category,
        representative_item_id=representative_item_id,
        fingerprint=fingerprint,
        size=len(ids),
    )
    session.add(group)
    session.flush()
    session.execute(
        MEMBERS.insert(),
        [
            {
                "group_id": group.id,
                "item_id": m.item_id,
                "hash_equal": bool(m.hash_equal),
                "phash_distance": m.phash_distance,
                "cosine": None if m.cosine is None else float(m.cosine),
            }
            for m in members
        ],
    )
    return group.id, fingerprint


def finish_dedup_run(session: Session, run_id: int) -> int:
    """Stamp the run finished and store its group count; returns the count."""
    count = int(session.scalar(select(func.count()).where(DedupGroup.run_id == run_id)) or 0)
    done = session.execute(
        update(DedupRun)
        .where(DedupRun.id == run_id)
        .values(group_count=count, finished_at=utcnow())
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise NotFound(f"dedup run {run_id} not found")
    return count


def latest_dedup_run(session: Session, catalogue_id: int) -> int | None:
    """The newest finished run of the catalogue, or None."""
    return session.scalar(
        select(DedupRun.id)
        .where(DedupRun.catalogue_id == catalogue_id, DedupRun.finished_at.is_not(None))
        .order_by(DedupRun.id.desc())
        .limit(1)
    )


def list_dedup_groups(
    session: Session, run_id: int, *, limit: int | None = None, offset: int = 0
) -> list[DedupGroupInfo]:
    """A run's groups (largest first) with members' evidence and any reviewer's decision."""
    run = session.get(DedupRun, run_id)
    if run is None:
        raise NotFound(f"dedup run {run_id} not found")
    stmt = (
        select(DedupGroup)
        .where(DedupGroup.run_id == run_id)
        .order_by(DedupGroup.size.desc(), DedupGroup.id)
        .offset(offset)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    groups = list(session.scalars(stmt))
    return _group_infos(session, run.catalogue_id, groups)


def _group_infos(
    session: Session, catalogue_id: int, groups: Sequence[DedupGroup]
) -> list[DedupGroupInfo]:
    """Groups with their members' evidence and any reviewer's decision, in the given order."""
    members: dict[int, list[MemberEvidence]] = {g.id: [] for g in groups}
    for chunk in chunks(list(members)):
        for m in session.execute(
            select(MEMBERS).where(MEMBERS.c.group_id.in_(chunk)).order_by(MEMBERS.c.item_id)
        ):
            members[m.group_id].append(
                MemberEvidence(
                    item_id=m.item_id,
                    hash_equal=bool(m.hash_equal),
                    phash_distance=m.phash_distance,
                    cosine=m.cosine,
                )
            )
    decisions = get_dedup_decisions(
        session, catalogue_id, fingerprints=[g.fingerprint for g in groups]
    )
    return [
        DedupGroupInfo(
            id=g.id,
            run_id=g.run_id,
            kind=g.kind,
            category=g.category,
            representative_item_id=g.representative_item_id,
            fingerprint=g.fingerprint,
            size=g.size,
            members=members[g.id],
            decision=decisions.get(g.fingerprint),
            new_since_previous=bool(g.new_since_previous),
            dismissed=bool(g.dismissed),
        )
        for g in groups
    ]


def record_dedup_decision(
    session: Session,
    catalogue_id: int,
    fingerprint: str,
    decision: str,
    *,
    decided_by: str,
    kept_item_id: int | None = None,
    note: str | None = None,
) -> DedupDecisionInfo:
    """Record (or replace) the reviewer's decision for a group fingerprint.

    ``keep_item`` needs ``kept_item_id``, an item of the catalogue.
    """
    check_choice("decision", decision, DEDUP_DECISIONS)
    if decision == "keep_item":
        if kept_item_id is None:
            raise InvalidInput("keep_item needs the kept item's id")
        owner = session.scalar(select(Item.catalogue_id).where(Item.id == kept_item_id))
        if owner != catalogue_id:
            raise InvalidInput(f"item {kept_item_id} is not in catalogue {catalogue_id}")
    elif kept_item_id is not None:
        raise InvalidInput(f"a {decision} decision keeps no item")
    if not decided_by:
        raise InvalidInput("a decision needs a reviewer (decided_by)")
    now = utcnow()
    stmt = upsert_insert(session, DECISIONS).values(
        catalogue_id=catalogue_id,
        fingerprint=fingerprint,
        decision=decision,
        kept_item_id=kept_item_id,
        decided_by=decided_by,
        note=note,
        decided_at=now,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[DECISIONS.c.catalogue_id, DECISIONS.c.fingerprint],
        set_={
            "decision": stmt.excluded.decision,
            "kept_item_id": stmt.excluded.kept_item_id,
            "decided_by": stmt.excluded.decided_by,
            "note": stmt.excluded.note,
            "decided_at": stmt.excluded.decided_at,
        },
    )
    session.execute(stmt)
    row = session.scalars(
        select(DedupDecision)
        .where(DedupDecision.catalogue_id == catalogue_id, DedupDecision.fingerprint == fingerprint)
        .execution_options(populate_existing=True)
    ).one()
    return _decision_info(row)


def get_dedup_decisions(
    session: Session, catalogue_id: int, *, fingerprints: Sequence[str] | None = None
) -> dict[str, DedupDecisionInfo]:
    """Decisions of a catalogue by fingerprint (all, or only those of ``fingerprints``)."""
    out: dict[str, DedupDecisionInfo] = {}
    base = select(DedupDecision).where(DedupDecision.catalogue_id == catalogue_id)
    if fingerprints is None:
        for row in session.scalars(base):
            out[row.fingerprint] = _decision_info(row)
        return out
    for chunk in chunks(sorted(set(fingerprints))):
        for row in session.scalars(base.where(DedupDecision.fingerprint.in_(chunk))):
            out[row.fingerprint] = _decision_info(row)
    return out


# ---------------------------------------------------------------------------------------------
# Runs, bulk storage and review (used by shared.dedup.run and the API)

GROUPS = table_of(DedupGroup)


@dataclass(frozen=True)
class DedupRunInfo:
    id: int
    catalogue_id: int
    model_version_id: int | None
    job_id: int | None
    params: dict[str, Any] | None
    group_count: int
    created_at: datetime
    finished_at: datetime | None


def _run_info(row: DedupRun) -> DedupRunInfo:
    return DedupRunInfo(
        id=row.id,
        catalogue_id=row.catalogue_id,
        model_version_id=row.model_version_id,
        job_id=row.job_id,
        params=row.params,
        group_count=row.group_count,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def get_dedup_run(session: Session, run_id: int) -> DedupRunInfo:
    row = session.get(DedupRun, run_id)
    if row is None:
        raise NotFound(f"dedup run {run_id} not found")
    return _run_info(row)


def list_dedup_runs(
    session: Session, catalogue_id: int, *, limit: int = 20, before_id: int | None = None
) -> list[DedupRunInfo]:
    """A catalogue's runs, newest first; ``before_id`` pages backwards."""
    stmt = (
        select(DedupRun)
        .where(DedupRun.catalogue_id == catalogue_id)
        .order_by(DedupRun.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        stmt = stmt.where(DedupRun.id < before_id)
    return [_run_info(r) for r in session.scalars(stmt)]


def dedup_run_for_job(session: Session, job_id: int) -> DedupRunInfo | None:
    """The finished run a job already stored (a redelivered job reuses it), or None."""
    row = session.scalar(
        select(DedupRun)
        .where(DedupRun.job_id == job_id, DedupRun.finished_at.is_not(None))
        .order_by(DedupRun.id.desc())
        .limit(1)
    )
    return None if row is None else _run_info(row)


def previous_dedup_run(
    session: Session,
    catalogue_id: int,
    *,
    scope: dict[str, Any],
    before_run_id: int | None = None,
) -> DedupRunInfo | None:
    """The newest finished run of the catalogue (before ``before_run_id``) whose params hold
    the same values for every key of ``scope`` (e.g. the same category)."""
    stmt = (
        select(DedupRun)
        .where(DedupRun.catalogue_id == catalogue_id, DedupRun.finished_at.is_not(None))
        .order_by(DedupRun.id.desc())
    )
    if before_run_id is not None:
        stmt = stmt.where(DedupRun.id < before_run_id)
    wanted = json_normal(scope)
    for row in session.scalars(stmt.limit(200)):
        params = row.params or {}
        if all(params.get(k) == v for k, v in wanted.items()):
            return _run_info(row)
    return None


@dataclass(frozen=True)
class NewGroup:
    """A group found by a run, before it is stored."""

    kind: str
    representative_item_id: int
    members: Sequence[MemberEvidence]
    category: str | None = None


@dataclass(frozen=True)
class StoredGroups:
    count: int
    dismissed: int  # marked not a duplicate before, same members and content: hidden
    new_since_previous: int


def add_dedup_groups(
    session: Session,
    run_id: int,
    groups: Sequence[NewGroup],
    *,
    previous_run_id: int | None = None,
) -> StoredGroups:
    """Store many groups at once, in the given order (ids ascend in that order).

    Each group gets its fingerprint from the members' current content hashes; it is flagged
    ``dismissed`` when a ``not_duplicate`` decision exists for that fingerprint, and
    ``new_since_previous`` when the run ``previous_run_id`` (if any) had no group with it.
    """
    run = session.get(DedupRun, run_id)
    if run is None:
        raise NotFound(f"dedup run {run_id} not found")
    all_ids: list[int] = []
    for g in groups:
        check_choice("kind", g.kind, DEDUP_KINDS)
        ids = [m.item_id for m in g.members]
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise InvalidInput("a group has at least two distinct members")
        if g.representative_item_id not in ids:
            raise InvalidInput("the representative must be one of the group's members")
        all_ids.extend(ids)
    if len(all_ids) != len(set(all_ids)):
        raise InvalidInput("an item is in two groups of one run")
    shas: dict[int, str | None] = {}
    for chunk in chunks(all_ids):
        for item_id, sha in session.execute(
            select(Item.id, Item.sha256).where(
                Item.id.in_(chunk), Item.catalogue_id == run.catalogue_id
            )
        ):
            shas[item_id] = sha
    if len(shas) != len(all_ids):
        raise InvalidInput(f"some members are not items of catalogue {run.catalogue_id}")
    fingerprints = [
        group_fingerprint((m.item_id, shas[m.item_id]) for m in g.members) for g in groups
    ]
    decisions = get_dedup_decisions(session, run.catalogue_id, fingerprints=fingerprints)
    previous: set[str] = set()
    if previous_run_id is not None:
        for fp_chunk in chunks(sorted(set(fingerprints))):
            previous.update(
                session.scalars(
                    select(DedupGroup.fingerprint).where(
                        DedupGroup.run_id == previous_run_id, DedupGroup.fingerprint.in_(fp_chunk)
                    )
                )
            )
    rows = []
    for g, fp in zip(groups, fingerprints, strict=True):
        decision = decisions.get(fp)
        rows.append(
            {
                "run_id": run_id,
                "kind": g.kind,
                "category": g.category,
                "representative_item_id": g.representative_item_id,
                "fingerprint": fp,
                "size": len(g.members),
                "new_since_previous": previous_run_id is None or fp not in previous,
                "dismissed": decision is not None and decision.decision == "not_duplicate",
            }
        )
    ids_by_fp: dict[str, int] = {}
    for chunk_rows in chunks(rows):
        for gid, fp in session.execute(
            GROUPS.insert().returning(GROUPS.c.id, GROUPS.c.fingerprint), list(chunk_rows)
        ):
            ids_by_fp[fp] = gid
    member_rows = [
        {
            "group_id": ids_by_fp[fp],
            "item_id": m.item_id,
            "hash_equal": bool(m.hash_equal),
            "phash_distance": m.phash_distance,
            "cosine": None if m.cosine is None else float(m.cosine),
        }
        for g, fp in zip(groups, fingerprints, strict=True)
        for m in g.members
    ]
    for chunk_members in chunks(member_rows):
        session.execute(MEMBERS.insert(), list(chunk_members))
    return StoredGroups(
        count=len(rows),
        dismissed=sum(1 for r in rows if r["dismissed"]),
        new_since_previous=sum(1 for r in rows if r["new_since_previous"]),
    )


def page_dedup_groups(
    session: Session,
    run_id: int,
    *,
    after_id: int | None = None,
    limit: int = 50,
    include_dismissed: bool = False,
    kind: str | None = None,
    only_new: bool = False,
) -> list[DedupGroupInfo]:
    """A page of a run's groups in id order (runs store their largest groups first) after
    ``after_id``; dismissed groups only with ``include_dismissed``."""
    run = session.get(DedupRun, run_id)
    if run is None:
        raise NotFound(f"dedup run {run_id} not found")
    stmt = select(DedupGroup).where(DedupGroup.run_id == run_id).order_by(DedupGroup.id)
    if after_id is not None:
        stmt = stmt.where(DedupGroup.id > after_id)
    if not include_dismissed:
        stmt = stmt.where(DedupGroup.dismissed.is_(False))
    if kind is not None:
        stmt = stmt.where(DedupGroup.kind == check_choice("kind", kind, DEDUP_KINDS))
    if only_new:
        stmt = stmt.where(DedupGroup.new_since_previous.is_(True))
    groups = list(session.scalars(stmt.limit(limit)))
    return _group_infos(session, run.catalogue_id, groups)


def count_dedup_groups(session: Session, run_id: int) -> dict[str, int]:
    """A run's groups by status: all, dismissed, shown, new since the previous run."""
    rows = session.execute(
        select(DedupGroup.dismissed, DedupGroup.new_since_previous, func.count())
        .where(DedupGroup.run_id == run_id)
        .group_by(DedupGroup.dismissed, DedupGroup.new_since_previous)
    ).all()
    out = {"all": 0, "dismissed": 0, "shown": 0, "new_since_previous": 0}
    for dismissed, new, n in rows:
        out["all"] += int(n)
        out["dismissed" if dismissed else "shown"] += int(n)
        if new:
            out["new_since_previous"] += int(n)
    return out


def get_dedup_group(session: Session, group_id: int) -> DedupGroupInfo:
    row = session.get(DedupGroup, group_id)
    if row is None:
        raise NotFound(f"dedup group {group_id} not found")
    run = session.get(DedupRun, row.run_id)
    assert run is not None
    return _group_infos(session, run.catalogue_id, [row])[0]


def decide_dedup_group(
    session: Session,
    group_id: int,
    decision: str,
    *,
    decided_by: str,
    kept_item_id: int | None = None,
    note: str | None = None,
) -> DedupDecisionInfo:
    """A reviewer's decision on a stored group; ``keep_item`` must keep one of its members.

    The decision is recorded by the group's fingerprint, so it follows the same group into
    later runs (a ``not_duplicate`` group is not brought back until a member changes).
    """
    group = get_dedup_group(session, group_id)
    if decision == "keep_item" and kept_item_id is not None and kept_item_id not in {
        m.item_id for m in group.members
    }:
        raise InvalidInput(f"item {kept_item_id} is not a member of dedup group {group_id}")
    run = session.get(DedupRun, group.run_id)
    assert run is not None
    return record_dedup_decision(
        session,
        run.catalogue_id,
        group.fingerprint,
        decision,
        decided_by=decided_by,
        kept_item_id=kept_item_id,
        note=note,
    )


@dataclass(frozen=True)
class DedupItem:
    """What a dedup run needs to know about an item besides its vector."""

    id: int
    sha256: str | None
    phash: str | None
    category: str
    width: int | None
    height: int | None
    meta: dict[str, Any] | None
    first_seen_at: datetime
    location: str | None


def load_dedup_items(
    session: Session, catalogue_id: int, *, category: str | None = None
) -> list[DedupItem]:
    """The catalogue's active items (of one category: given, else predicted), by id."""
    cat = func.coalesce(Item.given_category, Item.predicted_category, "")
    stmt = (
        select(
            Item.id, Item.sha256, Item.phash, cat, Item.width, Item.height, Item.meta,
            Item.first_seen_at, Item.location,
        )
        .where(Item.catalogue_id == catalogue_id, Item.status == "active")
        .order_by(Item.id)
    )
    if category is not None:
        stmt = stmt.where(cat == category)
    return [DedupItem(*row) for row in session.execute(stmt)]


def items_changed_since(
    session: Session, catalogue_id: int, model_version_id: int, since: datetime
) -> set[int]:
    """Active items first seen after ``since``, or whose vector for the model version was
    (re)written after it (new content under an old key is re-embedded)."""
    from shared.db.models import Embedding

    new = select(Item.id).where(
        Item.catalogue_id == catalogue_id, Item.status == "active", Item.first_seen_at > since
    )
    rewritten = (
        select(Embedding.item_id)
        .join(Item, Item.id == Embedding.item_id)
        .where(
            Item.catalogue_id == catalogue_id,
            Item.status == "active",
            Embedding.model_version_id == model_version_id,
            Embedding.created_at > since,
        )
    )
    return set(session.scalars(new)) | set(session.scalars(rewritten))


def set_item_phashes(session: Session, phashes: dict[int, str]) -> int:
    """Store perceptual hashes computed for items that had none; returns how many."""
    rows = [{"id": item_id, "phash": value} for item_id, value in phashes.items()]
    for chunk in chunks(rows):
        session.execute(update(Item), list(chunk))
    return len(rows)
