"""The web UI: plain HTML pages, CSS and vanilla JS served by the API itself (``api/templates``,
``api/static``); nothing is loaded from another host (a Content-Security-Policy says so to
the browser). The pages call the public API under ``/api/v1`` like any other client; only the
evaluation report is rendered here, from the ``report.json`` files that ``fir evaluate``
writes under ``$FIR_HOME/reports``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, redirect, render_template, send_file, url_for
from markupsafe import Markup

from api.app import fir_settings

bp = Blueprint("ui", __name__)

# APIFlask's Swagger UI page, with its assets served from api/static (see its README.md).
_SWAGGER = "/static/vendor/swagger-ui"
DOCS_CONFIG: dict[str, Any] = {
    "SWAGGER_UI_CSS": f"{_SWAGGER}/swagger-ui.css",
    "SWAGGER_UI_BUNDLE_JS": f"{_SWAGGER}/swagger-ui-bundle.js",
    "SWAGGER_UI_STANDALONE_PRESET_JS": f"{_SWAGGER}/swagger-ui-standalone-preset.js",
    "DOCS_FAVICON": f"{_SWAGGER}/favicon-32x32.png",
    "SWAGGER_UI_CONFIG": {"validatorUrl": None},  # no badge fetched from the online validator
    "REDOC_USE_GOOGLE_FONT": False,
}

CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
REPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
PAGES = (("search", "Search"), ("duplicates", "Duplicates"), ("jobs", "Jobs"), ("catalogues", "Catalogues"),
         ("reports", "Evaluation"))


@bp.after_request
def _headers(response: Response) -> Response:
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
    return response


def _page(template: str, active: str, **context: Any) -> str:
    return render_template(template, active=active, pages=PAGES, **context)


@bp.get("/")
def index() -> Any:
    return redirect(url_for("ui.search"))


@bp.get("/ui/")
@bp.get("/ui/search")
def search() -> str:
    """Search by photo: drop or choose a photo, or pick a catalogue item."""
    return _page("search.html", "search")


@bp.get("/ui/duplicates")
def duplicates() -> str:
    """Duplicate review, group by group."""
    return _page("duplicates.html", "duplicates")


@bp.get("/ui/jobs")
def jobs() -> str:
    return _page("jobs.html", "jobs")


@bp.get("/ui/catalogues")
@bp.get("/ui/catalogues/<int:catalogue_id>")
def catalogues(catalogue_id: int | None = None) -> str:
    return _page("catalogues.html", "catalogues", catalogue_id=catalogue_id)


# -- evaluation reports ------------------------------------------------------------------------
def reports_root() -> Path:
    return fir_settings().resolved_home() / "reports"


def list_reports() -> list[dict[str, Any]]:
    """Reports with a ``report.json``, newest first."""
    root = reports_root()
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        js = folder / "report.json"
        if REPORT_NAME.match(folder.name) and folder.is_dir() and js.is_file():
            found.append({"name": folder.name, "mtime": js.stat().st_mtime})
    return sorted(found, key=lambda r: (r["mtime"], r["name"]), reverse=True)


def _report_dir(name: str) -> Path:
    if not REPORT_NAME.match(name):
        abort(404)
    root = reports_root().resolve()
    folder = (root / name).resolve()
    if folder.parent != root or not (folder / "report.json").is_file():
        abort(404)
    return folder


@bp.get("/ui/reports")
@bp.get("/ui/reports/<name>")
def reports(name: str | None = None) -> Any:
    """The study's table and plots of one evaluation report (by default the newest)."""
    from shared.evaluation.charts import report_charts
    from shared.evaluation.report import study_line

    available = list_reports()
    if name is None:
        if not available:
            return _page("report.html", "reports", reports=[], report=None, name=None)
        name = available[0]["name"]
    folder = _report_dir(name)
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return _page("report.html", "reports", reports=available, report=None, name=name,
                     error=f"report.json could not be read: {exc}"), 500
    charts = {key: Markup(svg) for key, svg in report_charts(report).items()}  # noqa: S704 - built escaped
    modes = list(dict.fromkeys(r.get("mode") for r in report.get("rows") or []))
    per_category = report.get("per_category") or {}
    categories = list(dict.fromkeys(c for v in per_category.values() for c in v))
    return _page("report.html", "reports", reports=available, report=report, name=name, charts=charts,
                 modes=modes, categories=categories, study=study_line((report.get("meta") or {}).get("study")),
                 has_grid=(folder / "examples.png").is_file())


@bp.get("/ui/reports/<name>/examples.png")
def report_grid(name: str) -> Any:
    path = _report_dir(name) / "examples.png"
    if not path.is_file():
        abort(404)
    return send_file(path, mimetype="image/png", max_age=60)
