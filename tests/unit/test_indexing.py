"""The indexing pipeline's embedding stage: one loader over all items, chunks committed by a
writer thread. Every item gets its own vector, bad images are recorded, progress comes per
chunk, a failed write stops the run with its error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.config import Settings
from shared.data.synthetic import generate_catalogue
from shared.errors import InvalidInput

N_GOOD = 27  # 9 per category


@pytest.fixture(scope="module")
def embedder() -> Any:
    from shared.vision.backbone import build_network
    from shared.vision.embed import Embedder

    net, _ = build_network("resnet50", "none", num_classes=3)
    return Embedder(net, "resnet50", 32, device="cpu", precision="fp32")


@pytest.fixture()
def home(tmp_path: Path) -> tuple[Settings, int, int, Path]:
    from shared.db import services
    from shared.db.migrate import upgrade
    from shared.db.session import session_scope

    root = generate_catalogue(tmp_path / "cat", per_category={"train": N_GOOD // 3}, size=48)
    # two truncated files: recorded as bad by the scan
    good = sorted(root.rglob("*.jpg"))
    for i, src in enumerate(good[:2]):
        data = src.read_bytes()
        (src.parent / f"zz-truncated-{i}.jpg").write_bytes(data[: len(data) // 3])
    settings = Settings(home=tmp_path / "home", loader_workers=0, batch_size=4)
    upgrade(settings.resolved_database_url())
    with session_scope(settings) as session:
        mv = services.register_model_version(
            session, backbone="resnet50", weights_source="none", labels=["dress", "shirt", "toptee"],
            model_id="0" * 16, checkpoint_path="/dev/null", checkpoint_sha256="0" * 64)
        cat = services.create_catalogue(session, "t", source_kind="folder", source_path=str(root), root=str(root))
    return settings, cat.id, mv.id, root


def _vectors(settings: Settings, catalogue_id: int, version_id: int) -> dict[str, np.ndarray]:
    from shared.db import services
    from shared.db.session import session_scope

    with session_scope(settings) as session:
        ids, vectors, _ = services.load_vectors(session, catalogue_id, version_id)
        infos = services.get_items(session, ids.tolist())
    return {str(infos[int(i)].location): v for i, v in zip(ids, vectors, strict=True)}


@pytest.mark.parametrize("loader_workers", [0, 1])
def test_every_item_gets_its_own_vector(home: tuple, embedder: Any, loader_workers: int) -> None:
    from shared.indexing import index_catalogue

    settings, cat_id, mv_id, root = home
    settings = settings.model_copy(update={"loader_workers": loader_workers})
    calls: list[tuple[int, int]] = []
    report = index_catalogue(settings, cat_id, mv_id, embedder, None, progress=lambda d, t: calls.append((d, t)))
    assert report.embedded == N_GOOD and report.bad == 2
    assert all("truncated" in key for key in report.bad_reasons)
    assert calls[0] == (0, N_GOOD) and calls[-1] == (N_GOOD, N_GOOD)
    stored = _vectors(settings, cat_id, mv_id)
    assert len(stored) == N_GOOD
    paths = sorted(stored)
    direct = embedder.embed_paths([Path(p) for p in paths], batch_size=5, workers=0, progress=False)
    np.testing.assert_allclose(np.stack([stored[p] for p in paths]), direct.vectors, rtol=1e-4, atol=1e-5)


def _scan(settings: Settings, cat_id: int, root: Path) -> None:
    """The scan stage alone: every item is then known and lacks a vector."""
    from shared.db import services
    from shared.db.session import session_scope
    from shared.indexing import read_source, scan_samples

    scan = read_source("folder", str(root))
    assert scan is not None
    good, _ = scan_samples(scan.samples, settings.max_image_pixels)
    with session_scope(settings) as session:
        services.upsert_items(session, cat_id, good)


def test_chunks_commit_with_progress(home: tuple, embedder: Any) -> None:
    from shared.indexing import IndexReport, embed_missing

    settings, cat_id, mv_id, root = home
    _scan(settings, cat_id, root)
    gone = sorted(root.rglob("shirt-*.jpg"))[:2]
    for path in gone:  # vanished between scan and embedding: bad at embedding time
        path.unlink()
    report = IndexReport(catalogue_id=cat_id, model_version_id=mv_id)
    calls: list[tuple[int, int]] = []
    embed_missing(settings, cat_id, mv_id, embedder, None, report, progress=lambda d, t: calls.append((d, t)),
                  batch_size=10, embed_batch=3)
    # chunks close on whole loader batches: 12, 12, then the rest
    assert calls == [(0, N_GOOD), (12, N_GOOD), (24, N_GOOD), (N_GOOD, N_GOOD)]
    assert report.embedded == N_GOOD - 2 and report.bad == 2
    assert all(reason == "file not found" for reason in report.bad_reasons.values())
    assert set(_vectors(settings, cat_id, mv_id)).isdisjoint(str(p) for p in gone)
    assert len(_vectors(settings, cat_id, mv_id)) == N_GOOD - 2


def test_a_failed_write_stops_the_run(home: tuple, embedder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.db import services
    from shared.indexing import IndexReport, embed_missing

    settings, cat_id, mv_id, root = home
    _scan(settings, cat_id, root)
    real = services.write_embeddings
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise InvalidInput("disk full (test)")
        return real(*args, **kwargs)

    monkeypatch.setattr(services, "write_embeddings", flaky)
    report = IndexReport(catalogue_id=cat_id, model_version_id=mv_id)
    with pytest.raises(InvalidInput, match="disk full"):
        embed_missing(settings, cat_id, mv_id, embedder, None, report, batch_size=8, embed_batch=4)
    assert len(calls) == 2  # the writer stopped at its first error
    assert len(_vectors(settings, cat_id, mv_id)) == report.embedded == 8  # the first chunk stays committed


def test_compile_is_used_for_large_cpu_fp32_jobs_only() -> None:
    from shared.indexing import use_compile
    from shared.vision.backbone import build_network
    from shared.vision.embed import Embedder

    net, _ = build_network("resnet50", "none", num_classes=3)
    fp32 = Embedder(net, "resnet50", 32, device="cpu", precision="fp32")
    bf16 = Embedder(net, "resnet50", 32, device="cpu", precision="bf16")
    auto = Settings(compile="auto", compile_min_images=100)
    assert not use_compile(auto, fp32, 99) and use_compile(auto, fp32, 100)
    assert use_compile(Settings(compile="on"), fp32, 1)
    assert not use_compile(Settings(compile="off"), fp32, 10**6)
    assert not use_compile(Settings(compile="on"), bf16, 10**6)  # only fp32 was measured faithful


@pytest.mark.slow
def test_compiled_indexing_stores_the_eager_features(home: tuple) -> None:
    """FIR_COMPILE=on: the catalogue goes through torch.compile (batches padded to one shape)
    and stores the features the eager model gives."""
    import torch

    from shared.indexing import index_catalogue
    from shared.vision.backbone import build_network
    from shared.vision.embed import Embedder

    settings, cat_id, mv_id, _ = home
    torch.manual_seed(0)
    net, _ = build_network("resnet50", "none", num_classes=3)
    compiled = Embedder(net, "resnet50", 32, device="cpu", precision="fp32")
    report = index_catalogue(settings.model_copy(update={"compile": "on"}), cat_id, mv_id, compiled, None)
    assert report.embedded == N_GOOD
    assert compiled._compiled is not None and not compiled._compile_failed  # it really compiled
    stored = _vectors(settings, cat_id, mv_id)
    paths = sorted(stored)
    eager = Embedder(net, "resnet50", 32, device="cpu", precision="fp32")  # the same weights
    direct = eager.embed_paths([Path(p) for p in paths], batch_size=5, workers=0, progress=False)
    np.testing.assert_allclose(np.stack([stored[p] for p in paths]), direct.vectors, rtol=1e-4, atol=1e-5)


def test_a_query_photo_is_decoded_as_it_was_indexed(embedder: Any, tmp_path: Path) -> None:
    """A large catalogue JPEG, embedded by the indexing loader and decoded the way the worker
    decodes an uploaded query: the same vector, so the photo finds itself with cosine 1."""
    from PIL import Image

    path = tmp_path / "big.jpg"
    Image.effect_noise((1200, 900), 50).convert("RGB").save(path, quality=92)
    indexed = embedder.embed_paths([path], workers=0, progress=False).vectors[0]
    queried = embedder.embed_images([embedder.decode(path)])[0]
    np.testing.assert_allclose(queried, indexed, rtol=0, atol=1e-5)
    # the full-size decode the worker used before gives another vector
    from shared.imaging import load_image

    full = embedder.embed_images([load_image(path)])[0]
    assert np.abs(full - indexed).max() > 1e-3


@pytest.mark.parametrize("loader_workers", [0, 1])
def test_uint8_loading_normalised_on_the_device_gives_the_same_vectors(embedder: Any, tmp_path: Path,
                                                                       loader_workers: int) -> None:
    """The GPU default: loader processes hand over uint8 crops and the embedder normalises
    them on its device. Run on the CPU here: the vectors equal the float pipeline's, and a
    file that fails to decode is still reported, not embedded."""
    from PIL import Image

    from shared.vision.embed import Embedder

    paths = []
    for i, size in enumerate([(300, 200), (64, 96), (500, 500)]):
        paths.append(tmp_path / f"{i}.jpg")
        Image.effect_noise(size, 40 + 10 * i).convert("RGB").save(paths[-1], quality=90)
    paths.insert(1, tmp_path / "broken.jpg")
    paths[1].write_bytes(b"not a jpeg")
    uint8 = Embedder(embedder.net, "resnet50", 32, device="cpu", precision="fp32", normalise_on_device=True)
    assert uint8.loader_transform is not uint8.transform and embedder.loader_transform is embedder.transform
    ref = embedder.embed_paths(paths, batch_size=2, workers=loader_workers, progress=False)
    got = uint8.embed_paths(paths, batch_size=2, workers=loader_workers, progress=False)
    assert got.ok.tolist() == ref.ok.tolist() == [0, 2, 3] and set(got.errors) == {1}
    np.testing.assert_allclose(got.vectors, ref.vectors, rtol=0, atol=1e-6)
