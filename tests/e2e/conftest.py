"""End-to-end fixtures: FIR running as real processes (gunicorn with 2 API workers, a Celery
worker; SQLite and the filesystem broker, as the embedded default `fir up` runs them) and a
headless Chromium driven by Playwright.

Chromium is Debian's (``/usr/bin/chromium``, or ``FIR_CHROMIUM``); Playwright never downloads
a browser here. Without Chromium (or the playwright package) the browser tests are skipped
with the reason, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.config import Settings
from tests.integration.test_service import _env, _free_port, _start, _stop, prepare, wait_for

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = Path(os.environ.get("FIR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"


@dataclass
class Live:
    base: str
    settings: Settings
    catalogue_id: int
    catalogue_dir: Path
    logs: list[Path]
    worker_metrics_port: int
    trained: Any
    dupes_id: int  # a second catalogue with exact copies in it (duplicate review)


def write_report(settings: Settings, trained: Any) -> Path:
    """An evaluation report (``report.json``, ``report.md``, ``examples.png``) of the shared
    model, as `fir evaluate` writes it under ``$FIR_HOME/reports``."""
    from shared.evaluation.evaluate import evaluate_retrieval
    from shared.evaluation.report import write_report as write
    from shared.vision.features import FeatureSet
    from shared.vision.router import Router

    feats = FeatureSet.load(trained.features_path)
    report = evaluate_retrieval(feats.by_split("train"), feats.by_split("val"), Router.load(trained.router_path),
                                ks=(5, 10, 20), extraction_ms=4.2, n_examples=3)
    out = settings.resolved_home() / "reports" / "20250101-000000"
    write(report, out)
    return out


def add_dupes_catalogue(settings: Settings, trained: Any, folder: Path) -> int:
    """A small catalogue holding two exact copies (same bytes, new keys) of its own images."""
    from shared.db import services
    from shared.db.session import session_scope
    from shared.indexing import index_catalogue
    from shared.vision.embed import Embedder
    from shared.vision.modelfile import load_model
    from shared.vision.router import Router

    for category in ("dress", "shirt", "toptee"):
        (folder / category).mkdir(parents=True)
        for n, src in enumerate(sorted((trained.catalogue / "test" / category).glob("*.jpg"))[:2]):
            shutil.copy(src, folder / category / f"{category}-{n}.jpg")
    shutil.copy(folder / "dress" / "dress-0.jpg", folder / "dress" / "dress-0-again.jpg")
    shutil.copy(folder / "shirt" / "shirt-1.jpg", folder / "shirt" / "shirt-1-again.jpg")
    with session_scope(settings) as session:
        active = services.get_active_model_version(session)
        assert active is not None
        cat = services.create_catalogue(session, "dupes", source_kind="folder", source_path=str(folder),
                                        root=str(folder))
    model = load_model(trained.model_path)
    embedder = Embedder(model.net, "resnet50", model.meta.image_size, device="cpu")
    index_catalogue(settings, cat.id, active.id, embedder, Router.load(trained.router_path))
    return cat.id


@pytest.fixture(scope="session")
def live(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("e2e-home")
    catalogue_dir = home / "catalogue"
    shutil.copytree(trained.catalogue / "train", catalogue_dir)
    settings = Settings(home=home, loader_workers=0)
    catalogue_id = prepare(settings, trained, catalogue_dir)
    dupes_id = add_dupes_catalogue(settings, trained, home / "dupes")
    write_report(settings, trained)
    env = _env(settings)
    env = {k: v for k, v in env.items() if k != "FIR_BROKER_URL"}  # the filesystem broker under FIR_HOME
    metrics_port = _free_port()
    env.update(FIR_LOG_FORMAT="json", FIR_WORKER_METRICS_PORT=str(metrics_port))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from shared.service import api_metrics_env, process_commands

    port = _free_port()
    logs = [home / "worker.log", home / "api.log"]
    commands = process_commands(Settings(home=home, api_port=port))  # what `fir up` runs
    worker = _start(commands["worker"], env, logs[0])
    api = _start(commands["api"], api_metrics_env(settings, env), logs[1])
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200, 180, "readiness", logs)
        yield Live(base, settings, catalogue_id, catalogue_dir, logs, metrics_port, trained, dupes_id)
    finally:
        _stop(api)
        _stop(worker)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for log in logs:  # kept with the screenshots, for whoever reads a failure
            if log.exists():
                shutil.copy(log, ARTIFACTS / log.name)


# -- the browser --------------------------------------------------------------------------------
def _unavailable(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"{reason}; the browser tests are required on CI")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set FIR_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"the playwright package is not installed: {exc}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    """A page and what it did: requests to other hosts, JavaScript errors, console errors."""

    page: Any
    base: str
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base + path, wait_until="load")

    def shot(self, name: str, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def wait_js(self, expression: str, timeout: float = 30) -> Any:
        """Poll a JavaScript expression until it is truthy (page.wait_for_function evaluates
        strings with eval, which the UI's Content-Security-Policy forbids)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.page.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            time.sleep(0.1)

    def check_clean(self) -> None:
        assert not self.foreign, f"the page loaded from other hosts: {self.foreign}"
        assert not self.errors, f"the page had errors: {self.errors}"


@pytest.fixture()
def page(browser: Any, live: Live) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    watched = Watched(pg, live.base)

    def on_request(req: Any) -> None:
        url = req.url
        if not (url.startswith(live.base) or url.startswith(("data:", "blob:", "about:"))):
            watched.foreign.append(url)

    pg.on("request", on_request)
    pg.on("pageerror", lambda exc: watched.errors.append(f"pageerror: {exc}"))
    pg.on("console", lambda msg: watched.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    try:
        yield watched
    finally:
        context.close()


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
