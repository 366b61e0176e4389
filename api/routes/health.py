"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from sqlalchemy import text

from api.app import fir_settings
from api.routes.common import db
from api.schemas import Health

bp = APIBlueprint("health", __name__, tag="Health")


@bp.get("/healthz")
@bp.output(Health)
def healthz() -> dict[str, Any]:
    """The API process is alive."""
    return {"status": "ok", "checks": {}}


NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"description": "not ready: the same body, saying which check failed",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}}


@bp.get("/readyz")
@bp.output(Health)
@bp.doc(responses=NOT_READY)
def readyz() -> tuple[dict[str, Any], int]:
    """Database and broker reachable, and a worker seen recently."""
    from shared.db import heartbeat

    s = fir_settings()
    checks: dict[str, Any] = {}
    try:
        with db() as session:
            session.execute(text("SELECT 1"))
            workers = heartbeat.recent(session, max_age_s=max(30.0, 3 * s.worker_heartbeat_s))
        checks["database"] = "ok"
        checks["workers"] = [w["name"] for w in workers] or "none seen recently"
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        checks["database"] = f"unreachable: {type(exc).__name__}"
        workers = []
    checks["broker"] = _broker_check(s)
    ready = checks["database"] == "ok" and checks["broker"] == "ok" and bool(workers)
    return {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503


def _broker_check(s: Any) -> str:
    from worker.factory import broker_settings

    url, options = broker_settings(s)
    if url.startswith("filesystem"):
        return "ok"
    try:
        from kombu import Connection

        with Connection(url, connect_timeout=2, transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"unreachable: {type(exc).__name__}"
