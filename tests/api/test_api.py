from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from tests.api.conftest import ApiEnv


def _jpeg(colour: tuple[int, int, int] = (120, 30, 30), size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _error(resp: object) -> dict[str, str]:
    body = resp.get_json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    return body["error"]  # type: ignore[no-any-return]


def test_health(api: ApiEnv) -> None:
    assert api.client.get("/healthz").get_json()["status"] == "ok"
    resp = api.client.get("/readyz")
    assert resp.status_code == 503  # no worker has sent a heartbeat
    assert resp.get_json()["checks"]["database"] == "ok"


def test_catalogue_detail(api: ApiEnv) -> None:
    resp = api.client.get(f"/api/v1/catalogues/{api.catalogue_id}")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["counts"]["by_status"]["active"] == 72
    assert body["counts"]["by_category"] == {"dress": 24, "shirt": 24, "toptee": 24}
    assert body["active_model"]["id"] == api.version_id
    assert body["index_generation"] >= 1 and body["next_reindex"]
    names = [c["name"] for c in api.client.get("/api/v1/catalogues").get_json()["catalogues"]]
    assert "demo" in names


def test_create_catalogue_and_errors(api: ApiEnv, tmp_path: Path) -> None:
    resp = api.client.post("/api/v1/catalogues", json={"name": "new-one"})
    assert resp.status_code == 201 and resp.get_json()["name"] == "new-one"
    assert _error(api.client.post("/api/v1/catalogues", json={"name": "new-one"}))["code"] == "conflict"
    resp = api.client.post("/api/v1/catalogues", json={"name": "x", "root": str(tmp_path / "missing")})
    assert resp.status_code == 400 and "not a folder" in _error(resp)["message"]
    resp = api.client.post("/api/v1/catalogues", json={"nom": "x"})
    assert resp.status_code == 422 and _error(resp)["code"] == "validation_error"
    assert _error(api.client.get("/api/v1/catalogues/999999"))["code"] == "not_found"


def test_query_submission_contract(api: ApiEnv) -> None:
    data = {"catalogue": str(api.catalogue_id), "k": "5", "metric": "cosine", "routing": "svm",
            "file": (io.BytesIO(_jpeg()), "q.jpg")}
    resp = api.client.post("/api/v1/queries", data=data, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["job_id"]
    assert resp.headers["Location"] == f"/api/v1/jobs/{job_id}"
    assert api.sent.calls[-1] == ("fir.query", job_id)
    job = api.client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["status"] == "queued" and job["type"] == "query" and job["params"]["k"] == 5
    assert "upload" not in job["params"]


def test_query_by_name_and_item_id(api: ApiEnv) -> None:
    items = api.client.get(f"/api/v1/catalogues/{api.catalogue_id}/items?limit=2").get_json()["items"]
    resp = api.client.post("/api/v1/queries", json={"catalogue": "demo", "item_id": items[0]["id"]})
    assert resp.status_code == 202
    resp = api.client.post("/api/v1/queries", json={"catalogue": "demo", "item_id": 10_000_000})
    assert resp.status_code == 404


def test_idempotency_key(api: ApiEnv) -> None:
    def submit() -> int:
        resp = api.client.post("/api/v1/queries", data={"catalogue": "demo", "file": (io.BytesIO(_jpeg()), "q.jpg")},
                               headers={"Idempotency-Key": "abc-123"}, content_type="multipart/form-data")
        assert resp.status_code == 202
        return int(resp.get_json()["job_id"])

    before = len(api.sent.calls)
    first, second = submit(), submit()
    assert first == second and len(api.sent.calls) == before + 1


def test_bad_query_input_writes_nothing(api: ApiEnv) -> None:
    before = api.client.get("/api/v1/jobs?limit=200").get_json()["jobs"]
    cases = [
        ({"catalogue": "demo", "k": "0", "file": (io.BytesIO(_jpeg()), "q.jpg")}, 422),
        ({"catalogue": "demo", "k": "-3", "file": (io.BytesIO(_jpeg()), "q.jpg")}, 422),
        ({"catalogue": "demo", "k": "99999999", "file": (io.BytesIO(_jpeg()), "q.jpg")}, 422),
        ({"catalogue": "demo", "metric": "manhattan", "file": (io.BytesIO(_jpeg()), "q.jpg")}, 422),
        ({"catalogue": "demo", "routing": "magic", "file": (io.BytesIO(_jpeg()), "q.jpg")}, 422),
        ({"catalogue": "demo", "routing": "label", "file": (io.BytesIO(_jpeg()), "q.jpg")}, 400),
        ({"catalogue": "nope", "file": (io.BytesIO(_jpeg()), "q.jpg")}, 404),
        ({"catalogue": "demo", "file": (io.BytesIO(b"not an image"), "q.jpg")}, 422),
        ({"catalogue": "demo", "file": (io.BytesIO(b""), "q.jpg")}, 422),
        ({"catalogue": "demo", "file": (io.BytesIO(_jpeg()[:200]), "q.jpg")}, 422),
        ({"catalogue": "demo"}, 422),
    ]
    for data, status in cases:
        resp = api.client.post("/api/v1/queries", data=data, content_type="multipart/form-data")
        assert resp.status_code == status, (data, resp.get_json())
        _error(resp)
    after = api.client.get("/api/v1/jobs?limit=200").get_json()["jobs"]
    assert len(after) == len(before)


def test_items_upload_list_get_image_delete(api: ApiEnv) -> None:
    resp = api.client.post(f"/api/v1/catalogues/{api.catalogue_id}/items", content_type="multipart/form-data",
                           data={"file": (io.BytesIO(_jpeg((1, 200, 3))), "new.jpg"), "key": "SKU-1",
                                 "category": "dress", "metadata": '{"colour": "green"}'})
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    item = body["items"][0]
    assert item["key"] == "SKU-1" and item["metadata"]["colour"] == "green" and item["category"] == "dress"
    assert body["job_id"] and api.sent.calls[-1] == ("fir.index", body["job_id"])
    assert api.client.get(item["image_url"]).data[:2] == b"\xff\xd8"
    assert api.client.get(f"/api/v1/items/{item['id']}").get_json()["key"] == "SKU-1"
    page = api.client.get(f"/api/v1/catalogues/{api.catalogue_id}/items?category=dress&limit=10").get_json()
    assert len(page["items"]) == 10 and page["next_cursor"]
    rest = api.client.get(f"/api/v1/catalogues/{api.catalogue_id}/items?category=dress&limit=500"
                          f"&cursor={page['next_cursor']}").get_json()
    ids = [i["id"] for i in page["items"] + rest["items"]]
    assert len(ids) == len(set(ids)) == 25
    assert api.client.delete(f"/api/v1/items/{item['id']}").status_code == 204
    assert api.client.get(f"/api/v1/items/{item['id']}").get_json()["status"] == "removed"


def test_items_bad_input(api: ApiEnv) -> None:
    url = f"/api/v1/catalogues/{api.catalogue_id}/items"
    resp = api.client.post(url, content_type="multipart/form-data",
                           data={"file": (io.BytesIO(_jpeg()), "a.jpg"), "key": "../../etc/passwd"})
    assert resp.status_code == 400 and "invalid item key" in _error(resp)["message"]
    resp = api.client.post(url, json={"paths": ["../../../etc/passwd"]})
    assert resp.status_code == 400 and "outside the catalogue's root" in _error(resp)["message"]
    resp = api.client.post(url, content_type="multipart/form-data",
                           data={"file": (io.BytesIO(b"GIF89a-not-really"), "a.gif")})
    assert resp.status_code == 422 and _error(resp)["code"] == "bad_image"


def test_items_from_server_paths(api: ApiEnv) -> None:
    rel = next((api.trained.catalogue / "test" / "shirt").glob("*.jpg")).relative_to(api.trained.catalogue)
    resp = api.client.post(f"/api/v1/catalogues/{api.catalogue_id}/items", json={"paths": [str(rel)]})
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["items"][0]["key"] == rel.as_posix()


def test_jobs_cancel_list_and_reindex(api: ApiEnv) -> None:
    resp = api.client.post(f"/api/v1/catalogues/{api.catalogue_id}/reindex", json={"full": True})
    assert resp.status_code == 202
    job_id = resp.get_json()["job_id"]
    assert api.sent.calls[-1] == ("fir.index", job_id)
    listed = api.client.get("/api/v1/jobs?type=reindex").get_json()["jobs"]
    assert job_id in [j["id"] for j in listed]
    resp = api.client.delete(f"/api/v1/jobs/{job_id}")
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    assert _error(api.client.delete(f"/api/v1/jobs/{job_id}"))["code"] == "conflict"
    resp = api.client.get(f"/api/v1/jobs/{job_id}/results")
    assert resp.status_code == 409
    assert _error(api.client.get("/api/v1/jobs/99999999"))["code"] == "not_found"
    assert api.client.get("/api/v1/jobs?status=bogus").status_code == 422


def test_openapi_documents_every_route(api: ApiEnv) -> None:
    spec = api.client.get("/api/v1/openapi.json").get_json()
    paths = set(spec["paths"])
    app = api.client.application
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(("/api/v1/", "/healthz", "/readyz")) and rule.endpoint not in (
            "openapi.spec", "openapi.docs", "static"
        ) and not rule.rule.startswith("/api/v1/docs"):
            documented = rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
            assert documented in paths or rule.rule == "/api/v1/openapi.json", rule.rule


def test_vectors_export_import_round_trip(api: ApiEnv, tmp_path: Path) -> None:
    import numpy as np
    from click.testing import CliRunner

    from shared.cli import main
    from shared.db import services
    from shared.db.session import session_scope
    from shared.vision.features import FeatureSet

    env = {"FIR_DATABASE_URL": api.settings.resolved_database_url()}
    home = str(api.settings.resolved_home())
    runner = CliRunner(env=env)
    res = runner.invoke(main, ["--home", home, "vectors", "export", "demo", "--out", str(tmp_path / "v.npz")])
    assert res.exit_code == 0, res.output
    feats = FeatureSet.load(tmp_path / "v.npz")
    assert len(feats) >= 72 and feats.model_id == api.trained.model_id
    with session_scope(api.settings) as session:
        before = services.load_vectors(session, api.catalogue_id, api.version_id)[1]
    res = runner.invoke(main, ["--home", home, "vectors", "import", "demo", str(tmp_path / "v.npz")])
    assert res.exit_code == 0 and f"{len(feats)} of {len(feats)} vectors imported" in res.output
    with session_scope(api.settings) as session:
        after = services.load_vectors(session, api.catalogue_id, api.version_id)[1]
    np.testing.assert_array_equal(before, after)
    res = runner.invoke(main, ["--home", home, "vectors", "export", "no-such", "--out", str(tmp_path / "x.npz")])
    assert res.exit_code == 2 and "not found" in res.output
