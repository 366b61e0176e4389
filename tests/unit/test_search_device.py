"""ShardedIndex held on a torch device (``IndexOptions.device``): the same answers as the host
index, routed and unrouted, both metrics, float16 storage; the ``search_device`` setting.

The torch code runs on the CPU here (``device="cpu"``); on a machine with CUDA the same checks
run on the GPU as well."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from shared.config import Settings
from shared.errors import InvalidInput
from shared.search.ann import IndexOptions, resolve_search_device
from shared.search.index import ShardedIndex

D = 32
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def catalogue(n: int, seed: int = 0) -> tuple[npt.NDArray[np.float32], list[str], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, D)) * 2
    assign = rng.integers(0, 12, n)
    vectors = (centres[assign] + rng.normal(size=(n, D))).astype(np.float32)
    cats = [("dress", "shirt", "toptee", "coat")[a % 4] for a in assign]
    queries = (centres[rng.integers(0, 12, 25)] + rng.normal(size=(25, D))).astype(np.float32)
    return vectors, cats, queries


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_device_index_matches_host(device: str, metric: str) -> None:
    vectors, cats, queries = catalogue(2000)
    host = ShardedIndex(vectors, cats, metric, ann="exact")  # type: ignore[arg-type]
    dev = ShardedIndex(vectors, cats, metric, options=IndexOptions(device=device))  # type: ignore[arg-type]
    assert host.device == "host" and dev.device == device
    for routes in (None, [("dress",)] * 25, [("shirt", "toptee")] * 25,
                   [("coat",), None, ("dress", "coat"), ("toptee",), None] * 5):
        ref = host.search(queries, 10, routes)
        got = dev.search(queries, 10, routes)
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_device_index_fp16_storage(device: str) -> None:
    vectors, cats, queries = catalogue(2000, seed=1)
    host = ShardedIndex(vectors, cats, ann="exact")
    half = ShardedIndex(vectors, cats, options=IndexOptions(device=device, storage="fp16"))
    full = ShardedIndex(vectors, cats, options=IndexOptions(device=device))
    assert half.nbytes() < full.nbytes()
    ref = host.search(queries, 10)
    got = half.search(queries, 10)
    overlap = np.mean([len(set(g) & set(r)) / 10 for g, r in zip(got.indices.tolist(), ref.indices.tolist(),
                                                                 strict=True)])
    assert overlap >= 0.98
    same = got.indices == ref.indices
    np.testing.assert_allclose(got.scores[same], ref.scores[same], atol=5e-3)


def test_device_index_small_shards_and_large_k() -> None:
    vectors, cats, queries = catalogue(300, seed=2)
    host = ShardedIndex(vectors, cats, ann="exact")
    dev = ShardedIndex(vectors, cats, options=IndexOptions(device="cpu"))
    # k larger than a shard: padded with -1 / nan exactly as the host index pads
    shard = min(cats.count(c) for c in set(cats))
    small = next(c for c in set(cats) if cats.count(c) == shard)
    ref = host.search(queries, shard + 5, [(small,)] * len(queries))
    got = dev.search(queries, shard + 5, [(small,)] * len(queries))
    np.testing.assert_array_equal(got.indices, ref.indices)
    assert np.isnan(got.scores[:, shard:]).all() and (got.indices[:, shard:] == -1).all()
    # a single 1-d query, and queries searched in several chunks give the same answer
    np.testing.assert_array_equal(dev.search(queries[0], 5).indices, host.search(queries[0], 5).indices)


def test_device_index_chunks_many_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.search import index as index_mod

    vectors, cats, queries = catalogue(500, seed=3)
    dev = ShardedIndex(vectors, cats, options=IndexOptions(device="cpu"))
    whole = dev.search(queries, 7)
    monkeypatch.setattr(index_mod, "_DEVICE_SCORES", 1000)  # two queries per product
    np.testing.assert_array_equal(dev.search(queries, 7).indices, whole.indices)


def test_resolve_search_device() -> None:
    assert resolve_search_device("auto", torch.device("cpu")) is None
    assert resolve_search_device("auto", torch.device("cuda", 1)) == "cuda:1"
    assert resolve_search_device("auto", None) is None
    assert resolve_search_device("host", torch.device("cuda")) is None
    if torch.cuda.is_available():
        assert resolve_search_device("cuda:0", torch.device("cpu")) == "cuda:0"
    else:  # asked for by name on a machine without one: a clear error, not a failing query later
        with pytest.raises(InvalidInput, match="FIR_SEARCH_DEVICE=cuda:0 asks for a CUDA device"):
            resolve_search_device("cuda:0", torch.device("cpu"))
    with pytest.raises(InvalidInput):
        resolve_search_device("tpu")
    opts = IndexOptions.from_settings(Settings(search_device="host", search_ann_storage="fp16"), torch.device("cuda"))
    assert opts.device is None and opts.storage == "fp16"
    with pytest.raises(ValueError, match="search_device"):
        Settings(search_device="gpu")


def test_an_index_too_big_for_the_device_is_searched_in_host_memory(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from shared.search import index as index_mod

    def no_room(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 7.63 GiB")

    monkeypatch.setattr(index_mod, "DeviceVectors", no_room)
    vectors, cats, queries = catalogue(500, seed=4)
    with caplog.at_level("WARNING"):
        index = ShardedIndex(vectors, cats, options=IndexOptions(device="cpu"))
    assert index.device == "host" and index.options.device is None
    assert "does not fit on cpu" in caplog.text
    ref = ShardedIndex(vectors, cats, ann="exact").search(queries, 5)
    np.testing.assert_array_equal(index.search(queries, 5).indices, ref.indices)
