"""A stored dedup run as plain records, CSV and JSON (the API's export and ``fir dedup export``)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session

from shared.db import dedup as store
from shared.db import services

PAGE = 500

CSV_COLUMNS = [
    "run_id", "group_id", "kind", "category", "group_size", "new_since_previous", "dismissed",
    "suggested_keep_item_id", "decision", "kept_item_id", "decided_by", "item_id", "key",
    "is_representative", "hash_equal", "phash_distance", "cosine", "width", "height",
]


def decision_record(group: store.DedupGroupInfo) -> dict[str, Any] | None:
    d = group.decision
    if d is None:
        return None
    return {"group_id": group.id, "fingerprint": d.fingerprint, "decision": d.decision,
            "kept_item_id": d.kept_item_id, "decided_by": d.decided_by, "note": d.note,
            "decided_at": d.decided_at.isoformat()}


def group_record(group: store.DedupGroupInfo, items: dict[int, Any]) -> dict[str, Any]:
    """One group with its members' evidence and what is known of each item."""
    members = []
    for m in group.members:
        item = items.get(m.item_id)
        members.append({
            "item_id": m.item_id,
            "key": item.external_key if item is not None else None,
            "category": (item.given_category or item.predicted_category) if item is not None else None,
            "width": item.width if item is not None else None,
            "height": item.height if item is not None else None,
            "hash_equal": m.hash_equal,
            "phash_distance": m.phash_distance,
            "cosine": m.cosine,
            "is_representative": m.item_id == group.representative_item_id,
        })
    return {
        "id": group.id, "run_id": group.run_id, "kind": group.kind, "category": group.category,
        "size": group.size, "fingerprint": group.fingerprint,
        "representative_item_id": group.representative_item_id,
        "suggested_keep_item_id": group.representative_item_id,
        "new_since_previous": group.new_since_previous, "dismissed": group.dismissed,
        "decision": decision_record(group), "members": members,
    }


def group_records(session: Session, groups: list[store.DedupGroupInfo]) -> list[dict[str, Any]]:
    items = services.get_items(session, [m.item_id for g in groups for m in g.members])
    return [group_record(g, items) for g in groups]


def run_record(session: Session, run: store.DedupRunInfo) -> dict[str, Any]:
    return {
        "id": run.id, "catalogue_id": run.catalogue_id, "model_version_id": run.model_version_id,
        "job_id": run.job_id, "params": run.params, "group_count": run.group_count,
        "counts": store.count_dedup_groups(session, run.id),
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def iter_groups(session: Session, run_id: int, *, include_dismissed: bool = False) -> Iterator[dict[str, Any]]:
    """Every group of a run (in review order), a page at a time."""
    after: int | None = None
    while True:
        page = store.page_dedup_groups(session, run_id, after_id=after, limit=PAGE,
                                       include_dismissed=include_dismissed)
        if not page:
            return
        yield from group_records(session, page)
        after = page[-1].id


def export_json(session: Session, run_id: int, *, include_dismissed: bool = False) -> str:
    run = store.get_dedup_run(session, run_id)
    body = {"run": run_record(session, run),
            "groups": list(iter_groups(session, run_id, include_dismissed=include_dismissed))}
    return json.dumps(body, indent=1)


def csv_rows(group: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One CSV row per member."""
    decision = group["decision"] or {}
    for m in group["members"]:
        yield {
            "run_id": group["run_id"], "group_id": group["id"], "kind": group["kind"],
            "category": group["category"] or "", "group_size": group["size"],
            "new_since_previous": int(group["new_since_previous"]), "dismissed": int(group["dismissed"]),
            "suggested_keep_item_id": group["suggested_keep_item_id"],
            "decision": decision.get("decision", ""), "kept_item_id": decision.get("kept_item_id") or "",
            "decided_by": decision.get("decided_by", ""), "item_id": m["item_id"], "key": m["key"] or "",
            "is_representative": int(m["is_representative"]), "hash_equal": int(m["hash_equal"]),
            "phash_distance": "" if m["phash_distance"] is None else m["phash_distance"],
            "cosine": "" if m["cosine"] is None else f"{m['cosine']:.6f}",
            "width": m["width"] or "", "height": m["height"] or "",
        }


def export_csv(session: Session, run_id: int, *, include_dismissed: bool = False) -> str:
    store.get_dedup_run(session, run_id)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for group in iter_groups(session, run_id, include_dismissed=include_dismissed):
        writer.writerows(csv_rows(group))
    return buf.getvalue()
