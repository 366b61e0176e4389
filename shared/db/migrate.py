"""Schema migrations through Alembic's command API (``fir db upgrade`` calls :func:`upgrade`).

The scripts live in the repository's ``migrations/`` folder; the database URL is handed to
``migrations/env.py`` programmatically (``Config.attributes["url"]``), never through the ini
file, so URLs with ``%`` need no escaping.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from shared.db.session import create_fir_engine, ensure_sqlite_folder

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` with ``script_location`` set to ``migrations/``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (creating a SQLite file's folder)."""
    ensure_sqlite_folder(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Downgrade the database at ``url`` to ``revision`` (``"base"`` drops every table)."""
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at; None for an empty (unmigrated) database.

    With several heads stored (branches), they are joined with ``,``.
    """
    ensure_sqlite_folder(url)
    engine: Engine = create_fir_engine(url)
    try:
        with engine.connect() as conn:
            heads = MigrationContext.configure(conn).get_current_heads()
    finally:
        engine.dispose()
    if not heads:
        return None
    return ",".join(sorted(heads))


def head() -> str | None:
    """The newest revision among the scripts in ``migrations/``."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(""))
    return script.get_current_head()
