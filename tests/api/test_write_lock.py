"""Write requests take SQLite's write lock at BEGIN; read requests never take it.

A deferred transaction that reads and then writes must upgrade its lock, and SQLite fails such an
upgrade with "database is locked" at once (no busy wait) when another connection wrote in
between: that is what a reviewer's decision met while a de-duplication run was saving groups.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.config import Settings


def _writer_can_lock(path: Path) -> bool:
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    else:
        other.execute("ROLLBACK")
        return True
    finally:
        other.close()


@pytest.mark.parametrize(("method", "locks"), [("GET", False), ("HEAD", False), ("POST", True),
                                                ("PUT", True), ("PATCH", True), ("DELETE", True)])
def test_request_session_takes_the_write_lock_only_for_writes(tmp_path: Path, method: str, locks: bool) -> None:
    from api import create_app
    from api.routes.common import db
    from shared.db.session import dispose_engines

    settings = Settings(home=tmp_path, broker_url="filesystem://")
    app = create_app(settings, enqueue=lambda task, job_id, task_id=None: task_id or "t")
    path = Path(settings.resolved_database_url().removeprefix("sqlite:///"))
    try:
        with app.test_request_context("/api/v1/anything", method=method), db() as session:
            session.execute(text("SELECT 1"))  # the transaction has begun
            assert path.exists()
            assert _writer_can_lock(path) is (not locks)
        assert _writer_can_lock(path)  # released when the unit of work ends
    finally:
        dispose_engines()
