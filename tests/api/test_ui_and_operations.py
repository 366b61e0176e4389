"""The web UI's pages and assets, the local API docs, /metrics and request ids, over the Flask
test client (the browser tests in tests/e2e drive the same pages for real)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.api.conftest import ApiEnv

API_DIR = Path(__file__).resolve().parents[2] / "api"
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


@pytest.mark.parametrize("path", ["/ui/", "/ui/search", "/ui/jobs", "/ui/catalogues", "/ui/catalogues/1",
                                  "/ui/reports", "/ui/duplicates"])
def test_pages_are_html_with_a_strict_policy(api: ApiEnv, path: str) -> None:
    resp = api.client.get(path)
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    html = resp.get_data(as_text=True)
    assert not EXTERNAL.search(html), "a page loads something from another host"
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        assert api.client.get(asset).status_code == 200, asset
    assert "<script>" not in html and " style=" not in html  # nothing inline: the policy allows none


def test_root_redirects_to_the_ui(api: ApiEnv) -> None:
    resp = api.client.get("/")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/ui/search")


def test_static_files_reference_no_other_host() -> None:
    for path in (API_DIR / "static").glob("*.*"):
        text = path.read_text(encoding="utf-8").replace("http://www.w3.org/2000/svg", "")  # a namespace, not a load
        assert "http://" not in text and "https://" not in text, path
    for path in (API_DIR / "templates").glob("*.html"):
        assert not EXTERNAL.search(path.read_text(encoding="utf-8")), path


def test_docs_page_loads_its_assets_locally(api: ApiEnv) -> None:
    html = api.client.get("/api/v1/docs").get_data(as_text=True)
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(u.startswith("/static/vendor/swagger-ui/") for u in urls), urls
    for url in urls:
        assert api.client.get(url).status_code == 200, url
    assert "fonts.googleapis" not in html and "cdn." not in html
    assert (API_DIR / "static" / "vendor" / "swagger-ui" / "LICENSE").is_file()


def test_openapi_documents_metrics_and_not_the_ui(api: ApiEnv) -> None:
    spec = api.client.get("/api/v1/openapi.json").get_json()
    assert "/metrics" in spec["paths"]
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert not any(p.startswith("/ui") for p in spec["paths"])


def _value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics(api: ApiEnv) -> None:
    api.client.get(f"/api/v1/catalogues/{api.catalogue_id}")
    resp = api.client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    text = resp.get_data(as_text=True)
    assert re.search(r'fir_http_request_duration_seconds_count\{[^}]*route="/api/v1/catalogues/<int:catalogue_id>"',
                     text)
    assert _value(text, "fir_index_size", catalogue="demo", catalogue_id=str(api.catalogue_id)) == 72
    assert _value(text, "fir_active_model_version", backbone="resnet50") == api.version_id
    assert re.search(r'fir_queue_depth\{type="query"\} \d+', text)
    assert "fir_metrics_database_up 1.0" in text and "fir_workers_live 0.0" in text


def test_metrics_count_queued_jobs(api: ApiEnv) -> None:
    def queued() -> float | None:
        return _value(api.client.get("/metrics").get_data(as_text=True), "fir_queue_depth", type="reindex")

    before = queued()
    job_id = api.client.post(f"/api/v1/catalogues/{api.catalogue_id}/reindex", json={}).get_json()["job_id"]
    assert before is not None and queued() == before + 1
    api.client.delete(f"/api/v1/jobs/{job_id}")
    assert queued() == before


def test_request_ids(api: ApiEnv) -> None:
    resp = api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    made = api.client.get("/healthz", headers={"X-Request-ID": "bad id <script>"}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)


def test_access_log_carries_the_request_id(api: ApiEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="fir.access")
    api.client.get("/api/v1/jobs?limit=1", headers={"X-Request-ID": "req-42"})
    records = [r for r in caplog.records if r.name == "fir.access"]
    assert records and records[-1].request_id == "req-42"  # type: ignore[attr-defined]
    assert records[-1].route == "/api/v1/jobs" and records[-1].status == 200  # type: ignore[attr-defined]


# -- the evaluation report page ----------------------------------------------------------------
def _report(home: Path, name: str, with_curve: bool = True) -> Path:
    folder = home / "reports" / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"mode": m, "k": k, "mean_ap": 0.8, "mean_precision": 0.7, "router_accuracy": 0.9 if m != "none" else None,
             "router_coverage": None, "ms_matching": 0.1 * k, "ms_matching_batched": 0.01, "ms_router": None,
             "ms_with_extraction": None, "mean_returned": k, "n_queries": 4}
            for m in ("label", "svm", "none") for k in (10, 100)]
    report = {"meta": {"model_id": "abc", "backbone": "resnet50", "metric": "cosine", "per_category_k": 10,
                       "categories": ["dress", "shirt"]},
              "rows": rows, "per_category": {"svm": {"dress": 0.9, "shirt": 0.5}, "none": {"dress": 0.4, "shirt": 0.3}},
              "examples": [], "notes": ["<b>escaped</b>"]}
    if with_curve:
        report["pr_curve"] = {"svm": [{"k": 1, "precision": 1.0, "recall": 0.1}, {"k": 10, "precision": 0.8,
                                                                                 "recall": 0.6}]}
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_report_page(api: ApiEnv) -> None:
    home = api.settings.resolved_home()
    _report(home, "20200101-000000", with_curve=False)
    _report(home, "20990101-000000")
    html = api.client.get("/ui/reports").get_data(as_text=True)  # the newest first
    assert 'aria-current="page">20990101-000000<' in html
    assert html.count("<svg") == 3 and 'class="series" data-series="svm"' in html
    assert "&lt;b&gt;escaped&lt;/b&gt;" in html and "<b>escaped</b>" not in html
    old = api.client.get("/ui/reports/20200101-000000").get_data(as_text=True)
    assert "no curve in this report" in old and old.count("<tr>") >= 6
    assert api.client.get("/ui/reports/20990101-000000/examples.png").status_code == 404


@pytest.mark.parametrize("name", ["..", "..%2F..%2Fetc", "nope", ".hidden", "a" * 200])
def test_report_names_are_checked(api: ApiEnv, name: str) -> None:
    assert api.client.get(f"/ui/reports/{name}").status_code == 404
    assert api.client.get(f"/ui/reports/{name}/examples.png").status_code == 404
