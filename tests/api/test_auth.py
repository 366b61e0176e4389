"""API keys: hashed at rest, scoped per catalogue; 401 without a key, 403 without the scope."""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select

from shared.config import Settings
from tests.api.conftest import ApiEnv, Sent


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (20, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()


def _key(settings: Settings, scope: str, catalogue_id: int | None) -> str:
    from shared.db import apikeys
    from shared.db.session import session_scope

    with session_scope(settings) as session:
        return apikeys.create_key(session, scope, catalogue_id, name="test")[1]


@pytest.fixture()
def secured(api: ApiEnv) -> tuple[Any, Settings, int, int]:
    """The same database with keys required, plus a second catalogue the keys may not see."""
    from api import create_app
    from shared.db import services
    from shared.db.session import session_scope

    settings = api.settings.model_copy(update={"require_keys": "true"})
    with session_scope(settings) as session:
        other = services.create_catalogue(session, f"other-{uuid.uuid4().hex[:8]}", source_kind="folder",
                                          source_path="").id
    app = create_app(settings, enqueue=Sent())
    app.config["TESTING"] = True
    return app.test_client(), settings, api.catalogue_id, other


def _code(resp: Any) -> str:
    return str(resp.get_json()["error"]["code"])


def test_auto_mode_follows_the_bind_address() -> None:
    assert not Settings(api_host="127.0.0.1").keys_required()
    assert not Settings(api_host="localhost").keys_required()
    assert not Settings(api_host="::1").keys_required()
    assert Settings(api_host="0.0.0.0").keys_required()
    assert Settings(api_host="0.0.0.0", require_keys="false").keys_required() is False
    assert Settings(api_host="127.0.0.1", require_keys="true").keys_required()


def test_missing_or_unknown_key_is_401_health_stays_open(secured: tuple[Any, Settings, int, int]) -> None:
    client, _, cat, _ = secured
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)
    for resp in (client.get(f"/api/v1/catalogues/{cat}"),
                 client.get(f"/api/v1/catalogues/{cat}", headers={"Authorization": "Bearer fir_nope"}),
                 client.get(f"/api/v1/catalogues/{cat}", headers={"X-API-Key": "fir_nope"}),
                 client.post("/api/v1/queries", data={"catalogue": str(cat), "file": (io.BytesIO(_jpeg()), "q.jpg")},
                             content_type="multipart/form-data")):
        assert resp.status_code == 401 and _code(resp) == "unauthorized"
        assert "Bearer" in resp.headers["WWW-Authenticate"]


def test_keys_are_stored_hashed(secured: tuple[Any, Settings, int, int]) -> None:
    from shared.db.models import ApiKey
    from shared.db.session import session_scope

    _, settings, cat, _ = secured
    token = _key(settings, "read", cat)
    with session_scope(settings) as session:
        rows = list(session.scalars(select(ApiKey)))
        assert all(token not in (r.token_sha256, r.prefix, r.name) for r in rows)
        assert hashlib.sha256(token.encode()).hexdigest() in {r.token_sha256 for r in rows}


def test_read_key_reads_its_catalogue_only(secured: tuple[Any, Settings, int, int]) -> None:
    client, settings, cat, other = secured
    h = {"Authorization": f"Bearer {_key(settings, 'read', cat)}"}
    assert client.get(f"/api/v1/catalogues/{cat}", headers=h).status_code == 200
    items = client.get(f"/api/v1/catalogues/{cat}/items?limit=1", headers=h).get_json()["items"]
    assert client.get(f"/api/v1/items/{items[0]['id']}", headers=h).status_code == 200
    # a query only reads: allowed, and its job can be polled
    resp = client.post("/api/v1/queries", data={"catalogue": "demo", "file": (io.BytesIO(_jpeg()), "q.jpg")},
                       content_type="multipart/form-data", headers=h)
    assert resp.status_code == 202, resp.get_json()
    assert client.get(resp.headers["Location"], headers=h).status_code == 200
    # the other catalogue: neither read nor listed
    resp = client.get(f"/api/v1/catalogues/{other}", headers=h)
    assert resp.status_code == 403 and _code(resp) == "forbidden"
    resp = client.post("/api/v1/queries", data={"catalogue": str(other), "file": (io.BytesIO(_jpeg()), "q.jpg")},
                       content_type="multipart/form-data", headers=h)
    assert resp.status_code == 403
    names = {c["id"] for c in client.get("/api/v1/catalogues", headers=h).get_json()["catalogues"]}
    assert names == {cat}
    # changing needs write
    resp = client.post(f"/api/v1/catalogues/{cat}/reindex", json={}, headers=h)
    assert resp.status_code == 403 and _code(resp) == "forbidden"
    resp = client.delete(f"/api/v1/items/{items[0]['id']}", headers=h)
    assert resp.status_code == 403
    # every job / new catalogue / metrics: global admin only
    assert client.get("/api/v1/jobs", headers=h).status_code == 403
    assert client.get(f"/api/v1/jobs?catalogue_id={cat}", headers=h).status_code == 200
    assert client.get(f"/api/v1/jobs?catalogue_id={other}", headers=h).status_code == 403
    assert client.post("/api/v1/catalogues", json={"name": "nope"}, headers=h).status_code == 403


def test_write_key_changes_its_catalogue_only(secured: tuple[Any, Settings, int, int]) -> None:
    client, settings, cat, other = secured
    h = {"X-API-Key": _key(settings, "write", cat)}
    resp = client.post(f"/api/v1/catalogues/{cat}/reindex", json={}, headers=h)
    assert resp.status_code == 202
    job_url = resp.headers["Location"]
    assert client.get(job_url, headers=h).status_code == 200
    assert client.post(f"/api/v1/catalogues/{other}/reindex", json={}, headers=h).status_code == 403
    # a job of another catalogue can be neither read nor cancelled
    h_other = {"X-API-Key": _key(settings, "write", other)}
    assert client.get(job_url, headers=h_other).status_code == 403
    assert client.delete(job_url, headers=h_other).status_code == 403
    assert client.delete(job_url, headers=h).status_code == 200


def test_global_admin_and_revocation(secured: tuple[Any, Settings, int, int]) -> None:
    from shared.db import apikeys
    from shared.db.session import session_scope

    client, settings, cat, other = secured
    token = _key(settings, "admin", None)
    h = {"Authorization": f"Bearer {token}"}
    ids = {c["id"] for c in client.get("/api/v1/catalogues", headers=h).get_json()["catalogues"]}
    assert {cat, other} <= ids
    assert client.get("/api/v1/jobs", headers=h).status_code == 200
    resp = client.post("/api/v1/catalogues", json={"name": f"made-{uuid.uuid4().hex[:6]}"}, headers=h)
    assert resp.status_code == 201
    with session_scope(settings) as session:
        grant = apikeys.lookup(session, token)
        assert grant is not None
        apikeys.revoke(session, grant.key_id)
    assert client.get(f"/api/v1/catalogues/{cat}", headers=h).status_code == 401


def test_only_admin_keys_may_be_global(secured: tuple[Any, Settings, int, int]) -> None:
    from shared.errors import InvalidInput

    _, settings, _, _ = secured
    with pytest.raises(InvalidInput):
        _key(settings, "read", None)


def test_cli_creates_a_key_and_prints_it_once(secured: tuple[Any, Settings, int, int],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.cli import main

    client, settings, cat, _ = secured
    monkeypatch.setenv("FIR_DATABASE_URL", settings.resolved_database_url())
    result = CliRunner().invoke(main, ["--home", str(settings.resolved_home()), "keys", "create",
                                       "--catalogue", "demo", "--scope", "read"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("fir_")
    assert client.get(f"/api/v1/catalogues/{cat}", headers={"X-API-Key": token}).status_code == 200
    listed = CliRunner().invoke(main, ["--home", str(settings.resolved_home()), "keys", "list"])
    assert listed.exit_code == 0 and token not in listed.output and token[:12] in listed.output
    bad = CliRunner().invoke(main, ["--home", str(settings.resolved_home()), "keys", "create", "--scope", "read"])
    assert bad.exit_code != 0


def test_without_required_keys_the_api_is_open(api: ApiEnv) -> None:
    assert api.client.get(f"/api/v1/catalogues/{api.catalogue_id}").status_code == 200
