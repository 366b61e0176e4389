"""The OpenAPI document's error responses: every error FIR answers is JSON
``{"error": {"code", "message", "detail"?}}`` (``api/errors.py``), whatever the route; the
document says so for every operation, with the status codes the error handlers can produce.
"""

from __future__ import annotations

from typing import Any

from apiflask import APIFlask
from werkzeug.routing import IntegerConverter

MAX_ID = 2**63 - 1  # a database id (BIGINT); a larger number in a path is a 404, never an overflow


class IdConverter(IntegerConverter):
    """``<int:...>`` in FIR's routes: 0 to :data:`MAX_ID`."""

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:  # noqa: A002 - werkzeug's name
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable, machine-readable (e.g. not_found)"},
                "message": {"type": "string", "description": "what went wrong, in words"},
                "detail": {"description": "per-field validation messages (422)"},
            },
        },
    },
}

# What api/errors.py maps domain and HTTP errors to, on any operation.
COMMON_ERRORS = {
    "400": "the input is not acceptable (`invalid_input`, `bad_request`, ...)",
    "404": "something named in the request does not exist (`not_found`)",
    "409": "the request conflicts with the current state (`conflict`)",
    "422": "the request does not validate, or an image does not decode (`validation_error`, `bad_image`)",
    "503": "the database is not reachable; retry after `Retry-After` seconds (`database_unavailable`)",
}
BODY_ERRORS = {
    "413": "the request body is larger than the upload cap (`payload_too_large`)",
}


def register(app: APIFlask) -> None:
    """Call before the blueprints are registered (their rules bind the ``int`` converter)."""
    app.url_map.converters["int"] = IdConverter
    app.config["HTTP_ERROR_SCHEMA"] = ERROR_SCHEMA
    app.config["VALIDATION_ERROR_SCHEMA"] = ERROR_SCHEMA

    @app.spec_processor
    def _document_errors(spec: dict[Any, Any] | str) -> dict[Any, Any] | str:
        if not isinstance(spec, dict):
            return spec
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        for path, operations in spec.get("paths", {}).items():
            if not path.startswith("/api/"):
                continue
            for method, op in operations.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                for param in op.get("parameters", []):
                    if param.get("in") == "path" and param.get("schema", {}).get("type") == "integer":
                        param["schema"].update({"minimum": 0, "maximum": MAX_ID})
                errors = dict(COMMON_ERRORS)
                if method in ("post", "put", "patch"):
                    errors.update(BODY_ERRORS)
                for status, description in errors.items():
                    op["responses"].setdefault(status, {"description": description, "content": content})
        return spec
