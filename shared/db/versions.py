"""Model versions: register, mark ready, activate atomically, roll back, retire.

States: ``training`` -> ``ready`` -> ``active`` -> ``ready`` (when another is activated) ...
``retired`` is set by hand and ends a version's life. At most one version is active: the
database guarantees it with a partial unique index, and :func:`activate_model_version`
switches in one transaction (demote the current, promote the new). Each activation records the
version it replaced in ``previous_active_id``, so :func:`rollback_model_version` is one call
(and a second rollback switches back again).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db._common import check_choice, json_normal, table_of
from shared.db.models import MODEL_STATES, ModelVersion, utcnow
from shared.errors import Conflict, InvalidInput, InvalidTransition, NotFound

MODEL_VERSIONS = table_of(ModelVersion)
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelVersionInfo:
    id: int
    model_id: str | None
    backbone: str
    weights_source: str
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    router_path: str | None
    router_sha256: str | None
    labels: list[str]
    training_config: dict[str, Any] | None
    metrics: dict[str, Any] | None
    embedding_dim: int | None
    state: str
    previous_active_id: int | None
    activated_at: datetime | None
    created_at: datetime
    updated_at: datetime


def _info(row: ModelVersion) -> ModelVersionInfo:
    return ModelVersionInfo(
        id=row.id,
        model_id=row.model_id,
        backbone=row.backbone,
        weights_source=row.weights_source,
        checkpoint_path=row.checkpoint_path,
        checkpoint_sha256=row.checkpoint_sha256,
        router_path=row.router_path,
        router_sha256=row.router_sha256,
        labels=list(row.labels),
        training_config=row.training_config,
        metrics=row.metrics,
        embedding_dim=row.embedding_dim,
        state=row.state,
        previous_active_id=row.previous_active_id,
        activated_at=row.activated_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _check_checkpoint(model_id: str, checkpoint_sha256: str) -> None:
    if not _HEX16.match(model_id):
        raise InvalidInput(f"model_id must be 16 lowercase hex digits, not {model_id!r}")
    if not _HEX64.match(checkpoint_sha256):
        raise InvalidInput("checkpoint_sha256 must be 64 lowercase hex digits")
    if not checkpoint_sha256.startswith(model_id):
        raise InvalidInput("model_id must be the first 16 hex digits of checkpoint_sha256")


def _check_router(router_path: str | None, router_sha256: str | None) -> None:
    if (router_path is None) != (router_sha256 is None):
        raise InvalidInput("router_path and router_sha256 go together")
    if router_sha256 is not None and not _HEX64.match(router_sha256):
        raise InvalidInput("router_sha256 must be 64 lowercase hex digits")


def _row(session: Session, version_id: int, *, lock: bool = False) -> ModelVersion:
    stmt = select(ModelVersion).where(ModelVersion.id == version_id)
    if lock:
        stmt = stmt.with_for_update()
    row = session.scalars(stmt.execution_options(populate_existing=True)).first()
    if row is None:
        raise NotFound(f"model version {version_id} not found")
    return row


def register_model_version(
    session: Session,
    *,
    backbone: str,
    weights_source: str,
    labels: list[str],
    model_id: str | None = None,
    checkpoint_path: str | None = None,
    checkpoint_sha256: str | None = None,
    router_path: str | None = None,
    router_sha256: str | None = None,
    training_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    embedding_dim: int | None = None,
) -> ModelVersionInfo:
    """Record a model version.

    With a checkpoint (``model_id``, ``checkpoint_path``, ``checkpoint_sha256``) it is ``ready``;
    without one it is ``training`` (finish it with :func:`mark_model_version_ready`).
    Registering a ``model_id`` already known returns the existing version (safe to run twice).
    """
    given = (model_id, checkpoint_path, checkpoint_sha256)
    if any(v is not None for v in given) and any(v is None for v in given):
        raise InvalidInput("model_id, checkpoint_path and checkpoint_sha256 go together")
    _check_router(router_path, router_sha256)
    if model_id is not None:
        assert checkpoint_sha256 is not None
        _check_checkpoint(model_id, checkpoint_sha256)
        known = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model_id))
        if known is not None:
            return _info(known)
    row = ModelVersion(
        model_id=model_id,
        backbone=backbone,
        weights_source=weights_source,
        checkpoint_path=checkpoint_path,
        checkpoint_sha256=checkpoint_sha256,
        router_path=router_path,
        router_sha256=router_sha256,
        labels=list(labels),
        training_config=json_normal(training_config) if training_config is not None else None,
        metrics=json_normal(metrics) if metrics is not None else None,
        embedding_dim=embedding_dim,
        state="ready" if model_id is not None else "training",
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        known = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model_id))
        if known is None:
            raise
        return _info(known)
    return _info(row)


def mark_model_version_ready(
    session: Session,
    version_id: int,
    *,
    model_id: str,
    checkpoint_path: str,
    checkpoint_sha256: str,
    metrics: dict[str, Any] | None = None,
    embedding_dim: int | None = None,
    router_path: str | None = None,
    router_sha256: str | None = None,
) -> ModelVersionInfo:
    """A ``training`` version's checkpoint is written: record it and make the version ready."""
    _check_checkpoint(model_id, checkpoint_sha256)
    _check_router(router_path, router_sha256)
    row = _row(session, version_id, lock=True)
    if row.state != "training":
        raise InvalidTransition(f"model version {version_id} is {row.state}, not training")
    clash = session.scalar(
        select(ModelVersion.id).where(
            ModelVersion.model_id == model_id, ModelVersion.id != version_id
        )
    )
    if clash is not None:
        raise Conflict(f"model_id {model_id} is already registered as version {clash}")
    row.model_id = model_id
    row.checkpoint_path = checkpoint_path
    row.checkpoint_sha256 = checkpoint_sha256
    if metrics is not None:
        row.metrics = json_normal(metrics)
    if embedding_dim is not None:
        row.embedding_dim = embedding_dim
    if router_path is not None:
        row.router_path, row.router_sha256 = router_path, router_sha256
    row.state = "ready"
    session.flush()
    return _info(row)


def set_model_router(
    session: Session, version_id: int, router_path: str, router_sha256: str
) -> ModelVersionInfo:
    """Attach (or replace) the router trained on this version's features."""
    _check_router(router_path, router_sha256)
    row = _row(session, version_id, lock=True)
    if row.state == "retired":
        raise InvalidTransition(f"model version {version_id} is retired")
    row.router_path, row.router_sha256 = router_path, router_sha256
    session.flush()
    return _info(row)


def get_model_version(session: Session, version_id: int) -> ModelVersionInfo:
    return _info(_row(session, version_id))


def get_model_version_by_model_id(session: Session, model_id: str) -> ModelVersionInfo:
    row = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model_id))
    if row is None:
        raise NotFound(f"model {model_id} not found")
    return _info(row)


def get_active_model_version(session: Session) -> ModelVersionInfo | None:
    row = session.scalar(select(ModelVersion).where(ModelVersion.state == "active"))
    return None if row is None else _info(row)


def list_model_versions(session: Session, *, state: str | None = None) -> list[ModelVersionInfo]:
    stmt = select(ModelVersion).order_by(ModelVersion.id)
    if state is not None:
        check_choice("state", state, MODEL_STATES)
        stmt = stmt.where(ModelVersion.state == state)
    return [_info(r) for r in session.scalars(stmt)]


def activate_model_version(session: Session, version_id: int) -> ModelVersionInfo:
    """Make ``version_id`` the active version; the active one (if any) goes back to ``ready``.

    One transaction (a savepoint inside the caller's): either both rows change or neither.
    Raises :class:`InvalidTransition` unless the version is ``ready`` (activating the active
    version is a no-op), :class:`Conflict` if another activation won a race.
    """
    target = _row(session, version_id, lock=True)
    if target.state == "active":
        return _info(target)
    if target.state != "ready":
        raise InvalidTransition(
            f"model version {version_id} is {target.state}; only a ready version can be activated"
        )
    try:
        with session.begin_nested():
            current = session.scalars(
                select(ModelVersion)
                .where(ModelVersion.state == "active")
                .with_for_update()
                .execution_options(populate_existing=True)
            ).first()
            previous_id = None
            if current is not None:
                previous_id = current.id
                session.execute(
                    update(MODEL_VERSIONS)
                    .where(MODEL_VERSIONS.c.id == current.id, MODEL_VERSIONS.c.state == "active")
                    .values(state="ready", updated_at=utcnow())
                )
            done = session.execute(
                update(MODEL_VERSIONS)
                .where(MODEL_VERSIONS.c.id == version_id, MODEL_VERSIONS.c.state == "ready")
                .values(
                    state="active",
                    previous_active_id=previous_id,
                    activated_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise InvalidTransition(f"model version {version_id} changed state meanwhile")
    except IntegrityError as exc:
        raise Conflict("another model version was activated at the same time") from exc
    return _info(_row(session, version_id))


def rollback_model_version(session: Session) -> ModelVersionInfo:
    """Re-activate the version that was active before the current one; returns it.

    Raises :class:`InvalidTransition` when nothing is active, nothing was active before, or the
    previous version has been retired.
    """
    current = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.state == "active")
        .execution_options(populate_existing=True)
    ).first()
    if current is None:
        raise InvalidTransition("no model version is active: nothing to roll back")
    if current.previous_active_id is None:
        raise InvalidTransition(f"model version {current.id} has no previous version")
    return activate_model_version(session, current.previous_active_id)


def retire_model_version(session: Session, version_id: int) -> ModelVersionInfo:
    """Retire a version that is not active (its embeddings may then be deleted)."""
    row = _row(session, version_id, lock=True)
    if row.state == "active":
        raise InvalidTransition(
            f"model version {version_id} is active; activate another one before retiring it"
        )
    if row.state != "retired":
        row.state = "retired"
        session.flush()
    return _info(row)
