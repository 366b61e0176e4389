"""FIR's database: SQLAlchemy 2.0 models (:mod:`shared.db.models`), engines and sessions
(:mod:`shared.db.session`), Alembic migrations (:mod:`shared.db.migrate`) and services
(:mod:`shared.db.services`).

Typical use (one session per task or request, ids in and out)::

    from shared.db import session_scope, services
    with session_scope(settings) as session:
        job, created = services.create_job(session, "query", params={...}, idempotency_key=key)
    if created:
        celery.send_task(..., args=[job.id])  # enqueue only after commit
"""

from __future__ import annotations

from shared.db import services
from shared.db.session import dispose_after_fork, dispose_engines, get_engine, session_scope

__all__ = ["dispose_after_fork", "dispose_engines", "get_engine", "services", "session_scope"]
