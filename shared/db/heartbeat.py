"""Worker heartbeats in the database: ``/readyz`` and ``fir status`` read them. Works with
every broker, including the filesystem transport that has no broadcast."""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db._common import upsert_insert
from shared.db.models import WorkerHeartbeat, utcnow
from shared.db.session import session_scope

log = logging.getLogger(__name__)


def beat(settings: Settings, name: str, queues: str = "") -> None:
    table = WorkerHeartbeat.__table__
    with session_scope(settings) as session:
        stmt = upsert_insert(session, table).values(
            name=name, queues=queues, host=socket.gethostname(), pid=os.getpid(), last_seen=utcnow())
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.name],
            set_={"queues": stmt.excluded.queues, "host": stmt.excluded.host, "pid": stmt.excluded.pid,
                  "last_seen": stmt.excluded.last_seen})
        session.execute(stmt)


def recent(session: Session, max_age_s: float = 30.0) -> list[dict[str, Any]]:
    cutoff = utcnow() - timedelta(seconds=max_age_s)
    rows = session.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.last_seen >= cutoff)
                           .order_by(WorkerHeartbeat.name))
    return [{"name": r.name, "queues": r.queues, "host": r.host, "pid": r.pid,
             "last_seen": r.last_seen.isoformat()} for r in rows]


def start_thread(settings: Settings, name: str, queues: str = "") -> threading.Thread:
    """Beat every ``settings.worker_heartbeat_s`` seconds from a daemon thread."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                beat(settings, name, queues)
            except Exception as exc:  # noqa: BLE001 - a missed beat is logged, never fatal
                log.warning("heartbeat failed: %s", exc)
            stop.wait(settings.worker_heartbeat_s)

    thread = threading.Thread(target=loop, name="fir-heartbeat", daemon=True)
    thread.start()
    return thread
