"""FIR's database tables as SQLAlchemy 2.0 typed declarative models.

Portable on SQLite (the embedded default) and PostgreSQL (the service): JSON is
``sqlalchemy.JSON``, vectors are ``LargeBinary``, timestamps are timezone-aware and stored in
UTC, string enums are ``String`` columns with named CHECK constraints. The schema is created by
the Alembic migrations in ``migrations/`` only; ``Base.metadata.create_all`` is for nothing but
tests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# ---------------------------------------------------------------------------------------------
# Enumerations (string values stored as-is; the CHECK constraints below list the same values)

CATALOGUE_SOURCES = ("folder", "manifest")
METRICS = ("cosine", "euclidean")
ITEM_STATUSES = ("active", "removed", "bad")
MODEL_STATES = ("training", "ready", "active", "retired")
EMBEDDING_DTYPES = ("float32", "float16")
JOB_TYPES = ("query", "index", "reindex", "dedup", "train", "backfill", "evaluate")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
DEDUP_KINDS = ("exact", "near")
DEDUP_DECISIONS = ("confirmed", "not_duplicate", "keep_item")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always stores UTC and always returns aware UTC.

    SQLite has no time zones: values are converted to UTC and stored naive, and read back as
    UTC. PostgreSQL stores ``timestamptz``; values come back converted to UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; pass an aware datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
        bytes: LargeBinary(),
    }


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# ---------------------------------------------------------------------------------------------
# Catalogue and items


class Catalogue(TimestampMixin, Base):
    __tablename__ = "catalogues"
    __table_args__ = (
        CheckConstraint(_in("source_kind", CATALOGUE_SOURCES), name="source_kind"),
        CheckConstraint(_in("default_metric", METRICS), name="default_metric"),
        CheckConstraint("default_k > 0", name="default_k"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source_kind: Mapped[str] = mapped_column(String(16))
    source_path: Mapped[str] = mapped_column(Text)
    # Root folder under which server-side image paths given by clients must lie.
    root: Mapped[str | None] = mapped_column(Text)
    default_metric: Mapped[str] = mapped_column(String(16), default="cosine")
    default_k: Mapped[int] = mapped_column(Integer, default=10)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("catalogue_id", "external_key"),
        # Not unique on purpose: byte-identical photos under two keys are what exact dedup finds.
        Index("ix_items_catalogue_id_sha256", "catalogue_id", "sha256"),
        Index("ix_items_catalogue_id_status", "catalogue_id", "status"),
        CheckConstraint(_in("status", ITEM_STATUSES), name="status"),
        CheckConstraint("status = 'bad' OR sha256 IS NOT NULL", name="sha256_unless_bad"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    catalogue_id: Mapped[int] = mapped_column(ForeignKey("catalogues.id", ondelete="CASCADE"))
    # SKU / ASIN / path relative to the catalogue's source.
    external_key: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str | None] = mapped_column(String(64))
    phash: Mapped[str | None] = mapped_column(String(64))
    given_category: Mapped[str | None] = mapped_column(String(200))
    predicted_category: Mapped[str | None] = mapped_column(String(200))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    location: Mapped[str | None] = mapped_column(Text)  # where the image lies in the store
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="active")
    bad_reason: Mapped[str | None] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------------------------------------
# Model versions and embeddings


class ModelVersion(TimestampMixin, Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        CheckConstraint(_in("state", MODEL_STATES), name="state"),
        CheckConstraint(
            "state = 'training' OR (model_id IS NOT NULL AND checkpoint_path IS NOT NULL"
            " AND checkpoint_sha256 IS NOT NULL)",
            name="checkpoint_unless_training",
        ),
        # At most one active version, guaranteed by the database (partial unique index).
        Index(
            "uq_model_versions_one_active",
            "state",
            unique=True,
            postgresql_where=text("state = 'active'"),
            sqlite_where=text("state = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # First 16 hex digits of the checkpoint's sha256; unknown while the model trains.
    model_id: Mapped[str | None] = mapped_column(String(16), unique=True)
    backbone: Mapped[str] = mapped_column(String(64))
    weights_source: Mapped[str] = mapped_column(Text)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    router_path: Mapped[str | None] = mapped_column(Text)
    router_sha256: Mapped[str | None] = mapped_column(String(64))
    labels: Mapped[list[str]] = mapped_column(JSON)
    training_config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    embedding_dim: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="training")
    # The version that was active when this one was activated: rollback switches back to it.
    previous_active_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    activated_at: Mapped[datetime | None] = mapped_column()


class Embedding(Base):
    __tablename__ = "embeddings"
    __table_args__ = (
        CheckConstraint(_in("dtype", EMBEDDING_DTYPES), name="dtype"),
        CheckConstraint("dim > 0", name="dim"),
        Index("ix_embeddings_item_id", "item_id"),
    )

    # (model_version_id, item_id): one catalogue x model load is a range scan of the key.
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    dim: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(8))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IndexGeneration(Base):
    """A counter per catalogue x model version; workers reload their index when it moves."""

    __tablename__ = "index_generations"

    catalogue_id: Mapped[int] = mapped_column(
        ForeignKey("catalogues.id", ondelete="CASCADE"), primary_key=True
    )
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# ---------------------------------------------------------------------------------------------
# Jobs and query results


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("type", JOB_TYPES), name="type"),
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        CheckConstraint("progress_done >= 0", name="progress_done"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_task_id", "task_id"),
        Index("ix_jobs_catalogue_id", "catalogue_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    catalogue_id: Mapped[int | None] = mapped_column(
        ForeignKey("catalogues.id", ondelete="SET NULL")
    )
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    task_id: Mapped[str | None] = mapped_column(String(255))  # the broker's task id
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # pointer to the result
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class QueryResult(Base):
    """The header of one query's answer: which model answered, how it was routed."""

    __tablename__ = "query_results"
    __table_args__ = (CheckConstraint(_in("metric", METRICS), name="metric"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    catalogue_id: Mapped[int | None] = mapped_column(
        ForeignKey("catalogues.id", ondelete="SET NULL")
    )
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    metric: Mapped[str] = mapped_column(String(16))
    k: Mapped[int] = mapped_column(Integer)
    routing: Mapped[str | None] = mapped_column(String(32))
    routed_categories: Mapped[list[str]] = mapped_column(JSON)
    probabilities: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    elapsed_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class QueryResultRow(Base):
    __tablename__ = "query_result_rows"
    __table_args__ = (CheckConstraint("rank >= 1", name="rank"),)

    result_id: Mapped[int] = mapped_column(
        ForeignKey("query_results.id", ondelete="CASCADE"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    score: Mapped[float] = mapped_column(Float)


# ---------------------------------------------------------------------------------------------
# De-duplication


class DedupRun(Base):
    __tablename__ = "dedup_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    catalogue_id: Mapped[int] = mapped_column(ForeignKey("catalogues.id", ondelete="CASCADE"))
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # thresholds etc.
    group_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class DedupGroup(Base):
    __tablename__ = "dedup_groups"
    __table_args__ = (
        CheckConstraint(_in("kind", DEDUP_KINDS), name="kind"),
        UniqueConstraint("run_id", "fingerprint"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("dedup_runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    category: Mapped[str | None] = mapped_column(String(200))
    representative_item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    # sha256 over the sorted "item_id:sha256" of the members: decisions follow it across runs.
    fingerprint: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    # No group with this fingerprint was in the previous run of the same scope.
    new_since_previous: Mapped[bool] = mapped_column(
        Boolean, default=True, server_default=text("true")
    )
    # A reviewer had marked this very group (same members, same content) not a duplicate
    # before the run: it is kept for the record but hidden from review by default.
    dismissed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class DedupMember(Base):
    __tablename__ = "dedup_members"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("dedup_groups.id", ondelete="CASCADE"), primary_key=True
    )
    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    hash_equal: Mapped[bool] = mapped_column(Boolean, default=False)
    phash_distance: Mapped[int | None] = mapped_column(Integer)
    cosine: Mapped[float | None] = mapped_column(Float)


class DedupDecision(Base):
    """A reviewer's decision about a group, by fingerprint: it persists across reruns."""

    __tablename__ = "dedup_decisions"
    __table_args__ = (
        UniqueConstraint("catalogue_id", "fingerprint"),
        CheckConstraint(_in("decision", DEDUP_DECISIONS), name="decision"),
        CheckConstraint(
            "decision <> 'keep_item' OR kept_item_id IS NOT NULL", name="kept_item_given"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    catalogue_id: Mapped[int] = mapped_column(ForeignKey("catalogues.id", ondelete="CASCADE"))
    fingerprint: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))
    # Deleting the kept item deletes the decision (a keep_item decision needs its item).
    kept_item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    decided_by: Mapped[str] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------------------------------------
# Operations


class WorkerHeartbeat(Base):
    """The last sign of life of each worker (``/readyz``, ``fir status``); any broker."""

    __tablename__ = "worker_heartbeats"
    __table_args__ = (Index("ix_worker_heartbeats_last_seen", "last_seen"),)

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery's hostname
    queues: Mapped[str] = mapped_column(String(255), default="")
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------------------------------------
# Access control

API_KEY_SCOPES = ("read", "write", "admin")


class ApiKey(Base):
    """An API key: only the sha256 of its token is stored (the token is shown once).
    ``catalogue_id`` NULL is a global key (admin scope only)."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(_in("scope", API_KEY_SCOPES), name="scope"),
        CheckConstraint("catalogue_id IS NOT NULL OR scope = 'admin'", name="global_admin_only"),
        Index("ix_api_keys_catalogue_id", "catalogue_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the token's first characters, to recognise it
    catalogue_id: Mapped[int | None] = mapped_column(ForeignKey("catalogues.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
