"""Dedup storage on SQLite and PostgreSQL: bulk groups with their review flags, paging,
decisions across runs, and what a run loads."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy.orm import Session

from shared.db import dedup as store
from shared.db import services as db
from shared.db.models import utcnow
from shared.dedup.detect import DedupConfig, DedupInput, find_duplicates
from shared.dedup.groups import ItemFacts
from shared.dedup.run import store_result
from shared.errors import InvalidInput, NotFound

pytestmark = pytest.mark.integration


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def shop(db_session: Session) -> tuple[int, dict[str, int], int]:
    cat = db.create_catalogue(db_session, "dd-store", source_kind="folder", source_path="/d").id
    res = db.upsert_items(db_session, cat, [
        db.ScannedItem(key=k, sha256=sha(c), given_category=g, phash=p, width=10, height=10,
                       meta={"title": k})
        for k, c, g, p in [("a", "a", "dress", "00ff"), ("a2", "a", "dress", None), ("b", "b", "dress", None),
                           ("c", "c", "shirt", None), ("d", "d", "shirt", None), ("e", "e", None, None),
                           ("f", "e", None, None)]])
    mv = db.register_model_version(db_session, backbone="resnet50", weights_source="none", labels=["x"],
                                   model_id="ab" * 8, checkpoint_path="/m.pt", checkpoint_sha256="ab" * 32)
    return cat, res.ids_by_key, mv.id


def members(*ids: int) -> list[store.MemberEvidence]:
    return [store.MemberEvidence(i, cosine=0.99) for i in ids]


def test_groups_flags_paging_and_decisions(db_session: Session, shop: tuple[int, dict[str, int], int]) -> None:
    cat, ids, _ = shop
    run1 = store.create_dedup_run(db_session, cat, params={"category": None})
    stored = store.add_dedup_groups(db_session, run1, [
        store.NewGroup("near", ids["a"], members(ids["a"], ids["a2"], ids["b"]), "dress"),
        store.NewGroup("near", ids["c"], members(ids["c"], ids["d"]), "shirt"),
    ])
    store.finish_dedup_run(db_session, run1)
    assert (stored.count, stored.dismissed, stored.new_since_previous) == (2, 0, 2)
    page = store.page_dedup_groups(db_session, run1, limit=1)
    assert [g.size for g in page] == [3]
    rest = store.page_dedup_groups(db_session, run1, after_id=page[0].id, limit=5)
    assert [g.size for g in rest] == [2] and rest[0].new_since_previous
    cd = rest[0]

    with pytest.raises(InvalidInput, match="not a member"):
        store.decide_dedup_group(db_session, cd.id, "keep_item", kept_item_id=ids["a"], decided_by="x")
    store.decide_dedup_group(db_session, cd.id, "not_duplicate", decided_by="ana")
    store.decide_dedup_group(db_session, page[0].id, "keep_item", kept_item_id=ids["b"], decided_by="ana")
    with pytest.raises(NotFound):
        store.decide_dedup_group(db_session, 987654, "confirmed", decided_by="ana")

    assert store.previous_dedup_run(db_session, cat, scope={"category": None}) is not None
    assert store.previous_dedup_run(db_session, cat, scope={"category": "dress"}) is None
    run2 = store.create_dedup_run(db_session, cat, params={"category": None})
    stored = store.add_dedup_groups(db_session, run2, [
        store.NewGroup("near", ids["a"], members(ids["a"], ids["a2"], ids["b"]), "dress"),
        store.NewGroup("near", ids["c"], members(ids["c"], ids["d"]), "shirt"),
        store.NewGroup("exact", ids["e"], [store.MemberEvidence(ids["e"], hash_equal=True),
                                           store.MemberEvidence(ids["f"], hash_equal=True)]),
    ], previous_run_id=run1)
    store.finish_dedup_run(db_session, run2)
    assert (stored.count, stored.dismissed, stored.new_since_previous) == (3, 1, 1)
    shown = store.page_dedup_groups(db_session, run2)
    assert [g.size for g in shown] == [3, 2]
    assert shown[0].decision is not None and shown[0].decision.kept_item_id == ids["b"]
    assert [g.new_since_previous for g in shown] == [False, True]
    assert len(store.page_dedup_groups(db_session, run2, include_dismissed=True)) == 3
    assert [g.kind for g in store.page_dedup_groups(db_session, run2, kind="exact")] == ["exact"]
    assert len(store.page_dedup_groups(db_session, run2, only_new=True)) == 1
    assert store.count_dedup_groups(db_session, run2) == {
        "all": 3, "dismissed": 1, "shown": 2, "new_since_previous": 1}
    assert [r.id for r in store.list_dedup_runs(db_session, cat)] == [run2, run1]
    assert store.get_dedup_run(db_session, run2).group_count == 3

    with pytest.raises(InvalidInput, match="two groups"):
        store.add_dedup_groups(db_session, run2, [
            store.NewGroup("near", ids["a"], members(ids["a"], ids["b"])),
            store.NewGroup("near", ids["a"], members(ids["a"], ids["c"]))])


def test_what_a_run_loads_and_stores(db_session: Session, shop: tuple[int, dict[str, int], int]) -> None:
    cat, ids, mv = shop
    items = store.load_dedup_items(db_session, cat)
    assert [i.id for i in items] == sorted(ids.values())
    assert {i.category for i in items} == {"dress", "shirt", ""}
    assert [i.id for i in store.load_dedup_items(db_session, cat, category="shirt")] == [ids["c"], ids["d"]]
    before = utcnow() - timedelta(seconds=1)
    assert store.items_changed_since(db_session, cat, mv, before) == set(ids.values())
    later = utcnow() + timedelta(seconds=1)
    assert store.items_changed_since(db_session, cat, mv, later) == set()
    assert store.set_item_phashes(db_session, {ids["b"]: "0123456789abcdef"}) == 1
    assert db.get_item(db_session, ids["b"]).phash == "0123456789abcdef"

    # The pure detection's result stored as a finished run.
    vecs = np.asarray([[1, 0], [1, 0.01], [1, 0.02], [1, 0], [0.99, 0.1], [0, 1], [1, 1]], np.float32)
    data = DedupInput(
        item_ids=np.asarray([i.id for i in items]), sha256=[i.sha256 for i in items], phash=[None] * 7,
        categories=[i.category for i in items], facts=[ItemFacts(i.id, i.first_seen_at) for i in items],
        vectors=vecs, vector_rows=np.arange(7))
    result = find_duplicates(data, DedupConfig(threshold=0.99))
    report = store_result(db_session, cat, mv, result, params={"category": None})
    groups = store.page_dedup_groups(db_session, report.run_id)
    assert report.groups == 3 == len(groups)
    assert [sorted(m.item_id for m in g.members) for g in groups] == [
        [ids["a"], ids["a2"], ids["b"]], [ids["c"], ids["d"]], [ids["e"], ids["f"]]]
    assert [g.kind for g in groups] == ["near", "near", "exact"]
    assert groups[0].representative_item_id == ids["a"]
    assert store.get_dedup_run(db_session, report.run_id).params["stats"]["groups"] == 3  # type: ignore[index]
