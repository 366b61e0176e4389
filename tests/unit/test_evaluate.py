"""evaluate_retrieval and the report on synthetic clustered features with a real router."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.errors import InvalidInput, ModelMismatch, UnknownCategory
from shared.evaluation.evaluate import EvalReport, evaluate_retrieval
from shared.evaluation.report import TABLE_HEADER, render_grid, to_markdown, write_report
from shared.vision.features import FeatureSet
from shared.vision.router import Router

CATS = ["dress", "shirt", "toptee"]
COLOURS = {"dress": (200, 60, 60), "shirt": (60, 60, 200), "toptee": (60, 180, 60)}
DIM = 8
MODEL = "m-test-1"
KS = (5, 30, 200)  # 200 is larger than the 90-item gallery


def make_set(
    root: Path, name: str, per_cat: int, seed: int, spread: float = 0.6, model_id: str = MODEL
) -> FeatureSet:
    rng = np.random.default_rng(seed)
    centres = np.eye(DIM, dtype=np.float32)[: len(CATS)] * 4.0
    vectors, cats, paths, keys = [], [], [], []
    root.mkdir(parents=True, exist_ok=True)
    for c, cat in enumerate(CATS):
        for i in range(per_cat):
            vectors.append(centres[c] + rng.normal(scale=spread, size=DIM).astype(np.float32) + 0.5)
            cats.append(cat)
            key = f"{name}-{cat}-{i}"
            path = root / f"{key}.jpg"
            Image.new("RGB", (24, 32), COLOURS[cat]).save(path, format="JPEG")
            paths.append(str(path))
            keys.append(key)
    return FeatureSet(
        vectors=np.asarray(vectors, dtype=np.float32),
        keys=keys,
        categories=cats,
        splits=[name] * len(keys),
        paths=paths,
        model_id=model_id,
        backbone="toy",
    )


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureSet, FeatureSet, Router]:
    root = tmp_path_factory.mktemp("images")
    gallery = make_set(root, "gallery", 30, seed=0)
    queries = make_set(root, "query", 10, seed=1)
    router = Router.fit(gallery.vectors, gallery.categories, model_id=MODEL, backbone="toy", cv=3)
    return gallery, queries, router


@pytest.fixture(scope="module")
def report(sets: tuple[FeatureSet, FeatureSet, Router]) -> EvalReport:
    gallery, queries, router = sets
    return evaluate_retrieval(
        gallery, queries, router, ks=KS, extraction_ms=12.5, latency_sample=10
    )


def test_rows_for_each_mode_and_k(report: EvalReport) -> None:
    modes = ["label", "svm", "svm-fallback", "none"]
    assert [(r.mode, r.k) for r in report.rows] == [(m, k) for m in modes for k in KS]
    for r in report.rows:
        assert r.n_queries == 30
        assert 0.0 <= r.mean_ap <= 1.0 and 0.0 <= r.mean_precision <= 1.0
        assert r.ms_matching > 0 and r.ms_matching_batched > 0
    assert report.meta["n_gallery"] == 90 and report.meta["n_queries"] == 30
    assert report.meta["categories"] == CATS
    assert report.meta["model_id"] == MODEL and report.meta["backbone"] == "toy"
    assert report.meta["study"]["routed_map"] == pytest.approx(0.898)
    assert report.notes, "k=200 over a 90-item gallery deserves a note"


def test_label_routing_is_at_least_as_good_as_none(report: EvalReport) -> None:
    for k in KS:
        assert report.row("label", k).mean_ap >= report.row("none", k).mean_ap - 1e-12
        assert report.row("label", k).mean_precision >= report.row("none", k).mean_precision - 1e-12
    # routing by the true label searches only relevant items: perfect at every k
    for k in KS:
        assert report.row("label", k).mean_ap == pytest.approx(1.0)
        assert report.row("label", k).mean_precision == pytest.approx(1.0)
    # unrouted at k=200 returns the whole gallery: precision is the category share
    assert report.row("none", 200).mean_precision == pytest.approx(1 / 3)
    assert report.row("none", 200).mean_returned == pytest.approx(90)
    assert report.row("label", 200).mean_returned == pytest.approx(30)


def test_router_accuracy_and_timings(report: EvalReport) -> None:
    svm = report.row("svm", 5)
    fb = report.row("svm-fallback", 5)
    assert svm.router_accuracy is not None and svm.router_accuracy >= 0.9
    assert svm.router_coverage == pytest.approx(svm.router_accuracy)
    assert fb.router_accuracy == pytest.approx(svm.router_accuracy)
    assert fb.router_coverage is not None and fb.router_accuracy is not None
    assert fb.router_coverage >= fb.router_accuracy
    assert report.row("label", 5).router_accuracy is None
    assert report.row("none", 5).router_accuracy is None
    for r in report.rows:
        router_ms = r.ms_router or 0.0
        assert r.ms_with_extraction == pytest.approx(r.ms_matching + router_ms + 12.5)
        assert (r.ms_router is not None) == (r.mode in ("svm", "svm-fallback"))
    assert report.meta["ms_router_single"] is not None


def test_per_category_and_examples(report: EvalReport) -> None:
    assert set(report.per_category) == {"label", "svm", "svm-fallback", "none"}
    assert set(report.per_category["label"]) == set(CATS)
    assert all(v == pytest.approx(1.0) for v in report.per_category["label"].values())
    assert report.meta["examples_mode"] == "svm-fallback"
    assert len(report.examples) == 6
    assert {e.category for e in report.examples} == set(CATS)  # spread across categories
    for e in report.examples:
        assert 1 <= len(e.results) <= 8
        assert [r.rank for r in e.results] == list(range(1, len(e.results) + 1))
        for r in e.results:
            assert r.relevant == (r.category == e.category)
    json.dumps(report.to_dict())  # serialisable as is


def test_without_router_svm_modes_are_skipped(sets: tuple[FeatureSet, FeatureSet, Router]) -> None:
    gallery, queries, _ = sets
    rep = evaluate_retrieval(gallery, queries, None, ks=(10,), metric="euclidean", latency_sample=3)
    assert [r.mode for r in rep.rows] == ["label", "none"]
    assert any("svm" in n and "skipped" in n for n in rep.notes)
    assert rep.meta["examples_mode"] == "label"
    assert all(r.ms_with_extraction is None for r in rep.rows)
    assert rep.meta["metric"] == "euclidean"
    with pytest.raises(InvalidInput):
        evaluate_retrieval(gallery, queries, None, modes=("svm",), ks=(10,))


def test_model_mismatch_is_refused(
    sets: tuple[FeatureSet, FeatureSet, Router], tmp_path: Path
) -> None:
    gallery, queries, router = sets
    other = make_set(tmp_path, "other", 2, seed=5, model_id="m-other")
    with pytest.raises(ModelMismatch):
        evaluate_retrieval(gallery, other, None, ks=(5,))
    foreign = Router(
        labels=router.labels, model_id="m-other", backbone="toy", pipeline=router.pipeline
    )
    with pytest.raises(ModelMismatch):
        evaluate_retrieval(gallery, queries, foreign, ks=(5,))


def test_bad_arguments(sets: tuple[FeatureSet, FeatureSet, Router]) -> None:
    gallery, queries, router = sets
    with pytest.raises(InvalidInput):
        evaluate_retrieval(gallery, queries, router, ks=(0,))
    with pytest.raises(InvalidInput):
        evaluate_retrieval(gallery, queries, router, modes=("random",), ks=(5,))
    with pytest.raises(InvalidInput):
        evaluate_retrieval(gallery, queries, router, metric="manhattan", ks=(5,))
    stranger = FeatureSet(
        vectors=queries.vectors[:1],
        keys=["x"],
        categories=["coat"],
        splits=[""],
        paths=[""],
        model_id=MODEL,
        backbone="toy",
    )
    with pytest.raises(UnknownCategory):
        evaluate_retrieval(gallery, stranger, router, ks=(5,))


def test_markdown_and_written_files(report: EvalReport, tmp_path: Path) -> None:
    md = to_markdown(report)
    assert TABLE_HEADER in md
    assert "| svm-fallback | 30 |" in md
    assert "routed mAP 0.898" in md and "0.006 s routed vs 0.009 s unrouted" in md
    assert "Precision@10 per category" in md
    paths = write_report(report, tmp_path / "out")
    assert set(paths) == {"markdown", "json", "grid"}
    assert paths["markdown"].name == "report.md" and paths["json"].name == "report.json"
    assert paths["grid"].name == "examples.png"
    assert "![example queries](examples.png)" in paths["markdown"].read_text()
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == 12 and data["meta"]["model_id"] == MODEL
    with Image.open(paths["grid"]) as img:
        assert img.format == "PNG"
        assert img.height >= 6 * 112 and img.width >= 9 * 112


def test_grid_tolerates_unreadable_images(report: EvalReport, tmp_path: Path) -> None:
    ex = report.examples[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    ex_bad = type(ex)(
        key=ex.key,
        path=str(tmp_path / "missing.jpg"),
        category=ex.category,
        route=None,
        results=[type(r)(**{**r.__dict__, "path": str(broken)}) for r in ex.results],
    )
    out = render_grid([ex_bad], tmp_path / "grid.png", thumb=40)
    with Image.open(out) as img:
        img.load()
        # the query tile (inside its frame) is the grey placeholder
        assert img.getpixel((6 + 4 + 20, img.height // 2)) == (200, 200, 200)
    empty = render_grid([], tmp_path / "empty.png")
    assert empty.is_file()


def test_per_query_values_average_to_the_rows(sets: tuple[FeatureSet, FeatureSet, Router]) -> None:
    gallery, queries, router = sets
    rep = evaluate_retrieval(gallery, queries, router, ks=(5, 30), latency_sample=3, keep_per_query=True)
    assert set(rep.per_query) == set(rep.meta["modes"])
    for row in rep.rows:
        values = rep.per_query[row.mode]
        assert len(values[f"ap@{row.k}"]) == len(queries)
        assert np.mean(values[f"ap@{row.k}"]) == pytest.approx(row.mean_ap)
        assert np.mean(values[f"p@{row.k}"]) == pytest.approx(row.mean_precision)
    # not kept unless asked for
    assert evaluate_retrieval(gallery, queries, router, ks=(5,), latency_sample=3).per_query == {}
