"""`fir status` for people at a terminal: catalogues, queued and running jobs, live workers."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from shared.cli import main
from shared.config import Settings


def test_status_shows_catalogues_jobs_and_workers(tmp_path: Path) -> None:
    from shared.db import heartbeat, services
    from shared.db.migrate import upgrade
    from shared.db.session import session_scope

    settings = Settings(home=tmp_path)
    upgrade(settings.resolved_database_url())
    with session_scope(settings) as session:
        cat = services.create_catalogue(session, "shop", source_kind="folder", source_path="", root=None)
        queued, _ = services.create_job(session, "reindex", params={"catalogue_id": cat.id}, catalogue_id=cat.id)
        running, _ = services.create_job(session, "index", params={"catalogue_id": cat.id}, catalogue_id=cat.id)
    with session_scope(settings) as session:
        services.transition_job(session, running.id, "running")
        services.update_job_progress(session, running.id, 12, 48)
    heartbeat.beat(settings, "worker-1@host", "gpu,cpu")

    result = CliRunner().invoke(main, ["--home", str(tmp_path), "status"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "active model: none" in out
    assert f"{cat.id:4d} shop: 0 active, 0 removed, 0 bad; 0 indexed" in out
    assert "queued jobs: 1 (reindex 1)" in out and f"#{queued.id} reindex catalogue {cat.id}" in out
    assert "running jobs: 1" in out and f"#{running.id} index catalogue {cat.id}  12/48 (25%)" in out
    assert "live workers: 1" in out and "worker-1@host (queues gpu,cpu)" in out

    result = CliRunner().invoke(main, ["--home", str(tmp_path), "status", "--json"])
    body = json.loads(result.output)
    assert body["queue_depth"] == {"reindex": 1} and body["workers"][0]["name"] == "worker-1@host"
    assert body["jobs"]["running"][0] == {"id": running.id, "type": "index", "catalogue_id": cat.id,
                                          "done": 12, "total": 48}
