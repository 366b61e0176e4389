"""Alembic migrations on both backends: round trip, and models == migrations."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from shared.db import migrate
from shared.db.models import Base
from shared.db.session import create_fir_engine

pytestmark = pytest.mark.integration

TABLES = set(Base.metadata.tables)


def _tables(url: str) -> set[str]:
    engine = create_fir_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _differences(url: str) -> list[object]:
    engine = create_fir_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_empty_to_head_to_base_to_head(empty_db_url: str) -> None:
    head = migrate.head()
    assert head is not None
    assert migrate.current(empty_db_url) is None

    migrate.upgrade(empty_db_url)
    assert migrate.current(empty_db_url) == head
    assert _tables(empty_db_url) == TABLES

    migrate.downgrade(empty_db_url, "base")
    assert migrate.current(empty_db_url) is None
    assert _tables(empty_db_url) == set()

    migrate.upgrade(empty_db_url, "head")
    assert migrate.current(empty_db_url) == head
    assert _tables(empty_db_url) == TABLES


def test_upgrade_twice_is_a_no_op(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    migrate.upgrade(empty_db_url)
    assert migrate.current(empty_db_url) == migrate.head()


def test_models_and_migrations_agree(db_url: str) -> None:
    assert _differences(db_url) == []


def test_migrated_partial_index_is_there(db_url: str) -> None:
    engine = create_fir_engine(db_url)
    try:
        with engine.connect() as conn:
            indexes = {i["name"]: i for i in inspect(conn).get_indexes("model_versions")}
    finally:
        engine.dispose()
    assert indexes["uq_model_versions_one_active"]["unique"]
