"""Dedup review: per group, whether it is new since the previous run and whether a reviewer
had dismissed it (marked not a duplicate) before the run.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 03:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (with a server default for the rows already there) works on SQLite
    # without rebuilding the table.
    op.add_column(
        "dedup_groups",
        sa.Column("new_since_previous", sa.Boolean(), nullable=False, server_default=sa.text("true")),
    )
    op.add_column(
        "dedup_groups",
        sa.Column("dismissed", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )


def downgrade() -> None:
    # SQLite >= 3.35 drops a column in place (no batch copy that could lose CHECK constraints).
    op.drop_column("dedup_groups", "dismissed")
    op.drop_column("dedup_groups", "new_since_previous")
