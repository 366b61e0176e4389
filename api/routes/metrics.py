"""Prometheus metrics (see :mod:`api.observability` for what they are)."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import Response

from api.app import fir_settings
from api.observability import render

bp = APIBlueprint("metrics", __name__, tag="Operations")


TEXT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition format",
          "content": {"text/plain": {"schema": {"type": "string"}}}}}


@bp.get("/metrics")
@bp.doc(summary="Prometheus metrics", responses=TEXT_RESPONSE)
def metrics() -> Response:
    """Request latency by route; jobs by type and status; queue depth; the active model
    version; index size per catalogue; live workers. The worker serves its own metrics
    (embedding throughput, tasks) on ``FIR_WORKER_METRICS_PORT``."""
    body, content_type = render(fir_settings())
    return Response(body, status=200, content_type=content_type)
