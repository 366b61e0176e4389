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
        session, run.catalogue_id, fingerprints=[g.fingerprint for g in groups]
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
