"""Engines and sessions on a SQLite file: pragmas, commit/rollback, fork safety, migrate API."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text

from shared.config import Settings
from shared.db import migrate
from shared.db.models import Catalogue
from shared.db.session import (
    create_fir_engine,
    dispose_after_fork,
    dispose_engines,
    get_engine,
    session_scope,
)


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'nested' / 'folder' / 'fir.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(autouse=True)
def _fresh_engines() -> object:
    yield None
    dispose_engines()


def test_upgrade_creates_the_sqlite_folder(url: str, tmp_path: Path) -> None:
    assert (tmp_path / "nested" / "folder" / "fir.db").is_file()
    assert migrate.current(url) == migrate.head()
    assert migrate.MIGRATIONS_DIR.is_dir()


def test_settings_give_the_default_sqlite_url(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    migrate.upgrade(settings.resolved_database_url())
    assert (tmp_path / "home" / "fir.db").is_file()
    assert get_engine(settings) is get_engine(settings.resolved_database_url())


def test_sqlite_pragmas(url: str) -> None:
    with get_engine(url).connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000


def test_one_engine_per_url(url: str, tmp_path: Path) -> None:
    assert get_engine(url) is get_engine(url)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert get_engine(other) is not get_engine(url)


def test_session_scope_commits_or_rolls_back(url: str) -> None:
    with session_scope(url) as session:
        session.add(Catalogue(name="kept", source_kind="folder", source_path="/k"))
    with pytest.raises(RuntimeError), session_scope(url) as session:
        session.add(Catalogue(name="lost", source_kind="folder", source_path="/l"))
        session.flush()
        raise RuntimeError("boom")
    with session_scope(get_engine(url), immediate=True) as session:
        names = session.scalars(select(Catalogue.name)).all()
    assert names == ["kept"]


def test_savepoints_work_on_sqlite(url: str) -> None:
    with session_scope(url) as session:
        session.add(Catalogue(name="outer", source_kind="folder", source_path="/o"))
        session.flush()
        nested = session.begin_nested()
        session.add(Catalogue(name="inner", source_kind="folder", source_path="/i"))
        session.flush()
        nested.rollback()
    with session_scope(url) as session:
        assert session.scalars(select(Catalogue.name)).all() == ["outer"]


@pytest.mark.skipif(sys.platform == "win32", reason="needs os.fork")
def test_forked_child_does_not_reuse_the_parents_connections(url: str) -> None:
    engine = get_engine(url)
    dispose_after_fork()
    dispose_after_fork()  # idempotent
    with engine.connect() as conn:  # a pooled connection now exists in the parent
        conn.execute(text("SELECT 1"))
    pool_before = engine.pool.checkedin()
    assert pool_before >= 1
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            if engine.pool.checkedin() == 0:  # inherited connections were dropped
                with session_scope(engine) as session:
                    session.add(Catalogue(name="child", source_kind="folder", source_path="/c"))
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    with session_scope(engine) as session:  # the parent's pooled connection still works
        assert session.scalars(select(Catalogue.name)).all() == ["child"]


def test_create_fir_engine_is_uncached(url: str) -> None:
    engine = create_fir_engine(url)
    try:
        assert engine is not get_engine(url)
    finally:
        engine.dispose()
