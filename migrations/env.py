"""Alembic environment for FIR.

The URL comes from, in order: ``config.attributes["url"]`` (``shared.db.migrate``), an open
connection in ``config.attributes["connection"]``, the ini file's ``sqlalchemy.url``, and
last ``Settings().resolved_database_url()`` (``FIR_DATABASE_URL`` or the SQLite file under
``FIR_HOME``). SQLite runs in batch mode so that ALTERs work there too.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from sqlalchemy import Connection

from shared.config import Settings
from shared.db.models import Base, UTCDateTime
from shared.db.session import create_fir_engine, ensure_sqlite_folder

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    return str(url) if url else Settings().resolved_database_url()


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Render FIR's UTC column type as the plain type, so scripts don't import models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = _url()
    ensure_sqlite_folder(url)
    engine = create_fir_engine(url)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
