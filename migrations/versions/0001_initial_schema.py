"""Initial schema: catalogues, items, model versions, embeddings, jobs, results, dedup.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 02:27:45.381292
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "catalogues",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("root", sa.Text(), nullable=True),
        sa.Column("default_metric", sa.String(length=16), nullable=False),
        sa.Column("default_k", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "default_metric IN ('cosine', 'euclidean')", name=op.f("ck_catalogues_default_metric")
        ),
        sa.CheckConstraint(
            "source_kind IN ('folder', 'manifest')", name=op.f("ck_catalogues_source_kind")
        ),
        sa.CheckConstraint("default_k > 0", name=op.f("ck_catalogues_default_k")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalogues")),
        sa.UniqueConstraint("name", name=op.f("uq_catalogues_name")),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=16), nullable=True),
        sa.Column("backbone", sa.String(length=64), nullable=False),
        sa.Column("weights_source", sa.Text(), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=True),
        sa.Column("checkpoint_sha256", sa.String(length=64), nullable=True),
        sa.Column("router_path", sa.Text(), nullable=True),
        sa.Column("router_sha256", sa.String(length=64), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("training_config", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("embedding_dim", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("previous_active_id", sa.Integer(), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('training', 'ready', 'active', 'retired')",
            name=op.f("ck_model_versions_state"),
        ),
        sa.CheckConstraint(
            "state = 'training' OR (model_id IS NOT NULL AND checkpoint_path IS NOT NULL"
            " AND checkpoint_sha256 IS NOT NULL)",
            name=op.f("ck_model_versions_checkpoint_unless_training"),
        ),
        sa.ForeignKeyConstraint(
            ["previous_active_id"],
            ["model_versions.id"],
            name=op.f("fk_model_versions_previous_active_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("model_id", name=op.f("uq_model_versions_model_id")),
    )
    op.create_index(
        "uq_model_versions_one_active",
        "model_versions",
        ["state"],
        unique=True,
        postgresql_where=sa.text("state = 'active'"),
        sqlite_where=sa.text("state = 'active'"),
    )
    op.create_table(
        "index_generations",
        sa.Column("catalogue_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["catalogue_id"],
            ["catalogues.id"],
            name=op.f("fk_index_generations_catalogue_id_catalogues"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_index_generations_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "catalogue_id", "model_version_id", name=op.f("pk_index_generations")
        ),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("catalogue_id", sa.Integer(), nullable=False),
        sa.Column("external_key", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("phash", sa.String(length=64), nullable=True),
        sa.Column("given_category", sa.String(length=200), nullable=True),
        sa.Column("predicted_category", sa.String(length=200), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("bad_reason", sa.Text(), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status = 'bad' OR sha256 IS NOT NULL", name=op.f("ck_items_sha256_unless_bad")
        ),
        sa.CheckConstraint("status IN ('active', 'removed', 'bad')", name=op.f("ck_items_status")),
        sa.ForeignKeyConstraint(
            ["catalogue_id"],
            ["catalogues.id"],
            name=op.f("fk_items_catalogue_id_catalogues"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_items")),
        sa.UniqueConstraint(
            "catalogue_id", "external_key", name=op.f("uq_items_catalogue_id_external_key")
        ),
    )
    op.create_index(
        "ix_items_catalogue_id_sha256", "items", ["catalogue_id", "sha256"], unique=False
    )
    op.create_index(
        "ix_items_catalogue_id_status", "items", ["catalogue_id", "status"], unique=False
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("catalogue_id", sa.Integer(), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.CheckConstraint(
            "type IN ('query', 'index', 'reindex', 'dedup', 'train', 'backfill', 'evaluate')",
            name=op.f("ck_jobs_type"),
        ),
        sa.CheckConstraint("progress_done >= 0", name=op.f("ck_jobs_progress_done")),
        sa.ForeignKeyConstraint(
            ["catalogue_id"],
            ["catalogues.id"],
            name=op.f("fk_jobs_catalogue_id_catalogues"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_jobs_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    op.create_index("ix_jobs_catalogue_id", "jobs", ["catalogue_id"], unique=False)
    op.create_index("ix_jobs_status", "jobs", ["status"], unique=False)
    op.create_index("ix_jobs_task_id", "jobs", ["task_id"], unique=False)
    op.create_table(
        "dedup_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("catalogue_id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("kept_item_id", sa.Integer(), nullable=True),
        sa.Column("decided_by", sa.String(length=200), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "decision <> 'keep_item' OR kept_item_id IS NOT NULL",
            name=op.f("ck_dedup_decisions_kept_item_given"),
        ),
        sa.CheckConstraint(
            "decision IN ('confirmed', 'not_duplicate', 'keep_item')",
            name=op.f("ck_dedup_decisions_decision"),
        ),
        sa.ForeignKeyConstraint(
            ["catalogue_id"],
            ["catalogues.id"],
            name=op.f("fk_dedup_decisions_catalogue_id_catalogues"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["kept_item_id"],
            ["items.id"],
            name=op.f("fk_dedup_decisions_kept_item_id_items"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dedup_decisions")),
        sa.UniqueConstraint(
            "catalogue_id", "fingerprint", name=op.f("uq_dedup_decisions_catalogue_id_fingerprint")
        ),
    )
    op.create_table(
        "dedup_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("catalogue_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("group_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["catalogue_id"],
            ["catalogues.id"],
            name=op.f("fk_dedup_runs_catalogue_id_catalogues"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_dedup_runs_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_dedup_runs_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dedup_runs")),
    )
    op.create_table(
        "embeddings",
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=8), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("dtype IN ('float32', 'float16')", name=op.f("ck_embeddings_dtype")),
        sa.CheckConstraint("dim > 0", name=op.f("ck_embeddings_dim")),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_embeddings_item_id_items"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_embeddings_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_version_id", "item_id", name=op.f("pk_embeddings")),
    )
    op.create_index("ix_embeddings_item_id", "embeddings", ["item_id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        # Vectors are incompressible floats: store them out of line without trying pglz.
        op.execute("ALTER TABLE embeddings ALTER COLUMN vector SET STORAGE EXTERNAL")
    op.create_table(
        "query_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("catalogue_id", sa.Integer(), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("routing", sa.String(length=32), nullable=True),
        sa.Column("routed_categories", sa.JSON(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=True),
        sa.Column("elapsed_ms", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "metric IN ('cosine', 'euclidean')", name=op.f("ck_query_results_metric")
        ),
        sa.ForeignKeyConstraint(
            ["catalogue_id"],
            ["catalogues.id"],
            name=op.f("fk_query_results_catalogue_id_catalogues"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_query_results_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_query_results_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_query_results")),
        sa.UniqueConstraint("job_id", name=op.f("uq_query_results_job_id")),
    )
    op.create_table(
        "dedup_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=200), nullable=True),
        sa.Column("representative_item_id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.CheckConstraint("kind IN ('exact', 'near')", name=op.f("ck_dedup_groups_kind")),
        sa.ForeignKeyConstraint(
            ["representative_item_id"],
            ["items.id"],
            name=op.f("fk_dedup_groups_representative_item_id_items"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["dedup_runs.id"],
            name=op.f("fk_dedup_groups_run_id_dedup_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dedup_groups")),
        sa.UniqueConstraint(
            "run_id", "fingerprint", name=op.f("uq_dedup_groups_run_id_fingerprint")
        ),
    )
    op.create_table(
        "query_result_rows",
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.CheckConstraint("rank >= 1", name=op.f("ck_query_result_rows_rank")),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["items.id"],
            name=op.f("fk_query_result_rows_item_id_items"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["query_results.id"],
            name=op.f("fk_query_result_rows_result_id_query_results"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("result_id", "rank", name=op.f("pk_query_result_rows")),
    )
    op.create_table(
        "dedup_members",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("hash_equal", sa.Boolean(), nullable=False),
        sa.Column("phash_distance", sa.Integer(), nullable=True),
        sa.Column("cosine", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["dedup_groups.id"],
            name=op.f("fk_dedup_members_group_id_dedup_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["items.id"],
            name=op.f("fk_dedup_members_item_id_items"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "item_id", name=op.f("pk_dedup_members")),
    )


def downgrade() -> None:
    op.drop_table("dedup_members")
    op.drop_table("query_result_rows")
    op.drop_table("dedup_groups")
    op.drop_table("query_results")
    op.drop_index("ix_embeddings_item_id", table_name="embeddings")
    op.drop_table("embeddings")
    op.drop_table("dedup_runs")
    op.drop_table("dedup_decisions")
    op.drop_index("ix_jobs_task_id", table_name="jobs")
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_index("ix_jobs_catalogue_id", table_name="jobs")
    op.drop_table("jobs")
    op.drop_index("ix_items_catalogue_id_status", table_name="items")
    op.drop_index("ix_items_catalogue_id_sha256", table_name="items")
    op.drop_table("items")
    op.drop_table("index_generations")
    op.drop_index(
        "uq_model_versions_one_active",
        table_name="model_versions",
        postgresql_where=sa.text("state = 'active'"),
        sqlite_where=sa.text("state = 'active'"),
    )
    op.drop_table("model_versions")
    op.drop_table("catalogues")
