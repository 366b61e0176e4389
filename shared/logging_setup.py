"""Logging, configured once per process: JSON lines (or plain text) on stderr, every record
carrying the ids of the work it belongs to.

- :func:`configure_logging` installs one handler on the root logger; calling it again only
  changes the level (a process that is configured stays configured).
- :func:`bind` sets ``job_id``, ``task_id`` and ``request_id`` for the current context (a
  Celery task, an HTTP request); :class:`ContextFilter` copies them onto every record, where
  the JSON formatter writes them. ``logger.info("...", extra={"job_id": 3})`` works too.

Celery's ``task_prerun``/``task_postrun`` signals (``worker.observability``) and the API's
``before_request`` hook (``api.observability``) bind the ids.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, TextIO

CONTEXT_FIELDS = ("job_id", "task_id", "request_id")

_job_id: ContextVar[int | None] = ContextVar("fir_job_id", default=None)
_task_id: ContextVar[str | None] = ContextVar("fir_task_id", default=None)
_request_id: ContextVar[str | None] = ContextVar("fir_request_id", default=None)
_VARS: dict[str, ContextVar[Any]] = {"job_id": _job_id, "task_id": _task_id, "request_id": _request_id}

_HANDLER_NAME = "fir-root"

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is kept.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                         "taskName", *CONTEXT_FIELDS}


def current() -> dict[str, Any]:
    """The ids bound in this context (``None`` where unset)."""
    return {name: var.get() for name, var in _VARS.items()}


def bind(**ids: Any) -> dict[str, Token[Any]]:
    """Bind ``job_id``, ``task_id`` and/or ``request_id``; returns tokens for :func:`unbind`."""
    tokens: dict[str, Token[Any]] = {}
    for name, value in ids.items():
        if name not in _VARS:
            raise ValueError(f"unknown log context field {name!r} (expected one of {CONTEXT_FIELDS})")
        tokens[name] = _VARS[name].set(value)
    return tokens


def unbind(tokens: dict[str, Token[Any]]) -> None:
    for name, token in tokens.items():
        try:
            _VARS[name].reset(token)
        except ValueError:  # a token from another context: clear instead
            _VARS[name].set(None)


def clear() -> None:
    for var in _VARS.values():
        var.set(None)


@contextmanager
def bound(**ids: Any) -> Iterator[None]:
    tokens = bind(**ids)
    try:
        yield
    finally:
        unbind(tokens)


class ContextFilter(logging.Filter):
    """Puts the bound ids on every record (an explicit ``extra=`` value wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _VARS.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, ``process``, the
    context ids that are set, any ``extra=`` fields, and ``exc_info`` as text."""

    def __init__(self, process_name: str = "") -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if self.process_name:
            out["process"] = self.process_name
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger [job=.. task=.. req=..]: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(fir_ids)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"{short}={getattr(record, name)}" for name, short in
               (("job_id", "job"), ("task_id", "task"), ("request_id", "req"))
               if getattr(record, name, None) is not None]
        record.fir_ids = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)


def configure_logging(fmt: str = "json", level: str | int = "INFO", process_name: str = "",
                      stream: TextIO | None = None) -> logging.Handler:
    """Install FIR's handler on the root logger, once per process; returns it.

    A second call keeps the handler (and its format) and only applies ``level``."""
    root = logging.getLogger()
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(lvl, int):
        lvl = logging.INFO
    root.setLevel(lvl)
    for handler in root.handlers:
        if handler.get_name() == _HANDLER_NAME:
            return handler
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter(process_name) if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    # Other handlers (basicConfig's, a library's) would print every record a second time.
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    logging.captureWarnings(True)
    return handler


def is_configured() -> bool:
    return any(h.get_name() == _HANDLER_NAME for h in logging.getLogger().handlers)
