"""The web UI in a real browser (headless Chromium) against FIR's real processes. Each test
saves a screenshot under ``test-artifacts/e2e/``."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Live, Watched
from tests.integration.test_service import poll_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _query_photo(live: Live, category: str = "dress") -> Any:
    return next((live.trained.catalogue / "test" / category).glob("*.jpg"))


def _choose_shop(page: Watched, live: Live) -> None:
    page.page.wait_for_selector(f"#catalogue option[value='{live.catalogue_id}']", state="attached")
    page.page.select_option("#catalogue", str(live.catalogue_id))
    page.page.wait_for_selector("#category option[value='dress']", state="attached")


def test_search_by_uploaded_photo(page: Watched, live: Live) -> None:
    page.goto("/ui/search")
    _choose_shop(page, live)
    page.page.set_input_files("#file", str(_query_photo(live)))
    assert page.page.locator("#preview").is_visible()
    page.page.fill("#k", "12")
    page.page.click("#search-button")
    page.page.wait_for_selector("#results .result", timeout=90_000)
    cards = page.page.locator("#results .result")
    assert cards.count() == 12
    scores = [float(s) for s in page.page.locator("#results .result .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0001 for s in scores)
    assert re.search(r"Job \d+: 12 results", page.page.locator("#status").inner_text())
    assert "Routing svm-fallback" in page.page.locator("#routing-summary").inner_text()
    assert page.page.locator("#probabilities .meter").count() == 3  # the router's confidence per category
    assert page.page.locator("#results .relevant, #results .wrong").count() == 0  # category unknown: no frames
    page.page.select_option("#category", "dress")  # now it is known: frames
    assert page.page.locator("#results .relevant").count() + page.page.locator("#results .wrong").count() == 12
    page.wait_js("Array.from(document.querySelectorAll('#results img')).every(i => i.complete)")
    page.shot("search-upload")
    page.check_clean()


def test_search_by_picked_item_frames_results(page: Watched, live: Live) -> None:
    page.goto("/ui/search")
    _choose_shop(page, live)
    page.page.click("#pick-toggle")
    page.page.select_option("#picker-category", "shirt")
    page.page.wait_for_selector("#picker-grid .picker-item")
    first = page.page.locator("#picker-grid .picker-item").first
    item_id = int(first.get_attribute("data-item-id") or 0)
    first.click()
    assert page.page.locator("#category").input_value() == "shirt"  # the item's category is known
    page.page.select_option("#routing", "none")  # the whole catalogue: red frames are likely
    page.page.fill("#k", "16")
    page.page.click("#search-button")
    page.page.wait_for_selector("#results .result", timeout=90_000)
    cards = page.page.locator("#results .result")
    assert cards.count() == 16
    top = cards.first
    assert int(top.get_attribute("data-item-id") or 0) == item_id  # the item finds itself first
    assert "relevant" in (top.get_attribute("class") or "")
    for n in range(cards.count()):
        card = cards.nth(n)
        expected = "relevant" if card.get_attribute("data-category") == "shirt" else "wrong"
        assert expected in (card.get_attribute("class") or "").split()
    colour = page.page.evaluate("getComputedStyle(document.querySelector('#results .relevant')).borderTopColor")
    assert colour == "rgb(34, 160, 60)"  # the report grid's green
    assert "share the query's category (shirt)" in page.page.locator("#results-summary").inner_text()
    page.wait_js("Array.from(document.querySelectorAll('#results img')).every(i => i.complete)")
    page.shot("search-picked-item")
    # The job's page can be reopened: ?job=<id> shows the same results.
    url = page.page.url
    assert "?job=" in url
    page.page.goto(url)
    page.page.wait_for_selector("#results .result")
    assert page.page.locator("#results .result").count() == 16
    page.check_clean()


def test_jobs_progress_errors_and_cancel(page: Watched, live: Live) -> None:
    from shared.db import services
    from shared.db.session import session_scope

    # A job that waits in the queue (nothing will run it) to cancel from the page, and one
    # that failed, whose error must read as words.
    with session_scope(live.settings) as session:
        waiting, _ = services.create_job(session, "reindex", params={"catalogue_id": live.catalogue_id},
                                         catalogue_id=live.catalogue_id)
        failed, _ = services.create_job(session, "index", params={"catalogue_id": live.catalogue_id},
                                        catalogue_id=live.catalogue_id)
    with session_scope(live.settings) as session:
        services.transition_job(session, failed.id, "running")
        services.transition_job(session, failed.id, "failed", error_code="bad_image",
                                error_message="3 images could not be decoded")
    resp = requests.post(f"{live.base}/api/v1/catalogues/{live.catalogue_id}/reindex", json={"full": True}, timeout=30)
    running = resp.json()["job_id"]
    page.goto("/ui/jobs")
    row = page.page.locator(f"tr[data-job-id='{running}']")
    row.wait_for()
    # The bar follows the job live, to the end.
    page.page.wait_for_selector(f"tr[data-job-id='{running}'][data-status='succeeded']", timeout=120_000)
    bar = row.locator(".progress")
    assert bar.get_attribute("data-done") == bar.get_attribute("data-total") == "48"
    assert bar.get_attribute("aria-valuenow") == "100"
    failed_row = page.page.locator(f"tr[data-job-id='{failed.id}']")
    assert "bad_image" not in failed_row.locator(".job-error").inner_text()
    assert "the image could not be read: 3 images could not be decoded" in failed_row.locator(".job-error").inner_text()
    waiting_row = page.page.locator(f"tr[data-job-id='{waiting.id}']")
    assert waiting_row.locator(".progress .label").inner_text() == "waiting for a worker"
    page.shot("jobs")
    waiting_row.locator("button.cancel").click()
    page.page.wait_for_selector(f"tr[data-job-id='{waiting.id}'][data-status='cancelled']")
    assert requests.get(f"{live.base}/api/v1/jobs/{waiting.id}", timeout=10).json()["status"] == "cancelled"
    assert page.page.locator(f"tr[data-job-id='{waiting.id}'] button.cancel").count() == 0
    page.check_clean()


def test_catalogue_overview(page: Watched, live: Live) -> None:
    page.goto(f"/ui/catalogues/{live.catalogue_id}")
    page.page.wait_for_selector("#overview:not(.hidden)")
    by_category = page.page.locator("#by-category").inner_text()
    for category in ("dress", "shirt", "toptee"):
        assert category in by_category
    assert "48" in page.page.locator("#by-status").inner_text()
    assert live.trained.model_id in page.page.locator("#model").inner_text()
    index = page.page.locator("#index").inner_text()
    assert "next re-index" in index and "(nightly)" in index and "last re-index" in index
    page.shot("catalogue-overview")
    page.check_clean()


def test_evaluation_report_page(page: Watched, live: Live) -> None:
    page.goto("/ui/reports")
    table = page.page.locator("#study-table tbody tr")
    assert table.count() == 4 * 3  # 4 routing modes x k in (5, 10, 20)
    assert page.page.locator("#chart-pr svg path.series").count() == 4
    assert page.page.locator("#chart-category svg rect.bar").count() == 4 * 3
    assert page.page.locator("#chart-time svg path.series").count() == 4
    page.wait_js("document.querySelector('img.examples').complete")
    assert page.page.evaluate("document.querySelector('img.examples').naturalWidth") > 100
    page.shot("evaluation-report")
    page.check_clean()


def test_duplicate_review_decision_persists(page: Watched, live: Live) -> None:
    runs = requests.get(f"{live.base}/api/v1/catalogues/{live.dupes_id}/dedup-runs", timeout=10)
    if runs.status_code == 404 and "catalogue" not in runs.text:
        pytest.skip("this server has no de-duplication API")
    page.goto("/ui/duplicates")
    page.page.wait_for_selector(f"#catalogue option[value='{live.dupes_id}']", state="attached")
    page.page.select_option("#catalogue", str(live.dupes_id))
    # The test model is barely trained (every pair of its images is above the default 0.9):
    # a high threshold leaves the exact copies.
    page.page.fill("#threshold", "0.995")
    page.page.click("#run-dedup")
    page.page.wait_for_selector(".group", timeout=120_000)
    assert "Run " in page.page.locator("#run-summary").inner_text()
    exact = page.page.locator(".group", has=page.page.locator(".badge.exact"))
    assert exact.count() == 2  # the two copies, each with its original
    group = exact.first
    group_id = group.get_attribute("data-group-id")
    assert group.locator(".member").count() == 2
    assert "suggested keep" in group.locator(".member").first.inner_text()
    assert "same bytes" in group.locator(".member").nth(1).inner_text()
    keep = group.locator(".member").nth(1)
    keep_id = int(keep.get_attribute("data-item-id") or 0)
    keep.locator(".keep-this").click()
    decided = page.page.locator(f".group[data-group-id='{group_id}'][data-decision='keep_item']")
    decided.wait_for()
    assert "keep" in (decided.locator(f".member[data-item-id='{keep_id}']").get_attribute("class") or "").split()
    other = page.page.locator(".group", has=page.page.locator(".badge.exact")).nth(1)
    other_id = other.get_attribute("data-group-id")
    other.locator("button.not-duplicate").click()
    page.page.locator(f".group[data-group-id='{other_id}'][data-decision='not_duplicate']").wait_for()
    page.wait_js("Array.from(document.querySelectorAll('.group img')).every(i => i.complete)")
    page.shot("duplicates")

    # The decisions are stored: a reload shows them, and so does the API.
    page.page.reload()
    page.page.locator(f".group[data-group-id='{group_id}'][data-decision='keep_item']").wait_for()
    stored = requests.get(f"{live.base}/api/v1/dedup-groups/{group_id}", timeout=10).json()
    assert stored["decision"]["decision"] == "keep_item" and stored["decision"]["kept_item_id"] == keep_id

    # A second run: the kept group comes back with its decision and is not new; the group
    # marked not-a-duplicate is hidden unless asked for.
    page.page.fill("#threshold", "0.995")
    page.page.click("#run-dedup")
    page.wait_js("document.querySelector('#run').options.length >= 2", timeout=120)
    second_run = page.page.locator("#run option").first.get_attribute("value")
    page.page.locator(f"#groups[data-run='{second_run}'] .group").first.wait_for()
    again = page.page.locator(".group", has=page.page.locator(".badge.exact"))
    assert again.count() == 1
    assert again.first.get_attribute("data-decision") == "keep_item"
    assert again.first.locator(".badge.new").count() == 0
    page.page.check("#include-dismissed")
    page.page.locator(f"#groups[data-run='{second_run}'] .group[data-decision='not_duplicate']").wait_for()
    page.shot("duplicates-second-run")
    page.check_clean()


def test_api_docs_load_locally(page: Watched, live: Live) -> None:
    page.goto("/api/v1/docs")
    page.page.wait_for_selector(".opblock", timeout=30_000)
    assert page.page.locator(".opblock").count() >= 10
    page.shot("api-docs", full_page=False)
    page.check_clean()


def test_query_job_finishes_over_http_too(live: Live) -> None:
    """The UI's calls, without the browser: a sanity check that narrows a UI failure down."""
    photo = _query_photo(live, "toptee").read_bytes()
    resp = requests.post(f"{live.base}/api/v1/queries", data={"catalogue": str(live.catalogue_id), "k": "3"},
                         files={"file": ("q.jpg", photo, "image/jpeg")}, timeout=30)
    assert resp.status_code == 202
    job = poll_job(live.base, resp.json()["job_id"], logs=live.logs)
    assert job["status"] == "succeeded" and len(job["results"]) == 3
