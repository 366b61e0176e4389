"""API keys: ``Authorization: Bearer <token>`` or ``X-API-Key: <token>``.

When keys are required (``Settings.keys_required()``), every request but the health checks
and the API's own docs needs a key: none or an unknown one is 401 ``unauthorized``; a key
without the scope the route needs on the catalogue it touches is 403 ``forbidden``.
GET/HEAD read (scope ``read``); other methods change (``write``); queries and duplicate
checks only read. Creating catalogues, listing every job, and anything not mapped here
(UI pages, metrics) need a global admin key.
"""

from __future__ import annotations

from typing import Any

from flask import g, request
from sqlalchemy.orm import Session

from shared.db.apikeys import KeyGrant, lookup

OPEN_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "openapi.spec", "openapi.docs",
                            "openapi.swagger_ui_static", "openapi.swagger_ui_oauth_redirect", "static"})
READ_ONLY_POSTS = frozenset({"queries.create_query", "dedup.check_duplicate"})
ANY_KEY_ENDPOINTS = frozenset({"catalogues.list_catalogues"})  # filtered to the key's catalogues


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("X-API-Key", "").strip() or None


def current_grant() -> KeyGrant | None:
    """The request's key (None when keys are not required and none was given)."""
    return g.get("fir_grant")


def can_read(catalogue_id: int) -> bool:
    """Whether this request may see the catalogue (always, when keys are not required)."""
    if not g.get("fir_keys_required", False):
        return True
    grant = current_grant()
    return grant is not None and grant.allows(catalogue_id, "read")


def init_app(app: Any) -> None:
    from api.errors import error_body

    @app.errorhandler(AuthError)
    def _auth_error(exc: AuthError) -> Any:
        body, status = error_body(exc.code, exc.message, exc.status)
        headers = {"WWW-Authenticate": 'Bearer realm="fir"'} if status == 401 else {}
        return body, status, headers

    @app.before_request
    def _check_key() -> None:
        settings = app.extensions["fir_settings"]
        required = settings.keys_required()
        g.fir_keys_required = required
        endpoint = request.endpoint or ""
        if not required or endpoint in OPEN_ENDPOINTS or request.method == "OPTIONS":
            return
        if request.endpoint is None:  # no such route: the 404 says nothing about catalogues
            return
        from api.routes.common import db

        token = presented_token()
        if token is None:
            raise AuthError(401, "unauthorized", "an API key is required: send 'Authorization: Bearer "
                                                 "<token>' or 'X-API-Key: <token>'")
        with db() as session:
            grant = lookup(session, token)
            if grant is None:
                raise AuthError(401, "unauthorized", "the API key is unknown or revoked")
            g.fir_grant = grant
            if endpoint in ANY_KEY_ENDPOINTS:
                return
            scope = "read" if request.method in ("GET", "HEAD") or endpoint in READ_ONLY_POSTS else "write"
            catalogue_id, known = _catalogue_of(session, endpoint)
        if not known:
            if not grant.is_global_admin:
                raise AuthError(403, "forbidden", "this operation needs a global admin key")
            return
        if not grant.allows(catalogue_id, scope):
            raise AuthError(403, "forbidden",
                            f"the API key has no {scope!r} scope on this catalogue")


def _catalogue_of(session: Session, endpoint: str) -> tuple[int | None, bool]:
    """(catalogue id, whether the route maps to one). A missing row maps to None, which no
    catalogue-scoped key allows (so a 403 does not reveal whether the row exists)."""
    from shared.db.models import DedupGroup, DedupRun, Item, Job

    args = request.view_args or {}
    if "catalogue_id" in args:
        return int(args["catalogue_id"]), True
    if "item_id" in args:
        item = session.get(Item, int(args["item_id"]))
        return (item.catalogue_id if item else None), True
    if "job_id" in args:
        job = session.get(Job, int(args["job_id"]))
        return (job.catalogue_id if job else None), True
    if "run_id" in args:
        run = session.get(DedupRun, int(args["run_id"]))
        return (run.catalogue_id if run else None), True
    if "group_id" in args:
        group = session.get(DedupGroup, int(args["group_id"]))
        run = session.get(DedupRun, group.run_id) if group else None
        return (run.catalogue_id if run else None), True
    if endpoint == "queries.create_query":
        return _catalogue_by_ref(session, _query_catalogue_ref()), True
    if endpoint == "jobs.list_jobs":
        ref = request.args.get("catalogue_id")
        return (int(ref) if ref and ref.isdigit() else None), ref is not None
    return None, False


def _query_catalogue_ref() -> str | None:
    if request.is_json:
        body = request.get_json(silent=True)
        ref = body.get("catalogue") if isinstance(body, dict) else None
    else:
        ref = request.form.get("catalogue")
    return None if ref is None else str(ref)


def _catalogue_by_ref(session: Session, ref: str | None) -> int | None:
    from api.routes.common import resolve_catalogue
    from shared.errors import NotFound

    if ref is None:
        return None
    try:
        return int(resolve_catalogue(session, ref).id)
    except NotFound:
        return None
