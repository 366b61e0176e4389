"""Embeddings: exact round trip, one-query loads, reuse by content hash; index generations."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import services as db
from shared.db.models import Embedding
from shared.errors import InvalidInput, ModelMismatch

pytestmark = pytest.mark.integration


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_version(session: Session, name: str = "m1") -> int:
    digest = sha(name)
    return db.register_model_version(
        session,
        backbone="resnet50",
        weights_source="imagenet",
        labels=["dress", "shirt", "toptee"],
        model_id=digest[:16],
        checkpoint_path=f"/models/{name}.pt",
        checkpoint_sha256=digest,
        embedding_dim=16,
    ).id


def make_items(session: Session, n: int, name: str = "shop") -> tuple[int, list[int]]:
    cat = db.create_catalogue(session, name, source_kind="folder", source_path="/s").id
    categories = ["dress", "shirt", "toptee"]
    res = db.upsert_items(
        session,
        cat,
        [
            db.ScannedItem(
                key=f"{i:04d}.jpg", sha256=sha(f"{name}{i}"), given_category=categories[i % 3]
            )
            for i in range(n)
        ],
    )
    return cat, [res.ids_by_key[f"{i:04d}.jpg"] for i in range(n)]


def test_round_trip_is_exact(db_session: Session) -> None:
    cat, ids = make_items(db_session, 50)
    mv = make_version(db_session)
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((50, 16)).astype(np.float32)
    vectors[0, 0] = np.float32(1e-38)  # subnormal-adjacent values survive too
    vectors[1, 1] = np.float32(-0.0)
    assert db.write_embeddings(db_session, mv, ids, vectors) == 50

    stored = db_session.execute(
        select(Embedding.item_id, Embedding.vector, Embedding.dim, Embedding.dtype)
        .where(Embedding.model_version_id == mv)
        .order_by(Embedding.item_id)
    ).all()
    for (item_id, blob, dim, dtype), expected in zip(stored, vectors, strict=True):
        assert blob == expected.tobytes() and dim == 16 and dtype == "float32"
        assert item_id in ids

    got_ids, got, categories = db.load_vectors(db_session, cat, mv)
    order = np.argsort(ids)
    assert got_ids.dtype == np.int64 and got.dtype == np.float32
    assert got_ids.tolist() == sorted(ids)
    assert got.tobytes() == vectors[order].tobytes()
    assert categories == [["dress", "shirt", "toptee"][i % 3] for i in order]
    assert got.flags.writeable and got.flags.c_contiguous


def test_write_replaces_existing_vectors(db_session: Session) -> None:
    cat, ids = make_items(db_session, 3)
    mv = make_version(db_session)
    db.write_embeddings(db_session, mv, ids, np.zeros((3, 8), dtype=np.float32))
    db.write_embeddings(db_session, mv, ids[:1], np.ones((1, 8), dtype=np.float32))
    _, got, _ = db.load_vectors(db_session, cat, mv)
    assert got[0].tolist() == [1.0] * 8 and got[1:].sum() == 0


def test_float16_storage_loads_as_float32(db_session: Session) -> None:
    cat, ids = make_items(db_session, 10)
    mv = make_version(db_session)
    vectors = np.random.default_rng(2).standard_normal((10, 32)).astype(np.float32)
    db.write_embeddings(db_session, mv, ids, vectors, dtype="float16")
    blob = db_session.scalar(select(Embedding.vector).where(Embedding.item_id == ids[0]))
    assert blob is not None and len(blob) == 32 * 2
    _, got, _ = db.load_vectors(db_session, cat, mv)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, vectors.astype(np.float16).astype(np.float32))


def test_load_filters_catalogue_version_and_status(db_session: Session) -> None:
    cat, ids = make_items(db_session, 6)
    other_cat, other_ids = make_items(db_session, 4, name="other")
    mv1, mv2 = make_version(db_session, "m1"), make_version(db_session, "m2")
    db.write_embeddings(db_session, mv1, ids, np.ones((6, 4)))
    db.write_embeddings(db_session, mv2, ids[:2], np.full((2, 4), 2.0))
    db.write_embeddings(db_session, mv1, other_ids, np.full((4, 4), 3.0))
    db.mark_unseen_removed(db_session, cat, {"0000.jpg", "0001.jpg", "0002.jpg"})

    got_ids, got, _ = db.load_vectors(db_session, cat, mv1)
    assert got_ids.tolist() == sorted(ids[:3]) and got.shape == (3, 4)
    assert (got == 1).all()
    every_ids, _, _ = db.load_vectors(db_session, cat, mv1, statuses=("active", "removed"))
    assert len(every_ids) == 6
    two_ids, two, _ = db.load_vectors(db_session, cat, mv2)
    assert two_ids.tolist() == sorted(ids[:2]) and (two == 2).all()
    assert db.count_embeddings(db_session, other_cat, mv1) == 4


def test_empty_load(db_session: Session) -> None:
    cat, _ = make_items(db_session, 2)
    mv = make_version(db_session)
    ids, vectors, categories = db.load_vectors(db_session, cat, mv)
    assert ids.shape == (0,) and vectors.shape == (0, 0) and categories == []


def test_load_sees_unflushed_writes_and_predicted_categories(db_session: Session) -> None:
    cat = db.create_catalogue(db_session, "c", source_kind="folder", source_path="/c").id
    res = db.upsert_items(db_session, cat, [db.ScannedItem(key="k", sha256=sha("k"))])
    item = res.ids_by_key["k"]
    mv = make_version(db_session)
    db.write_embeddings(db_session, mv, [item], np.ones((1, 3)))
    _, _, categories = db.load_vectors(db_session, cat, mv)
    assert categories == [""]
    db.set_predicted_categories(db_session, {item: "toptee"})
    _, _, categories = db.load_vectors(db_session, cat, mv)
    assert categories == ["toptee"]


def test_mixed_dimensions_are_refused_on_load(db_session: Session) -> None:
    cat, ids = make_items(db_session, 2)
    mv = make_version(db_session)
    db.write_embeddings(db_session, mv, ids[:1], np.ones((1, 4)))
    db.write_embeddings(db_session, mv, ids[1:], np.ones((1, 5)))
    with pytest.raises(ModelMismatch):
        db.load_vectors(db_session, cat, mv)


def test_write_validates_its_input(db_session: Session) -> None:
    _, ids = make_items(db_session, 2)
    mv = make_version(db_session)
    with pytest.raises(InvalidInput):
        db.write_embeddings(db_session, mv, ids, np.ones((3, 4)))
    with pytest.raises(InvalidInput):
        db.write_embeddings(db_session, mv, [ids[0], ids[0]], np.ones((2, 4)))
    with pytest.raises(InvalidInput):
        db.write_embeddings(db_session, mv, ids, np.array([[np.nan] * 4, [0.0] * 4]))
    with pytest.raises(InvalidInput):
        db.write_embeddings(db_session, mv, ids, np.ones((2, 4)), dtype="bfloat16")
    assert db.write_embeddings(db_session, mv, [], np.ones((0, 4))) == 0


def test_large_write_and_load_in_chunks(db_session: Session) -> None:
    cat, ids = make_items(db_session, 1200)
    mv = make_version(db_session)
    vectors = np.random.default_rng(3).standard_normal((1200, 64)).astype(np.float32)
    db.write_embeddings(db_session, mv, np.asarray(ids), vectors, chunk_size=250)
    got_ids, got, _ = db.load_vectors(db_session, cat, mv)
    assert got_ids.tolist() == ids  # ids were assigned in key order
    assert got.tobytes() == vectors.tobytes()


def test_missing_embeddings_and_reuse_by_content_hash(db_session: Session) -> None:
    cat = db.create_catalogue(db_session, "dups", source_kind="folder", source_path="/d").id
    res = db.upsert_items(
        db_session,
        cat,
        [
            db.ScannedItem(key="a.jpg", sha256=sha("same")),
            db.ScannedItem(key="b.jpg", sha256=sha("other")),
        ],
    )
    a, b = res.ids_by_key["a.jpg"], res.ids_by_key["b.jpg"]
    mv = make_version(db_session)
    db.write_embeddings(db_session, mv, [a, b], np.arange(8, dtype=np.float32).reshape(2, 4))
    # A renamed copy of a.jpg arrives: its vector is copied, not recomputed.
    res2 = db.upsert_items(db_session, cat, [db.ScannedItem(key="a-copy.jpg", sha256=sha("same"))])
    c = res2.ids_by_key["a-copy.jpg"]
    assert db.items_missing_embeddings(db_session, cat, mv) == [c]
    assert db.copy_embeddings_by_sha256(db_session, cat, mv) == 1
    assert db.items_missing_embeddings(db_session, cat, mv) == []
    assert db.copy_embeddings_by_sha256(db_session, cat, mv) == 0
    ids, vectors, _ = db.load_vectors(db_session, cat, mv)
    row = {int(i): v.tolist() for i, v in zip(ids, vectors, strict=True)}
    assert row[c] == row[a] == [0.0, 1.0, 2.0, 3.0]


def test_index_generation_bumps(db_session: Session) -> None:
    cat, _ = make_items(db_session, 1)
    mv1, mv2 = make_version(db_session, "m1"), make_version(db_session, "m2")
    assert db.get_index_generation(db_session, cat, mv1) == 0
    assert db.bump_index_generation(db_session, cat, mv1) == 1
    assert db.bump_index_generation(db_session, cat, mv1) == 2
    assert db.bump_index_generation(db_session, cat, mv2) == 1
    assert db.get_index_generation(db_session, cat, mv1) == 2
    assert db.list_index_generations(db_session) == {(cat, mv1): 2, (cat, mv2): 1}


def test_active_index_state_reads_the_active_version_and_its_generation(db_session: Session) -> None:
    cat, _ = make_items(db_session, 1)
    other, _ = make_items(db_session, 1, name="other")
    mv1, mv2 = make_version(db_session, "m1"), make_version(db_session, "m2")
    assert db.active_index_state(db_session, cat) is None  # nothing active
    db.activate_model_version(db_session, mv1)
    assert db.active_index_state(db_session, cat) == (mv1, 0)  # never bumped
    db.bump_index_generation(db_session, cat, mv1)
    db.bump_index_generation(db_session, cat, mv2)
    db.bump_index_generation(db_session, cat, mv2)
    assert db.active_index_state(db_session, cat) == (mv1, 1)  # the active version's counter
    db.activate_model_version(db_session, mv2)
    assert db.active_index_state(db_session, cat) == (mv2, 2)
    assert db.active_index_state(db_session, other) == (mv2, 0)  # another catalogue's own counter
