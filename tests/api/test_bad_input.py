"""Bad input: a clear 4xx with a stable code, nothing written (no job or item rows, no files
under uploads/ or images/), and the service still answers afterwards. The corpus is generated
here.

Decisions: CMYK JPEGs and 16-bit PNGs are *converted* to 8-bit RGB (they are ordinary
catalogue photos from print and scanning workflows); animated images, formats outside
``shared.imaging.ALLOWED_FORMATS`` (recognised by content, whatever the extension), images
over the pixel cap and aspect ratios over 20:1 are refused.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import func, select

from shared.config import Settings
from tests.api.conftest import ApiEnv, Sent

UPLOAD_CAP = 300_000
PIXEL_CAP = 4_000_000


def _img(fmt: str = "JPEG", size: tuple[int, int] = (64, 64), mode: str = "RGB", **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode in ("L", "I;16", "I") else (200, 40, 40)[: len(mode)] or 0).save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG whose header claims width x height: a decompression bomb's signature."""
    real = _img("PNG", (1, 1), "L")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    patched = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return real[:8] + patched + real[8 + 25:]


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _noisy_png(nbytes: int) -> bytes:
    import numpy as np

    side = int((nbytes / 3) ** 0.5) + 8
    arr = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


BAD_IMAGES: dict[str, tuple[bytes, str, set[int], set[str]]] = {
    # name: (bytes, file name, acceptable statuses, acceptable codes)
    "zero-byte": (b"", "empty.jpg", {422}, {"bad_image"}),
    "text-as-jpeg": (b"this is not an image at all\n" * 10, "notes.jpg", {422}, {"bad_image"}),
    "html-as-png": (b"<html><script>alert(1)</script></html>", "x.png", {422}, {"bad_image"}),
    "zip-as-jpeg": (b"PK\x03\x04" + b"\x00" * 200, "a.jpg", {422}, {"bad_image"}),
    "truncated-jpeg": (_img("JPEG", (256, 256))[:300], "t.jpg", {422}, {"bad_image"}),
    "corrupt-png": (_img("PNG", (64, 64))[:40] + b"\xde\xad\xbe\xef" * 50, "c.png", {422}, {"bad_image"}),
    "ppm-as-jpeg": (_img("PPM", (32, 32)), "p.jpg", {422}, {"bad_image"}),
    "ico-as-png": (_img("ICO", (32, 32)), "i.png", {422}, {"bad_image"}),
    "tga-named-jpg": (_img("TGA", (32, 32)), "t.jpg", {422}, {"bad_image"}),
    "animated-gif": (_animated_gif(), "a.gif", {422}, {"bad_image"}),
    "extreme-aspect": (_img("PNG", (2100, 20), "L"), "wide.png", {422}, {"bad_image"}),
    "pixel-bomb": (_png_header_only(30_000, 30_000), "bomb.png", {413}, {"image_too_large"}),
    "over-pixel-cap": (_png_header_only(2100, 2100), "big.png", {413}, {"image_too_large"}),
    "over-size-cap": (_noisy_png(UPLOAD_CAP + 10_000), "huge.png", {413}, {"image_too_large", "payload_too_large"}),
}

GOOD_ODD_IMAGES = {
    "cmyk-jpeg": _img("JPEG", (64, 64), "CMYK"),
    "16-bit-png": _img("PNG", (64, 64), "I;16"),
    "named-png-but-jpeg": _img("JPEG", (64, 64)),
}


@pytest.fixture()
def small(api: ApiEnv) -> Iterator[tuple[Any, Settings, int]]:
    """The API over the same database with small caps (an upload cap of 300 kB, 4 MP)."""
    from api import create_app

    settings = api.settings.model_copy(update={"max_upload_bytes": UPLOAD_CAP, "max_image_pixels": PIXEL_CAP})
    app = create_app(settings, enqueue=Sent())
    app.config["TESTING"] = True
    yield app.test_client(), settings, api.catalogue_id


def _snapshot(settings: Settings) -> tuple[int, int, int, frozenset[str]]:
    from shared.db.models import Item, Job, QueryResult
    from shared.db.session import session_scope

    with session_scope(settings) as session:
        counts = tuple(int(session.scalar(select(func.count()).select_from(m)) or 0) for m in (Job, Item, QueryResult))
    home = settings.resolved_home()
    files = frozenset(str(p.relative_to(home)) for folder in ("uploads", "images") if (home / folder).exists()
                      for p in (home / folder).rglob("*") if p.is_file())
    return counts[0], counts[1], counts[2], files


def _assert_refused(resp: Any, statuses: set[int], codes: set[str]) -> None:
    body = resp.get_json()
    assert resp.status_code in statuses, (resp.status_code, body)
    assert body["error"]["code"] in codes, body
    assert body["error"]["message"]


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_images_are_refused_and_nothing_is_written(small: tuple[Any, Settings, int], name: str) -> None:
    client, settings, cat = small
    data, filename, statuses, codes = BAD_IMAGES[name]
    before = _snapshot(settings)
    resp = client.post("/api/v1/queries", data={"catalogue": str(cat), "file": (io.BytesIO(data), filename)},
                       content_type="multipart/form-data")
    _assert_refused(resp, statuses, codes)
    resp = client.post(f"/api/v1/catalogues/{cat}/items", data={"file": (io.BytesIO(data), filename)},
                       content_type="multipart/form-data")
    _assert_refused(resp, statuses, codes)
    assert _snapshot(settings) == before
    assert client.get("/healthz").status_code == 200


def test_body_over_the_request_cap_is_413(small: tuple[Any, Settings, int]) -> None:
    client, settings, cat = small
    before = _snapshot(settings)
    blob = b"\xff" * (UPLOAD_CAP + 2 * 1024 * 1024)
    resp = client.post("/api/v1/queries", data={"catalogue": str(cat), "file": (io.BytesIO(blob), "x.jpg")},
                       content_type="multipart/form-data")
    _assert_refused(resp, {413}, {"payload_too_large"})
    assert _snapshot(settings) == before


@pytest.mark.parametrize("name", sorted(GOOD_ODD_IMAGES))
def test_cmyk_and_16_bit_are_converted(small: tuple[Any, Settings, int], name: str) -> None:
    from shared.imaging import load_image

    client, _, cat = small
    data = GOOD_ODD_IMAGES[name]
    assert load_image(data).mode == "RGB"
    resp = client.post("/api/v1/queries", data={"catalogue": str(cat), "file": (io.BytesIO(data), "odd.png")},
                       content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/etc/passwd", "..", "a//b", "./x", "a\\..\\b",
                                 "x\x00y", "k" * 600, " lead"])
def test_path_traversal_in_item_keys(small: tuple[Any, Settings, int], key: str) -> None:
    client, settings, cat = small
    before = _snapshot(settings)
    resp = client.post(f"/api/v1/catalogues/{cat}/items",
                       data={"file": (io.BytesIO(_img("JPEG", (40, 40))), "ok.jpg"), "key": key},
                       content_type="multipart/form-data")
    _assert_refused(resp, {400, 422}, {"invalid_input", "validation_error"})
    assert _snapshot(settings) == before


@pytest.mark.parametrize("path", ["../../../../etc/passwd", "/etc/passwd", "a/../../outside.jpg",
                                  "link-out/secret.jpg"])
def test_path_traversal_in_server_side_paths(small: tuple[Any, Settings, int], tmp_path: Path, path: str) -> None:
    import uuid

    client, settings, _ = small
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(_img("JPEG", (40, 40)))
    (root / "link-out").symlink_to(outside)
    resp = client.post("/api/v1/catalogues", json={"name": f"rooted-{uuid.uuid4().hex[:8]}", "root": str(root)})
    assert resp.status_code == 201
    cat = resp.get_json()["id"]
    before = _snapshot(settings)
    for url in (f"/api/v1/catalogues/{cat}/items/paths", f"/api/v1/catalogues/{cat}/items"):
        resp = client.post(url, json={"paths": [path]})
        _assert_refused(resp, {400, 404}, {"invalid_input", "not_found"})
    assert _snapshot(settings) == before


def test_oversized_and_malformed_json(small: tuple[Any, Settings, int]) -> None:
    client, settings, cat = small
    before = _snapshot(settings)
    big = {"catalogue": str(cat), "item_id": 1, "pad": "x" * (3 * 1024 * 1024)}
    resp = client.post("/api/v1/queries", json=big)
    _assert_refused(resp, {413}, {"payload_too_large"})
    resp = client.post("/api/v1/catalogues", data=b"{not json", content_type="application/json")
    assert 400 <= resp.status_code < 500
    resp = client.post("/api/v1/catalogues", data=b"[1, 2, 3]", content_type="application/json")
    assert 400 <= resp.status_code < 500
    deep = ("[" * 50_000 + "]" * 50_000).encode()
    resp = client.post("/api/v1/catalogues", data=deep, content_type="application/json")
    assert 400 <= resp.status_code < 500
    assert _snapshot(settings) == before
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("field,value", [("k", "0"), ("k", "-1"), ("k", "10000000000"), ("k", "abc"),
                                         ("k", "1e3"), ("routing", "teleport"), ("metric", "manhattan"),
                                         ("threshold", "2"), ("threshold", "nan"), ("catalogue", "")])
def test_bad_query_parameters(small: tuple[Any, Settings, int], field: str, value: str) -> None:
    client, settings, cat = small
    before = _snapshot(settings)
    form = {"catalogue": str(cat), "file": (io.BytesIO(_img()), "q.jpg"), field: value}
    resp = client.post("/api/v1/queries", data=form, content_type="multipart/form-data")
    assert resp.status_code in (400, 404, 422), resp.get_json()
    assert resp.get_json()["error"]["code"] in ("validation_error", "invalid_input", "not_found")
    assert _snapshot(settings) == before


TEXT = st.one_of(st.text(max_size=30), st.integers(-10**12, 10**12).map(str),
                 st.floats(allow_nan=True, allow_infinity=True).map(str),
                 st.sampled_from(["cosine", "euclidean", "svm", "svm-fallback", "label", "none", "demo", ""]))


@hsettings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(["catalogue", "k", "metric", "routing", "category", "threshold",
                                               "duplicate_threshold", "item_id"]), TEXT, max_size=8))
def test_query_parameters_never_give_a_5xx(small: tuple[Any, Settings, int], params: dict[str, str]) -> None:
    client, _, _ = small
    form: dict[str, Any] = {k: v for k, v in params.items() if "\x00" not in v}
    form["file"] = (io.BytesIO(_img("JPEG", (32, 32))), "q.jpg")
    resp = client.post("/api/v1/queries", data=form, content_type="multipart/form-data")
    assert resp.status_code < 500, (params, resp.get_json())
    assert resp.status_code in (202, 400, 404, 409, 413, 422), resp.get_json()
    resp = client.get("/api/v1/jobs", query_string={k: v for k, v in form.items() if k != "file"})
    assert resp.status_code < 500
