"""Request guards that run before any route: a JSON body has its own, small cap (the
upload cap, ``MAX_CONTENT_LENGTH``, is sized for images, not for JSON documents), and a body
nested too deeply for the parser is a 400, not a RecursionError."""

from __future__ import annotations

from typing import Any

from flask import request

MAX_JSON_BYTES = 2 * 1024 * 1024


def init_app(app: Any) -> None:
    from api.errors import error_body

    @app.before_request
    def _json_cap() -> Any:
        if request.mimetype and request.mimetype.endswith("json"):
            length = request.content_length
            if length is not None and length > MAX_JSON_BYTES:
                return error_body("payload_too_large", f"a JSON body may be at most {MAX_JSON_BYTES} bytes", 413)
            if length is None and request.headers.get("Transfer-Encoding", "").lower() == "chunked":
                request.max_content_length = MAX_JSON_BYTES
            try:
                request.get_json(silent=True)  # parsed once here (cached), so the routes never recurse
            except RecursionError:
                return error_body("bad_request", "the JSON body is nested too deeply", 400)
        return None
