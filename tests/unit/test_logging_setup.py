"""Structured logs: one JSON object per line, with the job, task and request ids bound to the
context; the handler is installed once per process."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared import logging_setup


@pytest.fixture()
def root_handlers() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: put them back afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    for h in list(root.handlers):
        root.removeHandler(h)
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)
        logging_setup.clear()


def test_json_lines_carry_the_bound_ids(root_handlers: None) -> None:
    stream = io.StringIO()
    logging_setup.configure_logging("json", "INFO", process_name="worker", stream=stream)
    log = logging.getLogger("fir.test")
    with logging_setup.bound(job_id=7, task_id="t-1"):
        log.info("embedding %d images", 3, extra={"images": 3})
    log.info("outside")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "embedding 3 images" and first["level"] == "info" and first["logger"] == "fir.test"
    assert first["job_id"] == 7 and first["task_id"] == "t-1" and first["images"] == 3
    assert first["process"] == "worker" and isinstance(first["pid"], int) and first["ts"].endswith("+00:00")
    assert "job_id" not in second and "task_id" not in second  # unbound after the block
    assert third["level"] == "error" and "ValueError: boom" in third["exc_info"]


def test_configured_once_per_process(root_handlers: None) -> None:
    first = logging_setup.configure_logging("json", "INFO", stream=io.StringIO())
    again = logging_setup.configure_logging("text", "DEBUG")
    assert again is first and logging.getLogger().handlers == [first]
    assert logging.getLogger().level == logging.DEBUG and logging_setup.is_configured()


def test_text_format_shows_the_ids(root_handlers: None) -> None:
    stream = io.StringIO()
    logging_setup.configure_logging("text", "INFO", stream=stream)
    with logging_setup.bound(request_id="abc"):
        logging.getLogger("fir.test").warning("slow")
    assert "WARNING fir.test [req=abc]: slow" in stream.getvalue()


def test_explicit_extra_wins_and_unknown_fields_are_refused(root_handlers: None) -> None:
    stream = io.StringIO()
    logging_setup.configure_logging("json", "INFO", stream=stream)
    with logging_setup.bound(job_id=1):
        logging.getLogger("fir.test").info("batch", extra={"job_id": 2})
    assert json.loads(stream.getvalue())["job_id"] == 2
    with pytest.raises(ValueError, match="unknown log context field"):
        logging_setup.bind(user="x")
