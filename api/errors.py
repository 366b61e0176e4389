"""Every error is JSON: ``{"error": {"code": "...", "message": "..."}}`` with a stable code."""

from __future__ import annotations

import logging
from typing import Any

from apiflask import APIFlask, HTTPError
from flask import jsonify
from sqlalchemy.exc import DataError, OperationalError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared.errors import FirError

log = logging.getLogger(__name__)


def error_body(code: str, message: str, status: int, detail: Any = None) -> tuple[Any, int]:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if detail:
        body["error"]["detail"] = detail
    return jsonify(body), status


class ApiError(HTTPError):
    """An HTTP error with FIR's stable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message, extra_data={"code": code})
        self.code = code


def register(app: APIFlask) -> None:
    @app.error_processor
    def _apiflask_error(error: HTTPError) -> tuple[Any, int, Any]:
        code = (error.extra_data or {}).get("code")
        if error.status_code == 422 and error.detail:
            code, message = "validation_error", "the request is not valid: " + _flatten(error.detail)
        else:
            message = error.message or "error"
            code = code or _code_for(error.status_code)
        body, status = error_body(code, message, error.status_code,
                                  error.detail if error.status_code == 422 else None)
        return body.get_json(), status, error.headers

    @app.errorhandler(FirError)
    def _domain(exc: FirError) -> tuple[Any, int]:
        return error_body(exc.code, exc.message, exc.http_status)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> tuple[Any, int]:
        return error_body("payload_too_large", "the request body is larger than the upload cap", 413)

    @app.errorhandler(OperationalError)
    def _db_down(exc: OperationalError) -> tuple[Any, int, dict[str, str]]:
        log.warning("database unavailable: %s", exc)
        body, status = error_body("database_unavailable", "the database is not reachable; retry shortly", 503)
        return body, status, {"Retry-After": "5"}

    @app.errorhandler(OverflowError)
    @app.errorhandler(DataError)
    def _out_of_range(exc: Exception) -> tuple[Any, int]:
        # A number the database cannot hold (SQLite: OverflowError; PostgreSQL: DataError).
        return error_body("invalid_input", "a number in the request is out of range", 400)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Any, int]:
        status = exc.code or 500
        return error_body(_code_for(status), exc.description or exc.name, status)


def _code_for(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
            405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
            415: "unsupported_media_type", 422: "validation_error", 503: "unavailable"}.get(status, "error")


def _flatten(detail: Any) -> str:
    parts: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            if node and all(isinstance(x, str) for x in node):
                parts.append(f"{path}: {' '.join(node)}")
            else:
                for i, value in enumerate(node):
                    walk(value, f"{path}[{i}]")
        else:
            parts.append(f"{path}: {node}")

    walk(detail, "")
    return "; ".join(parts)
