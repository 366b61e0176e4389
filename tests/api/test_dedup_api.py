"""De-duplication over HTTP: start a run (202 + job), run the job with the shared function (the
API's enqueue is recorded), page through groups, export, decide, rerun; check one upload."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.db import services
from shared.db.session import session_scope
from shared.dedup.run import DedupReport, DedupRequest, run_dedup
from tests.api.conftest import ApiEnv

DIM = 16


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _error(resp: Any) -> dict[str, str]:
    body = resp.get_json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    return body["error"]  # type: ignore[no-any-return]


def unit(k: int, wobble: float = 0.0, towards: int = 15) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[k] = 1.0
    v[towards] += wobble
    return v


# key -> (content, category, vector): a0 ~ a1 (near), a2 = a0's bytes (exact), b0 ~ b1, c alone,
# d0 ~ d1 in another category, e has a0's vector but is a shirt (never compared with a0).
PLAN: dict[str, tuple[str, str, np.ndarray]] = {
    "a0": ("a0", "dress", unit(0)),
    "a1": ("a1", "dress", unit(0, 0.03)),
    "a2": ("a0", "dress", unit(0)),
    "b0": ("b0", "dress", unit(1)),
    "b1": ("b1", "dress", unit(1, 0.04)),
    "c": ("c", "dress", unit(2)),
    "d0": ("d0", "shirt", unit(3)),
    "d1": ("d1", "shirt", unit(3, 0.02)),
    "e": ("e", "shirt", unit(0)),
}


def put_items(env: ApiEnv, catalogue_id: int, plan: dict[str, tuple[str, str, np.ndarray]]) -> dict[str, int]:
    with session_scope(env.settings) as s:
        res = services.upsert_items(s, catalogue_id, [
            services.ScannedItem(key=k, sha256=sha(content), given_category=cat, width=100 + i, height=100)
            for i, (k, (content, cat, _)) in enumerate(plan.items())])
        ids = [res.ids_by_key[k] for k in plan]
        services.write_embeddings(s, env.version_id, ids, np.stack([v for _, _, v in plan.values()]))
        return dict(res.ids_by_key)


@pytest.fixture()
def shop(api: ApiEnv) -> tuple[int, dict[str, int]]:
    with session_scope(api.settings) as s:
        cat = services.create_catalogue(s, f"dedup-{uuid.uuid4().hex[:8]}", source_kind="folder",
                                        source_path="").id
    return cat, put_items(api, cat, PLAN)


def start(api: ApiEnv, catalogue_id: int, **body: Any) -> int:
    resp = api.client.post(f"/api/v1/catalogues/{catalogue_id}/dedup", json=body)
    assert resp.status_code == 202, resp.get_json()
    job_id = int(resp.get_json()["job_id"])
    assert resp.headers["Location"] == f"/api/v1/jobs/{job_id}"
    assert api.sent.calls[-1] == ("fir.dedup", job_id)
    return job_id


def run_job(api: ApiEnv, job_id: int) -> DedupReport:
    """What the worker's fir.dedup task does (claim, run, finish), called directly."""
    with session_scope(api.settings) as s:
        job = services.get_job(s, job_id)
        if job.status == "queued":
            services.transition_job(s, job_id, "running")
    params = dict(job.params or {})
    catalogue_id = params.pop("catalogue_id")
    report = run_dedup(api.settings, catalogue_id, DedupRequest.from_params(params), job_id=job_id)
    with session_scope(api.settings) as s:
        if services.get_job(s, job_id).status == "running":
            services.transition_job(s, job_id, "succeeded", result={"dedup_run_id": report.run_id})
    return report


def all_groups(api: ApiEnv, run_id: int, **query: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 1, **query, **({"cursor": cursor} if cursor else {})}
        resp = api.client.get(f"/api/v1/dedup-runs/{run_id}/groups", query_string=params)
        assert resp.status_code == 200, resp.get_json()
        page = resp.get_json()
        out.extend(page["groups"])
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def keys_of(group: dict[str, Any], ids: dict[str, int]) -> set[str]:
    by_id = {v: k for k, v in ids.items()}
    return {by_id[m["item_id"]] for m in group["members"]}


def test_dedup_job_groups_pages_and_export(api: ApiEnv, shop: tuple[int, dict[str, int]]) -> None:
    cat, ids = shop
    job_id = start(api, cat, threshold=0.99, keep_rule="largest")
    job = api.client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["type"] == "dedup" and job["status"] == "queued"
    assert job["params"]["threshold"] == 0.99 and job["params"]["keep_rule"] == "largest"

    report = run_job(api, job_id)
    assert report.groups == 3 and report.new_since_previous == 3 and report.dismissed == 0
    groups = all_groups(api, report.run_id)
    assert [keys_of(g, ids) for g in groups] == [{"a0", "a1", "a2"}, {"b0", "b1"}, {"d0", "d1"}]
    a = groups[0]
    assert a["kind"] == "near" and a["category"] == "dress" and a["size"] == 3
    assert a["suggested_keep_item_id"] == ids["a2"]  # the largest photo (largest = most pixels)
    members = {m["item_id"]: m for m in a["members"]}
    assert members[ids["a0"]]["hash_equal"] and not members[ids["a1"]]["hash_equal"]
    assert members[ids["a1"]]["cosine"] == pytest.approx(1 / np.sqrt(1 + 0.03**2), abs=1e-5)
    assert members[ids["a2"]]["is_representative"] and members[ids["a2"]]["image_url"].endswith("/image")
    assert all(g["new_since_previous"] and not g["dismissed"] and g["decision"] is None for g in groups)

    run = api.client.get(f"/api/v1/dedup-runs/{report.run_id}").get_json()
    assert run["counts"] == {"all": 3, "dismissed": 0, "shown": 3, "new_since_previous": 3}
    assert run["params"]["stats"]["near_groups"] == 3
    listed = api.client.get(f"/api/v1/catalogues/{cat}/dedup-runs").get_json()["runs"]
    assert [r["id"] for r in listed] == [report.run_id]
    assert api.client.get(f"/api/v1/dedup-runs/{report.run_id}/groups?kind=exact").get_json()["groups"] == []
    one = api.client.get(f"/api/v1/dedup-groups/{a['id']}").get_json()
    assert one["members"] == a["members"]

    resp = api.client.get(f"/api/v1/dedup-runs/{report.run_id}/export?format=csv")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert len(rows) == 7 and {r["group_id"] for r in rows} == {str(g["id"]) for g in groups}
    assert {r["key"] for r in rows if r["is_representative"] == "1"} == {"a2", "b1", "d1"}  # the widest of each
    resp = api.client.get(f"/api/v1/dedup-runs/{report.run_id}/export?format=json")
    body = json.loads(resp.get_data(as_text=True))
    assert body["run"]["id"] == report.run_id and len(body["groups"]) == 3
    assert body["groups"][0]["members"][0]["key"] in {"a0", "a1", "a2"}


def test_one_category_and_the_job_is_stored_once(api: ApiEnv, shop: tuple[int, dict[str, int]]) -> None:
    cat, ids = shop
    job_id = start(api, cat, category="shirt", threshold=0.99)
    first = run_job(api, job_id)
    again = run_job(api, job_id)  # a redelivered job finds its run
    assert again.reused and again.run_id == first.run_id
    assert [keys_of(g, ids) for g in all_groups(api, first.run_id)] == [{"d0", "d1"}]


def test_decisions_persist_across_reruns(api: ApiEnv, shop: tuple[int, dict[str, int]]) -> None:
    cat, ids = shop
    first = run_job(api, start(api, cat, threshold=0.99))
    groups = {frozenset(keys_of(g, ids)): g for g in all_groups(api, first.run_id)}
    a, b = groups[frozenset({"a0", "a1", "a2"})], groups[frozenset({"b0", "b1"})]

    resp = api.client.post(f"/api/v1/dedup-groups/{b['id']}/decision",
                           json={"decision": "not_duplicate", "decided_by": "ana"})
    assert resp.status_code == 200 and resp.get_json()["decision"] == "not_duplicate"
    resp = api.client.post(f"/api/v1/dedup-groups/{a['id']}/decision",
                           json={"decision": "keep_item", "item_id": ids["a1"]})
    assert resp.status_code == 200 and resp.get_json()["kept_item_id"] == ids["a1"]
    # In the run under review the decision shows on the group (it stays listed).
    shown = api.client.get(f"/api/v1/dedup-groups/{b['id']}").get_json()
    assert shown["decision"]["decision"] == "not_duplicate" and shown["decision"]["decided_by"] == "ana"

    # Rerun: the same groups (same fingerprints); b is hidden, a keeps its decision.
    second = run_job(api, start(api, cat, threshold=0.99))
    assert second.previous_run_id == first.run_id and second.dismissed == 1 and second.new_since_previous == 0
    listed = all_groups(api, second.run_id)
    assert [keys_of(g, ids) for g in listed] == [{"a0", "a1", "a2"}, {"d0", "d1"}]
    assert listed[0]["decision"]["decision"] == "keep_item" and listed[0]["fingerprint"] == a["fingerprint"]
    assert not any(g["new_since_previous"] for g in listed)
    with_dismissed = all_groups(api, second.run_id, include_dismissed="true")
    hidden = [g for g in with_dismissed if g["dismissed"]]
    assert len(hidden) == 1 and hidden[0]["fingerprint"] == b["fingerprint"]

    # b1's photo changes (new content, re-embedded, still close to b0): the group is back.
    changed = {"b1": ("b1-recompressed", "dress", unit(1, 0.05))}
    put_items(api, cat, changed)
    third = run_job(api, start(api, cat, threshold=0.99))
    listed = all_groups(api, third.run_id)
    back = [g for g in listed if keys_of(g, ids) == {"b0", "b1"}]
    assert len(back) == 1 and back[0]["fingerprint"] != b["fingerprint"]
    assert back[0]["decision"] is None and back[0]["new_since_previous"] and not back[0]["dismissed"]
    assert [g["new_since_previous"] for g in listed if g is not back[0]] == [False, False]


def test_only_new_items_against_the_rest(api: ApiEnv, shop: tuple[int, dict[str, int]]) -> None:
    cat, ids = shop
    run_job(api, start(api, cat, threshold=0.99))
    ids.update(put_items(api, cat, {"c-copy": ("c-copy", "dress", unit(2, 0.01))}))
    report = run_job(api, start(api, cat, threshold=0.99, only_new=True))
    assert report.stats["new_items"] == 1
    assert [keys_of(g, ids) for g in all_groups(api, report.run_id)] == [{"c", "c-copy"}]


def test_worker_task_runs_the_job(api: ApiEnv, shop: tuple[int, dict[str, int]],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import tasks

    monkeypatch.setitem(tasks.app.conf, "fir_settings", api.settings)
    cat, ids = shop
    job_id = start(api, cat, threshold=0.99, use_phash=True)
    assert tasks.run_dedup.run(job_id)["dedup_run_id"]
    job = api.client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["done"] == job["progress"]["total"]
    # These items have no image files, so no perceptual hash: no near pair can be confirmed
    # (a0-a1, a0-a2, a1-a2, b0-b1, d0-d1); a0 and a2 are still an exact group.
    assert job["result"]["groups"] == 1 and job["result"]["stats"]["phash_rejected"] == 5
    assert tasks.run_dedup.run(job_id) == {"skipped": job_id}  # finished: a second delivery skips


def test_dedup_of_an_indexed_catalogue(api: ApiEnv) -> None:
    """The shared demo catalogue (real image files, ResNet vectors): hashes and a stable rerun."""
    first = run_job(api, start(api, api.catalogue_id, use_phash=True))
    second = run_job(api, start(api, api.catalogue_id, use_phash=True))
    fps = [g["fingerprint"] for g in all_groups(api, first.run_id, limit=500)]
    assert fps == [g["fingerprint"] for g in all_groups(api, second.run_id, limit=500)]
    with session_scope(api.settings) as s:
        items = [i for i in services.get_items(s, range(1, 100_000)).values() if i.catalogue_id == api.catalogue_id]
    assert all(i.phash and len(i.phash) == 16 for i in items if i.status == "active")


def test_bad_input(api: ApiEnv, shop: tuple[int, dict[str, int]]) -> None:
    cat, ids = shop
    url = f"/api/v1/catalogues/{cat}/dedup"
    before = len(api.sent.calls)
    resp = api.client.post("/api/v1/catalogues/99999999/dedup", json={})
    assert resp.status_code == 404 and _error(resp)["code"] == "not_found"
    for body in ({"threshold": 1.5}, {"threshold": 0}, {"threshold": -0.2}, {"threshold": "high"},
                 {"thresholds": {"dress": 3}}, {"keep_rule": "newest"}, {"phash_max_distance": 65},
                 {"since": "yesterday"}, {"only_new": "perhaps"}):
        resp = api.client.post(url, json=body)
        assert resp.status_code == 422, (body, resp.get_json())
        assert _error(resp)["code"] == "validation_error"
    resp = api.client.post(url, json={"category": "hats"})
    assert resp.status_code == 422 and _error(resp)["code"] == "unknown_category"
    assert len(api.sent.calls) == before  # nothing enqueued

    assert _error(api.client.get("/api/v1/dedup-runs/99999999/groups"))["code"] == "not_found"
    assert api.client.get("/api/v1/dedup-runs/99999999").status_code == 404
    assert api.client.get("/api/v1/dedup-runs/99999999/export?format=csv").status_code == 404
    assert api.client.get("/api/v1/dedup-groups/99999999").status_code == 404
    resp = api.client.post("/api/v1/dedup-groups/99999999/decision", json={"decision": "confirmed"})
    assert resp.status_code == 404 and _error(resp)["code"] == "not_found"

    report = run_job(api, start(api, cat, threshold=0.99))
    group = all_groups(api, report.run_id)[0]
    decide = f"/api/v1/dedup-groups/{group['id']}/decision"
    resp = api.client.post(decide, json={"decision": "maybe"})
    assert resp.status_code == 422 and _error(resp)["code"] == "validation_error"
    resp = api.client.post(decide, json={"decision": "keep_item"})
    assert resp.status_code == 400 and "kept item" in _error(resp)["message"]
    resp = api.client.post(decide, json={"decision": "keep_item", "item_id": ids["c"]})
    assert resp.status_code == 400 and "not a member" in _error(resp)["message"]
    resp = api.client.post(decide, json={"decision": "confirmed", "item_id": ids["a0"]})
    assert resp.status_code == 400
    assert api.client.get(f"/api/v1/dedup-runs/{report.run_id}/export?format=xml").status_code == 422
    assert api.client.get(f"/api/v1/dedup-runs/{report.run_id}/groups?limit=0").status_code == 422


def _demo_item(api: ApiEnv) -> Any:
    with session_scope(api.settings) as s:
        from shared.db import listing

        return listing.list_items(s, api.catalogue_id, status="active", limit=1)[0]


def test_check_duplicate_flags_results(api: ApiEnv) -> None:
    item = _demo_item(api)
    data = Path(item.location).read_bytes()
    resp = api.client.post(f"/api/v1/catalogues/{api.catalogue_id}/check-duplicate",
                           data={"file": (io.BytesIO(data), "up.jpg"), "threshold": "0.95"},
                           content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["job_id"]
    assert api.sent.calls[-1] == ("fir.query", job_id)
    params = api.client.get(f"/api/v1/jobs/{job_id}").get_json()["params"]
    assert params["duplicate_threshold"] == 0.95 and params["exact_item_ids"] == [item.id]
    assert params["metric"] == "cosine" and params["routing"] == "none"

    other = next(i for i in range(item.id + 1, item.id + 50) if i != item.id)
    with session_scope(api.settings) as s:  # what the query worker writes
        services.transition_job(s, job_id, "running")
        services.write_query_results(s, job_id, item_ids=[other, item.id], scores=[0.97, 0.2],
                                     model_version_id=api.version_id, catalogue_id=api.catalogue_id,
                                     metric="cosine", k=10)
        services.transition_job(s, job_id, "succeeded")
    job = api.client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert [h["is_duplicate"] for h in job["results"]] == [True, True]  # by cosine; by the same bytes
    assert job["duplicate"]["is_duplicate"] and job["duplicate"]["duplicate_item_ids"] == sorted([other, item.id])
    page = api.client.get(f"/api/v1/jobs/{job_id}/results").get_json()
    assert [h["is_duplicate"] for h in page["results"]] == [True, True]

    resp = api.client.post(f"/api/v1/catalogues/{api.catalogue_id}/check-duplicate",
                           data={"file": (io.BytesIO(data), "up.jpg"), "threshold": "2"},
                           content_type="multipart/form-data")
    assert resp.status_code == 422
    resp = api.client.post("/api/v1/catalogues/99999999/check-duplicate",
                           data={"file": (io.BytesIO(data), "up.jpg")}, content_type="multipart/form-data")
    assert resp.status_code == 404


def test_queries_take_a_duplicate_threshold_and_stay_unchanged_without(api: ApiEnv) -> None:
    data = Path(_demo_item(api).location).read_bytes()

    def post(**extra: str) -> Any:
        return api.client.post("/api/v1/queries", content_type="multipart/form-data",
                               data={"catalogue": str(api.catalogue_id), "file": (io.BytesIO(data), "q.jpg"),
                                     **extra})

    assert post(duplicate_threshold="0.9", metric="euclidean").status_code == 400
    assert post(duplicate_threshold="0").status_code == 422
    flagged = post(duplicate_threshold="0.9")
    assert flagged.status_code == 202
    flagged_job = api.client.get(f"/api/v1/jobs/{flagged.get_json()['job_id']}").get_json()
    assert flagged_job["params"]["duplicate_threshold"] == 0.9
    # Leave no query waiting: the worker's micro-batching would pick it up in later tests.
    assert api.client.delete(f"/api/v1/jobs/{flagged_job['id']}").status_code == 200
    plain = post()
    plain_id = plain.get_json()["job_id"]
    assert "duplicate_threshold" not in api.client.get(f"/api/v1/jobs/{plain_id}").get_json()["params"]
    with session_scope(api.settings) as s:
        services.transition_job(s, plain_id, "running")
        services.write_query_results(s, plain_id, item_ids=[_demo_item(api).id], scores=[0.99],
                                     model_version_id=api.version_id, catalogue_id=api.catalogue_id,
                                     metric="cosine", k=10)
        services.transition_job(s, plain_id, "succeeded")
    job = api.client.get(f"/api/v1/jobs/{plain_id}").get_json()
    assert "is_duplicate" not in job["results"][0] and "duplicate" not in job


def test_cli_run_export_decide_calibrate(api: ApiEnv, shop: tuple[int, dict[str, int]], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from shared.cli import main

    cat, ids = shop
    home = str(api.settings.resolved_home())
    runner = CliRunner()
    with session_scope(api.settings) as s:
        name = services.get_catalogue(s, cat).name
    res = runner.invoke(main, ["--home", home, "dedup", name, "--threshold", "0.99", "--keep", "oldest"])
    assert res.exit_code == 0, res.output
    assert "3 groups (0 exact, 3 near" in res.output and "keep item" in res.output
    run_id = int(res.output.split("dedup run ")[1].split(":")[0])
    out = tmp_path / "run.csv"
    res = runner.invoke(main, ["--home", home, "dedup", "export", str(run_id), "--format", "csv", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(out.read_text().splitlines()) == 8
    res = runner.invoke(main, ["--home", home, "dedup", "export", str(run_id), "--format", "json"])
    group_id = json.loads(res.output)["groups"][0]["id"]
    res = runner.invoke(main, ["--home", home, "dedup", "decide", str(group_id), "keep_item", "--keep", str(ids["a1"])])
    assert res.exit_code == 0 and f"keep item {ids['a1']}" in res.output
    res = runner.invoke(main, ["--home", home, "dedup", "run", "no-such-catalogue"])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(main, ["--home", home, "dedup", str(cat), "--threshold", "1.5"])
    assert res.exit_code == 2 and "threshold" in res.output

    # Calibration on the generated catalogue's photos, with the ImageNet EfficientNet-Lite0.
    res = runner.invoke(main, ["--home", home, "dedup", "calibrate", "--dataset", str(api.trained.catalogue),
                               "--model", "efficientnet_lite0", "--per-category", "3", "--distractors", "3",
                               "--image-size", "96", "--transforms", "jpeg,flip,crop", "--out", str(tmp_path / "cal")])
    assert res.exit_code == 0, res.output
    thresholds = json.loads((tmp_path / "cal" / "thresholds.json").read_text())
    assert 0 < thresholds["default"] <= 1 and set(thresholds["categories"]) == {"dress", "shirt", "toptee"}
    assert (tmp_path / "cal" / "pr_curve.png").stat().st_size > 1000
    assert len((tmp_path / "cal" / "pairs.csv").read_text().splitlines()) > 27
    res = runner.invoke(main, ["--home", home, "dedup", str(cat), "--thresholds",
                               str(tmp_path / "cal" / "thresholds.json"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["groups"] >= 1
