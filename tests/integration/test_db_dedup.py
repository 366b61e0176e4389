"""De-duplication runs, groups with evidence, and decisions that persist across reruns."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy.orm import Session

from shared.db import services as db
from shared.errors import InvalidInput, NotFound

pytestmark = pytest.mark.integration


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def shop(db_session: Session) -> tuple[int, dict[str, int]]:
    cat = db.create_catalogue(db_session, "dd", source_kind="folder", source_path="/d").id
    res = db.upsert_items(
        db_session,
        cat,
        [
            db.ScannedItem(key="a.jpg", sha256=sha("same"), phash="ffee00"),
            db.ScannedItem(key="a2.jpg", sha256=sha("same"), phash="ffee00"),
            db.ScannedItem(key="b.jpg", sha256=sha("b"), phash="ffee01"),
            db.ScannedItem(key="c.jpg", sha256=sha("c"), phash="000000"),
        ],
    )
    return cat, res.ids_by_key


def test_fingerprint_is_order_free_and_content_bound() -> None:
    assert db.group_fingerprint([(1, "x"), (2, "y")]) == db.group_fingerprint([(2, "y"), (1, "x")])
    assert db.group_fingerprint([(1, "x"), (2, "y")]) != db.group_fingerprint([(1, "x"), (2, "z")])
    assert len(db.group_fingerprint([(1, None)])) == 64


def test_groups_and_decisions_across_runs(
    db_session: Session, shop: tuple[int, dict[str, int]]
) -> None:
    cat, ids = shop
    run = db.create_dedup_run(db_session, cat, params={"cosine_threshold": 0.95})
    exact_id, exact_fp = db.add_dedup_group(
        db_session,
        run,
        kind="exact",
        representative_item_id=ids["a.jpg"],
        members=[
            db.MemberEvidence(ids["a.jpg"], hash_equal=True, phash_distance=0, cosine=1.0),
            db.MemberEvidence(ids["a2.jpg"], hash_equal=True, phash_distance=0, cosine=1.0),
        ],
    )
    _, near_fp = db.add_dedup_group(
        db_session,
        run,
        kind="near",
        category="dress",
        representative_item_id=ids["a.jpg"],
        members=[
            db.MemberEvidence(ids["a.jpg"], hash_equal=False, cosine=1.0),
            db.MemberEvidence(ids["b.jpg"], phash_distance=1, cosine=0.97),
        ],
    )
    assert db.finish_dedup_run(db_session, run) == 2
    assert db.latest_dedup_run(db_session, cat) == run

    groups = db.list_dedup_groups(db_session, run)
    assert {g.fingerprint for g in groups} == {exact_fp, near_fp}
    exact = next(g for g in groups if g.id == exact_id)
    assert exact.kind == "exact" and exact.size == 2 and exact.decision is None
    assert [m.hash_equal for m in exact.members] == [True, True]
    assert exact.members[0].cosine == pytest.approx(1.0)

    db.record_dedup_decision(
        db_session, cat, exact_fp, "keep_item", kept_item_id=ids["a.jpg"], decided_by="ana"
    )
    db.record_dedup_decision(db_session, cat, near_fp, "not_duplicate", decided_by="ana")
    # Changing one's mind replaces the decision.
    changed = db.record_dedup_decision(
        db_session, cat, near_fp, "confirmed", decided_by="bob", note="same dress"
    )
    assert (changed.decision, changed.decided_by, changed.note) == (
        "confirmed",
        "bob",
        "same dress",
    )

    # A rerun finds the same exact group: the decision applies again.
    run2 = db.create_dedup_run(db_session, cat)
    db.add_dedup_group(
        db_session,
        run2,
        kind="exact",
        representative_item_id=ids["a2.jpg"],
        members=[db.MemberEvidence(ids["a2.jpg"], True), db.MemberEvidence(ids["a.jpg"], True)],
    )
    db.finish_dedup_run(db_session, run2)
    (group,) = db.list_dedup_groups(db_session, run2)
    assert group.fingerprint == exact_fp
    assert group.decision is not None
    assert (group.decision.decision, group.decision.kept_item_id) == ("keep_item", ids["a.jpg"])
    assert set(db.get_dedup_decisions(db_session, cat)) == {exact_fp, near_fp}


def test_group_and_decision_validation(
    db_session: Session, shop: tuple[int, dict[str, int]]
) -> None:
    cat, ids = shop
    run = db.create_dedup_run(db_session, cat)
    with pytest.raises(InvalidInput):
        db.add_dedup_group(
            db_session,
            run,
            kind="exact",
            representative_item_id=ids["a.jpg"],
            members=[db.MemberEvidence(ids["a.jpg"])],
        )
    with pytest.raises(InvalidInput):
        db.add_dedup_group(
            db_session,
            run,
            kind="exact",
            representative_item_id=ids["c.jpg"],
            members=[db.MemberEvidence(ids["a.jpg"]), db.MemberEvidence(ids["b.jpg"])],
        )
    with pytest.raises(InvalidInput):
        db.add_dedup_group(
            db_session,
            run,
            kind="fuzzy",
            representative_item_id=ids["a.jpg"],
            members=[db.MemberEvidence(ids["a.jpg"]), db.MemberEvidence(ids["b.jpg"])],
        )
    with pytest.raises(NotFound):
        db.add_dedup_group(
            db_session,
            999_999,
            kind="exact",
            representative_item_id=ids["a.jpg"],
            members=[db.MemberEvidence(ids["a.jpg"]), db.MemberEvidence(ids["b.jpg"])],
        )
    with pytest.raises(InvalidInput):
        db.record_dedup_decision(db_session, cat, "f" * 64, "keep_item", decided_by="x")
    with pytest.raises(InvalidInput):
        db.record_dedup_decision(
            db_session, cat, "f" * 64, "confirmed", kept_item_id=ids["a.jpg"], decided_by="x"
        )
    with pytest.raises(InvalidInput):
        db.record_dedup_decision(db_session, cat, "f" * 64, "maybe", decided_by="x")
