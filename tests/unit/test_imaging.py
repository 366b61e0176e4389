from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.errors import BadImage, ImageTooLarge
from shared.imaging import load_image, probe_image, validate_image


def _jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_rgb_jpeg_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (40, 30)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_modes_become_rgb(mode: str) -> None:
    img = Image.new(mode, (20, 20))
    buf = io.BytesIO()
    img.save(buf, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    out = load_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (20, 20)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    arr = np.full((8, 8), 40000, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    out = np.asarray(load_image(buf.getvalue()))
    assert 150 <= out[0, 0, 0] <= 160  # 40000 / 256 = 156


def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _jpeg(img, exif=exif)
    assert load_image(data).size == (20, 60)


def test_zero_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(BadImage, match="empty.jpg: empty file"):
        load_image(path)


def test_not_an_image_with_image_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is text, not a JPEG")
    with pytest.raises(BadImage, match="notes.jpg: not a recognised image format"):
        load_image(path)


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    data = _jpeg(Image.effect_noise((64, 64), 40).convert("RGB"))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="cut.jpg"):
        load_image(path)


def test_decompression_bomb_refused_before_decoding() -> None:
    # A 1-bit PNG of 10000 x 10000 pixels is tiny on disk but 100 M pixels decoded.
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 200_000
    with pytest.raises(ImageTooLarge, match="over the cap"):
        load_image(buf.getvalue(), max_pixels=40_000_000)


def test_extreme_aspect_ratio() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (2000, 10)).save(buf, "PNG")
    with pytest.raises(BadImage, match="aspect ratio"):
        load_image(buf.getvalue())


def test_animated_gif_refused() -> None:
    frames = [Image.new("RGB", (16, 16), (80 * i, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(BadImage, match="animated"):
        load_image(buf.getvalue())


def test_disallowed_format() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PPM")
    with pytest.raises(BadImage, match="not allowed"):
        load_image(buf.getvalue())


def test_probe_reads_header_only() -> None:
    assert probe_image(_jpeg(Image.new("RGB", (30, 20)))) == ("JPEG", 30, 20)


def test_validate_image_refuses_what_load_image_refuses() -> None:
    """The upload check decodes JPEG at 1/8 scale: it must still see data cut short anywhere."""
    big = Image.effect_noise((800, 600), 60).convert("RGB")
    data = _jpeg(big, quality=90)
    assert validate_image(data) == "JPEG"
    for cut in (len(data) // 4, len(data) // 2, len(data) - 200):
        with pytest.raises(BadImage, match="truncated"):
            validate_image(data[:cut])
        with pytest.raises(BadImage):
            load_image(data[:cut])
    with pytest.raises(BadImage, match="not a recognised"):
        validate_image(b"GIF89a but not really")
    with pytest.raises(ImageTooLarge):
        validate_image(data, max_pixels=1000)
    png = io.BytesIO()
    big.save(png, "PNG")
    assert validate_image(png.getvalue()) == "PNG"
    with pytest.raises(BadImage):
        validate_image(png.getvalue()[: len(png.getvalue()) // 2])
