"""API keys: hashed tokens scoped to a catalogue (or global admin).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 03:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("catalogue_id", sa.Integer(), nullable=True),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("scope IN ('read', 'write', 'admin')", name=op.f("ck_api_keys_scope")),
        sa.CheckConstraint("catalogue_id IS NOT NULL OR scope = 'admin'",
                           name=op.f("ck_api_keys_global_admin_only")),
        sa.ForeignKeyConstraint(["catalogue_id"], ["catalogues.id"],
                                name=op.f("fk_api_keys_catalogue_id_catalogues"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_keys_token_sha256")),
    )
    op.create_index("ix_api_keys_catalogue_id", "api_keys", ["catalogue_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_api_keys_catalogue_id", table_name="api_keys")
    op.drop_table("api_keys")
