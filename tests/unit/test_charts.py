"""The evaluation page's plots: SVG built from report.json, escaped, with nice axes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from shared.evaluation.charts import (
    bar_chart,
    line_chart,
    linear_ticks,
    nice_step,
    per_category_chart,
    pr_curve_chart,
    query_time_chart,
    report_charts,
)
from shared.evaluation.metrics import precision_recall_at_cutoffs

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, so a browser renders it inline


def test_line_chart_draws_one_path_per_series_and_escapes_names() -> None:
    svg = line_chart({"svm": [(1, 0.5), (10, 0.7)], "<none>": [(1, 0.2), (10, 0.4)]},
                     title="t & t", x_label="k", y_label="p", x_log=True)
    root = _parse(svg)
    paths = root.findall(f".//{SVG}path")
    assert [p.get("data-series") for p in paths] == ["svm", "<none>"]
    assert "&lt;none&gt;" in svg and "t &amp; t" in svg
    ticks = [t.text for t in root.findall(f".//{SVG}text")]
    assert "1" in ticks and "10" in ticks  # the k values themselves label a log axis


def test_bars_and_empty_charts() -> None:
    root = _parse(bar_chart(["dress", "shirt"], {"svm": [0.9, None], "none": [0.4, 0.3]}, title="x", y_label="p"))
    assert len(root.findall(f".//{SVG}rect[@class='bar']")) == 3  # a missing value draws no bar
    assert "no data" in line_chart({}, title="x", x_label="", y_label="")
    assert "re-run" in pr_curve_chart({"rows": []})


def test_report_charts_from_a_report() -> None:
    report = {
        "meta": {"per_category_k": 10},
        "rows": [{"mode": "svm", "k": 100, "ms_matching": 0.2}, {"mode": "svm", "k": 10, "ms_matching": 0.1}],
        "per_category": {"svm": {"dress": 1.0, "shirt": 0.5}},
        "pr_curve": {"svm": [{"k": 1, "precision": 1.0, "recall": 0.1}, {"k": 5, "precision": 0.8, "recall": 0.4}]},
    }
    charts = report_charts(report)
    assert set(charts) == {"pr_curve", "per_category", "query_time"}
    for svg in charts.values():
        _parse(svg)
    assert "precision@10" in per_category_chart(report)
    assert 'data-series="svm"' in query_time_chart(report)


@pytest.mark.parametrize(("span", "step"), [(1.0, 0.2), (0.93, 0.2), (37, 10), (5.2, 2), (1000, 200)])
def test_nice_steps(span: float, step: float) -> None:
    assert nice_step(span) == pytest.approx(step)
    ticks = linear_ticks(0, span)
    assert ticks[0] == 0 and ticks[-1] <= span + 1e-9 and len(ticks) <= 6


def test_precision_recall_at_cutoffs() -> None:
    rel = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=bool)
    valid = np.array([[1, 1, 1, 1], [1, 0, 1, 1]], dtype=bool)  # the second row has a gap (padding)
    p, r = precision_recall_at_cutoffs(rel, valid, [2, 4], [1, 2, 3, 10])
    np.testing.assert_allclose(p[0], [1.0, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(r[0], [0.5, 0.5, 1.0, 1.0])
    # row 2: valid results are columns 0, 2, 3; the relevant one is the third valid result
    np.testing.assert_allclose(p[1], [0.0, 0.0, 1 / 3, 1 / 3])
    np.testing.assert_allclose(r[1], [0.0, 0.0, 0.25, 0.25])
    p0, r0 = precision_recall_at_cutoffs(rel, valid, [0, 0], [1])
    assert r0.sum() == 0 and p0[0, 0] == 1.0


def test_evaluation_report_has_a_precision_recall_curve(tmp_path: object) -> None:
    from pathlib import Path

    from shared.evaluation.evaluate import evaluate_retrieval
    from shared.vision.router import Router
    from tests.unit.test_evaluate import MODEL, make_set

    root = Path(str(tmp_path))
    gallery, queries = make_set(root, "gallery", 20, seed=0), make_set(root, "query", 5, seed=1)
    router = Router.fit(gallery.vectors, gallery.categories, model_id=MODEL, backbone="toy", cv=2)
    report = evaluate_retrieval(gallery, queries, router, ks=(5, 60), progress=True)
    for mode in ("label", "svm", "svm-fallback", "none"):
        curve = report.pr_curve[mode]
        ks = [p["k"] for p in curve]
        assert ks == sorted(set(ks)) and ks[0] == 1 and ks[-1] == 60
        recalls = [p["recall"] for p in curve]
        assert recalls == sorted(recalls) and all(0 <= p["precision"] <= 1 for p in curve)
    assert report.pr_curve["none"][-1]["recall"] == pytest.approx(1.0)  # the whole gallery was returned
    assert report.to_dict()["pr_curve"]["svm"] == report.pr_curve["svm"]
