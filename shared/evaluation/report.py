"""The evaluation report: a markdown table laid out like the study's, a JSON file, and a
PNG grid of example queries with their top results framed green (relevant) or red (not).

Adapter code: :func:`write_report` does the I/O; :func:`to_markdown` is a pure function of
the report. The grid is drawn with Pillow only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from shared.evaluation.evaluate import STUDY_FIGURES, EvalExample, EvalReport, EvalRow
from shared.imaging import load_image

log = logging.getLogger(__name__)

TABLE_HEADER = (
    "| routing | k | mAP | mean accuracy (P@k) | router accuracy "
    "| query time, matching (ms) | query time, with extraction (ms) |"
)

GREEN = (34, 160, 60)
RED = (205, 40, 40)
NEUTRAL = (130, 130, 130)
GREY_TILE = (200, 200, 200)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _router_cell(row: EvalRow) -> str:
    if row.mode == "label":
        return "given"
    if row.router_accuracy is None:
        return "-"
    cell = _f(row.router_accuracy)
    if row.mode == "svm-fallback" and row.router_coverage is not None:
        cell += f" (route holds true category: {_f(row.router_coverage)})"
    return cell


def study_line(study: dict[str, float] | None = None) -> str:
    s = dict(STUDY_FIGURES, **(study or {}))
    return (
        "Study's published figures, for comparison: CNN test accuracy "
        f"{s['cnn_test_accuracy']:g}; SVM {s['svm_valid_accuracy']:g} valid / "
        f"{s['svm_test_accuracy']:g} test; routed mAP {s['routed_map']:g}; mean query time "
        f"{s['mean_query_time_s_routed']:g} s routed vs {s['mean_query_time_s_unrouted']:g} s unrouted."
    )


def to_markdown(report: EvalReport, grid: str | None = None) -> str:
    """The report as markdown; ``grid`` is an optional path (relative to the markdown file)
    of the example grid image to link."""
    m = report.meta
    lines: list[str] = ["# FIR retrieval evaluation", ""]
    lines.append(f"- model: `{m.get('model_id', '?')}` ({m.get('backbone', '?')})")
    lines.append(f"- metric: {m.get('metric', '?')}; gallery: {m.get('n_gallery', '?')} items; "
                 f"queries: {m.get('n_queries', '?')}")
    gal = m.get("gallery_per_category") or {}
    qry = m.get("queries_per_category") or {}
    cats = m.get("categories") or list(gal)
    if cats:
        lines.append("- categories: " + ", ".join(
            f"{c} ({gal.get(c, '?')} gallery / {qry.get(c, 0)} queries)" for c in cats))
    if "threshold" in m:
        lines.append(f"- fallback threshold: {m['threshold']:g} (svm-fallback searches the top two "
                     "categories when the router's top probability is below it)")
    router = m.get("router")
    if router:
        cv = router.get("cv_accuracy")
        lines.append(f"- router: SVM {router.get('params') or {}}"
                     + (f", cross-validation accuracy {cv:.3f}" if cv is not None else ""))
    ext = m.get("extraction_ms")
    lines.append(f"- feature extraction: {_f(ext, 1)} ms per image" if ext is not None
                 else "- feature extraction: not measured (the 'with extraction' column is empty)")
    if m.get("weights_source"):
        lines.append(f"- weights: {m['weights_source']}")
    if m.get("model_metrics"):
        lines.append(f"- model metrics: {json.dumps(m['model_metrics'], default=str, sort_keys=True)}")
    if m.get("date"):
        lines.append(f"- date: {m['date']}")
    lines += ["", "## Results", "", TABLE_HEADER, "|---|---:|---:|---:|---|---:|---:|"]
    for r in report.rows:
        lines.append(
            f"| {r.mode} | {r.k} | {_f(r.mean_ap)} | {_f(r.mean_precision)} | {_router_cell(r)} "
            f"| {_f(r.ms_matching, 2)} | {_f(r.ms_with_extraction, 2)} |"
        )
    lines.append("")
    sample = m.get("latency_sample")
    timing = "Query time, matching: routing + exact search of one query at a time"
    timing += f", mean over {sample} sampled queries. " if sample else ". "
    timing += "With extraction adds the router's time in svm modes"
    router_ms, router_single = m.get("ms_router_batched"), m.get("ms_router_single")
    if router_ms is not None:
        timing += f" ({_f(router_ms, 2)} ms per query batched"
        timing += f", {_f(router_single, 2)} ms one at a time)" if router_single is not None else ")"
    timing += " and feature extraction per image."
    lines.append(timing)
    batched: dict[str, float] = {}
    for r in report.rows:
        batched.setdefault(r.mode, r.ms_matching_batched)
    if batched:
        lines.append("Matching in batches, per query: "
                     + "; ".join(f"{mode} {_f(v, 3)} ms" for mode, v in batched.items()) + ".")
    lines += ["", study_line(m.get("study")), ""]
    if report.per_category:
        k = m.get("per_category_k", 10)
        modes = list(report.per_category)
        all_cats = list(dict.fromkeys(c for v in report.per_category.values() for c in v))
        lines += [f"## Precision@{k} per category", "",
                  "| category | " + " | ".join(modes) + " |",
                  "|---|" + "---:|" * len(modes)]
        for c in all_cats:
            lines.append(f"| {c} | " + " | ".join(_f(report.per_category[md].get(c)) for md in modes) + " |")
        lines.append("")
    if report.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    if grid:
        mode = m.get("examples_mode")
        lines += ["## Examples", "",
                  f"Top results{f' (routing {mode})' if mode else ''}: green frame = same category "
                  "as the query, red = not.", "", f"![example queries]({grid})", ""]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_report(report: EvalReport, out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and ``examples.png`` into ``out_dir``; returns
    their paths under the keys ``markdown``, ``json`` and ``grid``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = render_grid(report.examples, out / "examples.png")
    md = out / "report.md"
    md.write_text(to_markdown(report, grid=grid.name), encoding="utf-8")
    js = out / "report.json"
    js.write_text(json.dumps(_json_safe(report.to_dict()), indent=2, default=str) + "\n", encoding="utf-8")
    log.info("evaluation report written to %s", out)
    return {"markdown": md, "json": js, "grid": grid}


def _tile(path: str, thumb: int) -> Image.Image:
    """The image at ``path`` fitted into a ``thumb`` square on white; a grey tile when it
    cannot be read."""
    try:
        img = load_image(path, draft_size=(thumb, thumb))
    except Exception as exc:  # a missing or broken image must not break the report
        log.debug("grid: cannot load %s: %s", path, exc)
        return Image.new("RGB", (thumb, thumb), GREY_TILE)
    return ImageOps.pad(img, (thumb, thumb), color=BACKGROUND)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def render_grid(examples: Sequence[EvalExample], out_png: Path, thumb: int = 112) -> Path:
    """One row per example: the query (grey frame), then its results framed green
    (relevant) or red (not relevant), each captioned with category and score."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default()
    frame, pad, gap, line_h = 4, 6, 14, 13
    cell_w = thumb + 2 * frame
    cell_h = thumb + 2 * frame + 2 * line_h + 4
    title_h = 2 * line_h + 6
    n_cols = 1 + max((len(e.results) for e in examples), default=0)
    width = max(pad * 2 + n_cols * cell_w + (n_cols - 1) * pad + gap, 320)
    height = title_h + pad + max(len(examples), 1) * (cell_h + pad)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 4), "query | top results: green = same category, red = other category",
              fill=TEXT, font=font)
    if not examples:
        draw.text((pad, title_h + pad), "no example queries", fill=TEXT, font=font)

    def cell(x: int, y: int, path: str, colour: tuple[int, int, int], caption: Sequence[str]) -> None:
        draw.rectangle((x, y, x + cell_w - 1, y + thumb + 2 * frame - 1), fill=colour)
        canvas.paste(_tile(path, thumb), (x + frame, y + frame))
        for n, text in enumerate(caption[:2]):
            draw.text((x + 1, y + thumb + 2 * frame + 2 + n * line_h), _fit_text(draw, text, font, cell_w - 2),
                      fill=TEXT, font=font)

    for r, ex in enumerate(examples):
        y = title_h + pad + r * (cell_h + pad)
        route = "all" if ex.route is None else "+".join(ex.route)
        cell(pad, y, ex.path, NEUTRAL, [f"query: {ex.category}", f"route: {route}"])
        for c, res in enumerate(ex.results, start=1):
            x = pad + c * (cell_w + pad) + gap
            cell(x, y, res.path, GREEN if res.relevant else RED,
                 [f"{res.rank}. {res.category}", f"{res.score:.3f}"])
    canvas.save(out_png, format="PNG")
    return out_png
