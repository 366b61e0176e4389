from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from shared.cli import main
from shared.engine import RetrievalEngine
from shared.errors import InvalidInput, ModelMismatch, UnknownCategory
from shared.search.index import ShardedIndex
from shared.vision.features import FeatureSet
from shared.vision.router import Router


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def engine(trained) -> RetrievalEngine:  # type: ignore[no-untyped-def]
    return RetrievalEngine.from_files(
        trained.model_path, trained.features_path, trained.router_path
    )


def test_engine_matches_direct_index(engine: RetrievalEngine) -> None:
    feats = engine.catalogue
    q = feats.vectors[:4] + 0.01
    answers = engine.query_vectors(q, k=5, metric="cosine", routing="none")
    ref = ShardedIndex(feats.vectors, feats.categories, "cosine").search(q, 5)
    for i, a in enumerate(answers):
        assert [m.index for m in a.matches] == ref.indices[i].tolist()
        assert a.route is None and a.model_id == engine.model_id


def test_engine_routing_modes(engine: RetrievalEngine) -> None:
    q = engine.catalogue.vectors[:3]
    labelled = engine.query_vectors(q, k=50, routing="label", categories=["shirt"] * 3)
    assert all(m.category == "shirt" for a in labelled for m in a.matches)
    routed = engine.query_vectors(q, k=5, routing="svm")
    for a in routed:
        assert a.route is not None and len(a.route) == 1
        assert set(a.probabilities) == {"dress", "shirt", "toptee"}
        assert a.route[0] == max(a.probabilities, key=a.probabilities.__getitem__)
    fallback = engine.query_vectors(q, k=5, routing="svm-fallback", threshold=1.01)
    assert all(a.route is not None and len(a.route) == 2 for a in fallback)


def test_engine_bad_parameters(engine: RetrievalEngine) -> None:
    q = engine.catalogue.vectors[:1]
    for bad in (0, -1, 10_001):
        with pytest.raises(InvalidInput, match="k must be"):
            engine.query_vectors(q, k=bad)
    with pytest.raises(InvalidInput, match="unknown metric"):
        engine.query_vectors(q, metric="manhattan")
    with pytest.raises(InvalidInput, match="unknown routing"):
        engine.query_vectors(q, routing="magic")
    with pytest.raises(UnknownCategory, match="hats"):
        engine.query_vectors(q, routing="label", categories=["hats"])


def test_engine_refuses_mismatched_artifacts(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    feats = FeatureSet.load(trained.features_path)
    other = Router.fit(
        feats.vectors, feats.categories, model_id="0000000000000000", backbone="resnet50", cv=2
    )
    other.save(tmp_path / "other.joblib")
    with pytest.raises(ModelMismatch):
        RetrievalEngine.from_files(
            trained.model_path, trained.features_path, tmp_path / "other.joblib"
        )


def test_cli_query(trained) -> None:  # type: ignore[no-untyped-def]
    image = next((trained.catalogue / "test" / "dress").glob("*.jpg"))
    res = run(trained.home, "query", str(image), "-k", "3", "--routing", "svm", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out["results"]) == 3 and out["model_id"] == trained.model_id
    scores = [r["score"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True)
    res = run(
        trained.home,
        "query",
        str(image),
        "-k",
        "2",
        "--metric",
        "euclidean",
        "--category",
        "toptee",
    )
    assert res.exit_code == 0 and "searched: toptee" in res.output


def test_cli_query_decodes_as_indexing_does(trained, engine: RetrievalEngine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`fir query` gets a file's vector the way `fir extract` (and the worker) compute it: a
    large JPEG is drafted while decoding there, and a full decode would give another vector."""
    from PIL import Image

    from shared.data.synthetic import draw_garment
    from shared.imaging import load_image

    rng = np.random.default_rng(0)
    small = np.asarray(draw_garment("dress", 64, seed=4321).resize((640, 800)), np.float32)
    noisy = np.clip(small + rng.normal(0, 25, small.shape), 0, 255).astype(np.uint8)
    photo = tmp_path / "big.jpg"
    Image.fromarray(noisy).save(photo, quality=90)
    indexed = engine.embedder.embed_paths([photo], workers=0, progress=False).vectors
    full = engine.embedder.embed_images([load_image(photo)])
    assert not np.allclose(indexed, full, atol=1e-3)  # the two decodings really differ here
    expected = engine.query_vectors(indexed, k=5, routing="none")[0]
    res = run(trained.home, "query", str(photo), "-k", "5", "--routing", "none", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)["results"]
    assert [r["key"] for r in out] == [m.key for m in expected.matches]
    np.testing.assert_allclose([r["score"] for r in out], [m.score for m in expected.matches], atol=1e-5)
    direct = engine.query_paths([photo], k=5, routing="none")[0]
    np.testing.assert_allclose([m.score for m in direct.matches], [m.score for m in expected.matches], atol=1e-5)


def test_cli_errors(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = next((trained.catalogue / "test" / "dress").glob("*.jpg"))
    res = run(trained.home, "train", "--dataset", str(tmp_path / "nowhere"))
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "empty" / "dress").mkdir(parents=True)
    res = run(trained.home, "extract", "--dataset", str(tmp_path / "empty"))
    assert res.exit_code == 2 and "no usable images" in res.output
    res = run(trained.home, "query", str(image), "--category", "hats")
    assert res.exit_code == 2 and "unknown category 'hats'" in res.output
    res = run(trained.home, "query", str(tmp_path / "missing.jpg"))
    assert res.exit_code == 2 and "file not found" in res.output
    feats = FeatureSet.load(trained.features_path)
    Router.fit(
        feats.vectors, feats.categories, model_id="ffffffffffffffff", backbone="resnet50", cv=2
    ).save(tmp_path / "foreign.joblib")
    res = run(trained.home, "query", str(image), "--router", str(tmp_path / "foreign.joblib"))
    assert res.exit_code == 2 and "cannot route features of model" in res.output
    res = run(tmp_path / "fresh-home", "query", str(image))
    assert res.exit_code == 2 and "train one with `fir train`" in res.output


def test_cli_extract_and_router_on_copy(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    shutil.copytree(trained.home, home)
    res = run(
        home,
        "extract",
        "--dataset",
        str(trained.catalogue),
        "--splits",
        "train",
        "--out",
        str(tmp_path / "f.npz"),
    )
    assert res.exit_code == 0, res.output
    feats = FeatureSet.load(tmp_path / "f.npz")
    assert len(feats) == 48 and feats.model_id == trained.model_id
    assert np.isfinite(feats.vectors).all()
    res = run(home, "train-router", "--features", str(tmp_path / "f.npz"), "--cv", "2")
    assert res.exit_code == 0 and "router over dress, shirt, toptee" in res.output
