"""Safe image decoding: every image FIR reads goes through :func:`load_image`.

- the format is recognised by content, never by file name, and must be in ``ALLOWED_FORMATS``;
- the pixel count is checked from the header *before* pixels are decoded (decompression bombs);
- truncated or corrupt data raises :class:`~shared.errors.BadImage` naming the file;
- EXIF orientation is applied, and the result is always 8-bit RGB.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import BadImage, ImageTooLarge

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
DEFAULT_MAX_PIXELS = 40_000_000
MAX_ASPECT_RATIO = 20.0

ImageSource = str | Path | bytes


def _open(source: ImageSource) -> tuple[Image.Image, str]:
    if isinstance(source, bytes):
        name = "<upload>"
        if not source:
            raise BadImage(name, "empty file (0 bytes)")
        fp: io.BytesIO | Path = io.BytesIO(source)
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise BadImage(name, "file not found")
        if path.stat().st_size == 0:
            raise BadImage(name, "empty file (0 bytes)")
        fp = path
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns or raises; ours is explicit and comes first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(name, f"too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise BadImage(name, "not a recognised image format") from exc
    except OSError as exc:
        raise BadImage(name, f"cannot read image: {exc}") from exc
    return img, name


def probe_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int]:
    """Check format and size from the header only; returns (format, width, height)."""
    img, name = _open(source)
    with img:
        return _check_header(img, name, max_pixels)


def open_checked(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, str]:
    """The image opened (header read, no pixels decoded) after the checks :func:`probe_image`
    makes, and its name for messages; the caller closes it."""
    img, name = _open(source)
    try:
        _check_header(img, name, max_pixels)
    except BadImage:
        img.close()
        raise
    return img, name


def _check_header(img: Image.Image, name: str, max_pixels: int) -> tuple[str, int, int]:
    fmt = img.format or "unknown"
    if fmt not in ALLOWED_FORMATS:
        raise BadImage(name, f"format {fmt} is not allowed (allowed: {', '.join(sorted(ALLOWED_FORMATS))})")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise BadImage(name, f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(name, f"{width}x{height} = {width * height} pixels is over the cap of {max_pixels}")
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT_RATIO:
        raise BadImage(name, f"extreme aspect ratio {width}x{height} (over {MAX_ASPECT_RATIO:g}:1)")
    return fmt, width, height


def validate_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Everything :func:`load_image` refuses, refused, without keeping the pixels; returns the
    format. JPEG data is decoded at 1/8 scale (every byte is still read, so truncated or corrupt
    data fails as it would at full size), several times faster for large photos."""
    img, name = _open(source)
    with img:
        fmt = _check_header(img, name, max_pixels)[0]
        _decode(img, name, draft_size=(1, 1))
        return fmt


def _decode(img: Image.Image, name: str, draft_size: tuple[int, int] | None) -> None:
    if getattr(img, "is_animated", False) and getattr(img, "n_frames", 1) > 1:
        raise BadImage(name, "animated images are not supported")
    if draft_size is not None and img.format == "JPEG":
        img.draft("RGB", draft_size)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(name, f"corrupt or truncated image data: {exc}") from exc


def load_image(
    source: ImageSource,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode ``source`` (a path or bytes) into an 8-bit RGB image, safely.

    ``draft_size`` lets JPEG decoding downscale by a power of two on the fly when the image
    will be resized to at least that size anyway (a large speed-up for big photos).
    """
    img, name = _open(source)
    try:
        _check_header(img, name, max_pixels)
        _decode(img, name, draft_size)
        img = ImageOps.exif_transpose(img) or img
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # 16-bit / float greyscale: scale to 8 bits instead of clipping.
            img = img.point(lambda v: v / 256).convert("L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.split()[-1])
            return background
        return img.convert("RGB")
    except BadImage:
        img.close()
        raise
