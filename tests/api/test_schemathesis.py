"""Property-based checks of the whole API against its own OpenAPI document (schemathesis):
every documented operation, with generated valid and invalid input, must never answer 5xx and
must answer what the document says (status code, content type, body schema).

Bounded: ``FIR_SCHEMATHESIS_EXAMPLES`` examples per operation (default 10), derandomised, so
a run is repeatable and takes about a minute. It runs against its own copy of the test
database (it deletes items and cancels jobs) through the Flask test client; jobs are recorded,
not run.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.config import Settings

MAX_EXAMPLES = int(os.environ.get("FIR_SCHEMATHESIS_EXAMPLES", "10"))


@pytest.fixture(scope="session")
def isolated_app(indexed_home: tuple[Settings, int, int], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from api import create_app

    settings, _, _ = indexed_home
    home = tmp_path_factory.mktemp("schemathesis-home")
    source = Path(settings.resolved_database_url().removeprefix("sqlite:///"))
    copy = home / "fir.db"
    with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)  # consistent even with WAL pages not yet checkpointed
    # jobs never run here: a generated `wait` would hold each request for up to the cap
    own = Settings(home=home, database_url=f"sqlite:///{copy}", broker_url="filesystem://", loader_workers=0,
                   api_max_wait_s=0.2)
    app = create_app(own, enqueue=lambda task, job_id, task_id=None: task_id or f"recorded-{job_id}")
    app.config["TESTING"] = True
    return app


def _check(operation: Any, checks: list[Any]) -> None:
    from hypothesis import given

    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    def check(case: Any) -> None:
        case.call_and_validate(checks=checks)

    check()


def test_api_conforms_to_its_openapi_document(isolated_app: Any) -> None:
    """Every operation in turn (schemathesis's pytest plugin does not run on this pytest, so
    the operations are walked here): failures are collected, then reported together."""
    api_schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", isolated_app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        # /readyz answers 503 by contract while no worker is seen (none runs here).
        op_checks = [c for c in checks if c is not not_a_server_error] if operation.path == "/readyz" else checks
        try:
            _check(operation, op_checks)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - schemathesis raises a BaseExceptionGroup; reported below
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations >= 12, "the document lists every operation"
    assert not failures, "\n\n".join(failures)
