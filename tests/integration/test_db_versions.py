"""Model versions: registration, atomic activation (at most one active), rollback, retire."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy.orm import Session

from shared.db import services as db
from shared.errors import Conflict, InvalidInput, InvalidTransition, NotFound

pytestmark = pytest.mark.integration


def checkpoint(name: str) -> dict[str, str]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return {
        "model_id": digest[:16],
        "checkpoint_path": f"/models/{name}.pt",
        "checkpoint_sha256": digest,
    }


def register(session: Session, name: str) -> int:
    return db.register_model_version(
        session,
        backbone="resnet50",
        weights_source="imagenet",
        labels=["dress", "shirt", "toptee"],
        training_config={"epochs": 10, "lr": 1e-3},
        metrics={"test_accuracy": 0.91},
        embedding_dim=2048,
        **checkpoint(name),
    ).id


def test_register_is_idempotent_by_model_id(db_session: Session) -> None:
    first = db.register_model_version(
        db_session, backbone="resnet50", weights_source="imagenet", labels=["a"], **checkpoint("x")
    )
    again = db.register_model_version(
        db_session, backbone="resnet50", weights_source="imagenet", labels=["a"], **checkpoint("x")
    )
    assert again.id == first.id and first.state == "ready"
    assert db.get_model_version_by_model_id(db_session, first.model_id or "").id == first.id
    with pytest.raises(NotFound):
        db.get_model_version_by_model_id(db_session, "0" * 16)


def test_register_validates_identity(db_session: Session) -> None:
    bad = checkpoint("x") | {"model_id": "ffffffffffffffff"}
    with pytest.raises(InvalidInput):
        db.register_model_version(db_session, backbone="r", weights_source="w", labels=[], **bad)
    with pytest.raises(InvalidInput):
        db.register_model_version(
            db_session, backbone="r", weights_source="w", labels=[], model_id="abc"
        )
    with pytest.raises(InvalidInput):
        db.register_model_version(
            db_session,
            backbone="r",
            weights_source="w",
            labels=[],
            router_path="/r.joblib",
            **checkpoint("y"),
        )


def test_training_then_ready_then_active(db_session: Session) -> None:
    training = db.register_model_version(
        db_session, backbone="resnet50", weights_source="imagenet", labels=["a", "b"]
    )
    assert training.state == "training" and training.model_id is None
    with pytest.raises(InvalidTransition):
        db.activate_model_version(db_session, training.id)
    ready = db.mark_model_version_ready(
        db_session, training.id, metrics={"acc": 0.9}, embedding_dim=2048, **checkpoint("t")
    )
    assert ready.state == "ready" and ready.metrics == {"acc": 0.9}
    with pytest.raises(InvalidTransition):
        db.mark_model_version_ready(db_session, training.id, **checkpoint("t"))
    router_sha = hashlib.sha256(b"router").hexdigest()
    with_router = db.set_model_router(db_session, training.id, "/routers/t.joblib", router_sha)
    assert with_router.router_sha256 == router_sha
    active = db.activate_model_version(db_session, training.id)
    assert active.state == "active" and active.activated_at is not None


def test_mark_ready_refuses_a_model_id_already_registered(db_session: Session) -> None:
    register(db_session, "taken")
    training = db.register_model_version(
        db_session, backbone="resnet50", weights_source="imagenet", labels=["a"]
    )
    with pytest.raises(Conflict):
        db.mark_model_version_ready(db_session, training.id, **checkpoint("taken"))


def test_activation_switches_atomically_and_rolls_back(db_session: Session) -> None:
    v1, v2, v3 = register(db_session, "v1"), register(db_session, "v2"), register(db_session, "v3")
    assert db.get_active_model_version(db_session) is None

    db.activate_model_version(db_session, v1)
    assert db.get_active_model_version(db_session).id == v1  # type: ignore[union-attr]
    db.activate_model_version(db_session, v2)
    active = db.get_active_model_version(db_session)
    assert active is not None and active.id == v2 and active.previous_active_id == v1
    assert db.get_model_version(db_session, v1).state == "ready"
    assert [v.id for v in db.list_model_versions(db_session, state="active")] == [v2]

    # Activating the active one is a no-op.
    assert db.activate_model_version(db_session, v2).state == "active"

    rolled = db.rollback_model_version(db_session)
    assert rolled.id == v1 and rolled.state == "active"
    assert db.get_model_version(db_session, v2).state == "ready"
    # Rolling back again switches forward again.
    assert db.rollback_model_version(db_session).id == v2

    db.activate_model_version(db_session, v3)
    assert len(db.list_model_versions(db_session, state="active")) == 1


def test_rollback_needs_a_previous_version(db_session: Session) -> None:
    with pytest.raises(InvalidTransition):
        db.rollback_model_version(db_session)
    v1 = register(db_session, "only")
    db.activate_model_version(db_session, v1)
    with pytest.raises(InvalidTransition):
        db.rollback_model_version(db_session)


def test_retired_versions_cannot_be_activated(db_session: Session) -> None:
    v1, v2 = register(db_session, "a1"), register(db_session, "a2")
    db.activate_model_version(db_session, v1)
    with pytest.raises(InvalidTransition):
        db.retire_model_version(db_session, v1)  # active: switch away first
    db.activate_model_version(db_session, v2)
    assert db.retire_model_version(db_session, v1).state == "retired"
    with pytest.raises(InvalidTransition):
        db.activate_model_version(db_session, v1)
    with pytest.raises(InvalidTransition):
        db.rollback_model_version(db_session)  # the previous one is retired
    assert db.get_active_model_version(db_session).id == v2  # type: ignore[union-attr]


def test_failed_activation_leaves_the_session_usable(db_session: Session) -> None:
    v1 = register(db_session, "b1")
    with pytest.raises(NotFound):
        db.activate_model_version(db_session, 999_999)
    db.activate_model_version(db_session, v1)
    assert db.get_active_model_version(db_session).id == v1  # type: ignore[union-attr]
