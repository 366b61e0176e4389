"""The service with real processes: a Celery worker process on real Redis, PostgreSQL, and
the API under gunicorn, used over HTTP; then the embedded default (`fir up`) the same way."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from shared.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A Redis database of this run's own (by pid), so that another test run on the same machine
# (its workers consume whatever lands in their database) never takes this run's messages.
REDIS_URL = os.environ.get("FIR_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{1 + os.getpid() % 15}")
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def compose_commands(port: int) -> dict[str, list[str]]:
    """The compose file's commands for the FIR services, runnable on this host."""
    import yaml

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    out = {}
    for name in ("worker-gpu", "worker-cpu", "beat", "api"):
        cmd = [str(x) for x in services[name]["command"]]
        cmd[0] = str(BIN / cmd[0])
        out[name] = [c.replace("0.0.0.0:8000", f"127.0.0.1:{port}") for c in cmd]
    return out


def _redis_or_skip() -> None:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        reason = f"Redis unreachable at {REDIS_URL}: {exc}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FIR_HOME=str(settings.resolved_home()), FIR_DATABASE_URL=settings.resolved_database_url(),
               FIR_LOADER_WORKERS="0", FIR_WORKER_HEARTBEAT_S="2")
    if settings.broker_url:
        env["FIR_BROKER_URL"] = settings.broker_url
    return env


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, logs: list[Path] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.3)
    tails = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs or [] if p.exists())
    raise AssertionError(f"timed out waiting for {what} (last: {last}){tails}")


def poll_job(base: str, job_id: int, timeout: float = 300, logs: list[Path] | None = None) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = requests.get(f"{base}/api/v1/jobs/{job_id}", timeout=10).json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout, f"job {job_id}", logs)  # type: ignore[no-any-return]


@dataclass
class Service:
    base: str
    settings: Settings
    catalogue_id: int
    catalogue_dir: Path
    logs: list[Path]


def prepare(settings: Settings, trained: Any, catalogue_dir: Path) -> int:
    """Migrate, register and activate the shared trained model, index the catalogue."""
    from shared.db import services
    from shared.db.migrate import upgrade
    from shared.db.session import session_scope
    from shared.indexing import index_catalogue
    from shared.vision.embed import Embedder
    from shared.vision.modelfile import file_sha256, load_model
    from shared.vision.router import Router

    upgrade(settings.resolved_database_url())
    model = load_model(trained.model_path)
    sha = file_sha256(trained.model_path)
    with session_scope(settings) as session:
        mv = services.register_model_version(
            session, backbone="resnet50", weights_source="none", labels=model.meta.labels, model_id=sha[:16],
            checkpoint_path=str(trained.model_path), checkpoint_sha256=sha,
            router_path=str(trained.router_path), router_sha256=file_sha256(trained.router_path))
        services.activate_model_version(session, mv.id)
        cat = services.create_catalogue(session, "shop", source_kind="folder", source_path=str(catalogue_dir),
                                        root=str(catalogue_dir))
    embedder = Embedder(model.net, "resnet50", model.meta.image_size, device="cpu")
    index_catalogue(settings, cat.id, mv.id, embedder, Router.load(trained.router_path))
    return cat.id


@pytest.fixture(scope="module")
def service(postgres_database_factory: Callable[[], str], trained: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    _redis_or_skip()
    home = tmp_path_factory.mktemp("svc-home")
    catalogue_dir = home / "catalogue"
    shutil.copytree(trained.catalogue / "train", catalogue_dir)
    settings = Settings(home=home, database_url=postgres_database_factory(), broker_url=REDIS_URL,
                        loader_workers=0)
    catalogue_id = prepare(settings, trained, catalogue_dir)
    env = _env(settings)
    port = _free_port()
    # The same processes docker-compose.yml runs, from its own commands, against the local
    # Redis and PostgreSQL: the gpu worker, the cpu worker, beat and the API.
    commands = compose_commands(port)
    logs = [home / f"{name}.log" for name in commands]
    procs = [_start(cmd, env, log) for cmd, log in zip(commands.values(), logs, strict=True)]
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        resp = requests.get(f"{base}/readyz", timeout=5)
        return resp.status_code == 200 and len(resp.json()["checks"]["workers"]) == 2

    try:
        wait_for(ready, 120, "readiness with both workers", logs)
        yield Service(base, settings, catalogue_id, catalogue_dir, logs)
    finally:
        for proc in procs:
            _stop(proc)


def _query(base: str, image: bytes, **fields: Any) -> requests.Response:
    data = {"catalogue": "shop", "k": "5", **{k: str(v) for k, v in fields.items() if k != "headers"}}
    return requests.post(f"{base}/api/v1/queries", data=data, files={"file": ("q.jpg", image, "image/jpeg")},
                         headers=fields.get("headers"), timeout=30)


def test_query_over_http_equals_the_engine(service: Service, trained: Any) -> None:
    from worker.holder import ModelHolder

    image_path = next((trained.catalogue / "test" / "toptee").glob("*.jpg"))
    resp = _query(service.base, image_path.read_bytes(), routing="svm")
    assert resp.status_code == 202 and resp.headers["Location"].endswith(str(resp.json()["job_id"]))
    job = poll_job(service.base, resp.json()["job_id"], logs=service.logs)
    assert job["status"] == "succeeded", job
    snap = ModelHolder(service.settings).snapshot(service.catalogue_id)
    direct = snap.engine.query_paths([image_path], k=5, routing="svm")[0]
    assert [r["item_id"] for r in job["results"]] == [int(snap.item_ids[m.index]) for m in direct.matches]
    np.testing.assert_allclose([r["score"] for r in job["results"]], [m.score for m in direct.matches], atol=1e-4)
    assert job["routing"]["categories"] == direct.route
    assert job["model_version"]["model_id"] == trained.model_id


def test_new_image_is_found_after_reindex_with_the_same_worker(service: Service) -> None:
    from PIL import Image

    from shared.data.synthetic import draw_garment

    img = draw_garment("dress", 64, seed=987_654)
    img.save(service.catalogue_dir / "dress" / "brand-new.jpg", quality=95)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    resp = requests.post(f"{service.base}/api/v1/catalogues/{service.catalogue_id}/reindex", json={}, timeout=30)
    assert resp.status_code == 202
    job = poll_job(service.base, resp.json()["job_id"], logs=service.logs)
    assert job["status"] == "succeeded", job
    assert job["result"]["new"] == 1 and job["result"]["embedded"] == 1
    job = poll_job(service.base, _query(service.base, buf.getvalue(), routing="none").json()["job_id"])
    assert job["results"][0]["key"] == "dress/brand-new.jpg" and job["results"][0]["score"] > 0.99
    assert isinstance(Image.open(io.BytesIO(requests.get(service.base + job["results"][0]["image_url"],
                                                         timeout=10).content)), Image.Image)


def test_idempotency_key_gives_the_same_job(service: Service, trained: Any) -> None:
    image = next((trained.catalogue / "test" / "dress").glob("*.jpg")).read_bytes()
    first = _query(service.base, image, headers={"Idempotency-Key": "retry-me"}).json()["job_id"]
    second = _query(service.base, image, headers={"Idempotency-Key": "retry-me"}).json()["job_id"]
    assert first == second
    assert poll_job(service.base, first)["status"] == "succeeded"


def test_cancel(service: Service) -> None:
    resp = requests.post(f"{service.base}/api/v1/catalogues/{service.catalogue_id}/reindex",
                         json={"full": True}, timeout=30)
    job_id = resp.json()["job_id"]
    cancelled = requests.delete(f"{service.base}/api/v1/jobs/{job_id}", timeout=30)
    if cancelled.status_code == 409:  # the worker finished it first: nothing left to cancel
        assert requests.get(f"{service.base}/api/v1/jobs/{job_id}", timeout=10).json()["status"] == "succeeded"
        return
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    time.sleep(3)
    assert requests.get(f"{service.base}/api/v1/jobs/{job_id}", timeout=10).json()["status"] == "cancelled"


def test_embedded_default_over_http(trained: Any, tmp_path: Path) -> None:
    """`fir up` as a subprocess: SQLite, the filesystem broker, worker + beat + API."""
    home = tmp_path / "home"
    shutil.copytree(trained.home, home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIR_")}
    env.update(FIR_HOME=str(home), FIR_LOADER_WORKERS="0", FIR_WORKER_HEARTBEAT_S="2")
    subprocess.run([str(BIN / "fir"), "models", "activate"], env=env, check=True, capture_output=True)
    port = _free_port()
    log = tmp_path / "up.log"
    proc = _start([str(BIN / "fir"), "up", "--catalogue", str(trained.catalogue), "--port", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200, 180, "fir up", [log])
        image = next((trained.catalogue / "test" / "shirt").glob("*.jpg")).read_bytes()
        resp = requests.post(f"{base}/api/v1/queries", data={"catalogue": trained.catalogue.name, "k": "3"},
                             files={"file": ("q.jpg", image, "image/jpeg")}, timeout=30)
        assert resp.status_code == 202, resp.text
        job = poll_job(base, resp.json()["job_id"], logs=[log, home / "logs" / "worker.log"])
        assert job["status"] == "succeeded" and len(job["results"]) == 3
        assert job["results"][0]["score"] > 0.99  # the test image itself is in the catalogue
    finally:
        _stop(proc, signal.SIGINT)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert "stopped" in log.read_text()


def test_compose_file_is_valid_and_complete() -> None:
    import yaml

    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {"redis", "postgres", "migrate", "api", "worker-gpu", "worker-cpu", "beat"}
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert any(v.startswith("pg-data:") for v in services["postgres"]["volumes"])
    gpu = services["worker-gpu"]
    assert gpu["command"][gpu["command"].index("-Q") + 1] == "gpu" and gpu["command"][gpu["command"].index("-c") + 1] == "1"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert [n for n, svc in services.items() if "beat" in svc.get("command", [])] == ["beat"]
    for name in ("redis", "postgres", "api"):
        assert "healthcheck" in services[name]
    for name in ("api", "worker-gpu", "worker-cpu", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    client = shutil.which("docker-compose")
    if client is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("docker-compose is needed on CI to validate the compose file")
        pytest.skip("docker-compose is not installed: the file's structure was checked, not the client's parse")
    result = subprocess.run([client, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
