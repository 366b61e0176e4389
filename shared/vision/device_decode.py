"""JPEG decoding on the model's device: nvJPEG on a GPU, through ``torchvision.io.decode_jpeg``
(opt-in: ``FIR_JPEG_DECODE=device``; see :func:`resolve_jpeg_decode` for why it is not the default).

On a GPU worker the CPU cores that decode JPEGs, not the model, bound bulk indexing (bench/RESULTS.md,
section 2b). Here the loader processes only read a JPEG's bytes and check its header; the batch
is decoded on the device, then resized and cropped there with the same operations the CPU path
runs (:func:`shared.vision.preprocess.make_transform`).

What the device decoder does not do goes to the CPU path (Pillow, :func:`shared.imaging.load_image`)
instead, so every file gets the CPU path's checks and an error where it has one:

- anything that is not a JPEG by content, and a JPEG in CMYK or YCCK;
- a JPEG with an EXIF orientation other than "upright" (nvJPEG does not apply it);
- a JPEG whose data does not end with the end-of-image marker (truncated, or with trailing data);
- a JPEG that nvJPEG fails on (progressive or unusual subsampling on some versions).

A header that the CPU path refuses (format, pixel cap, aspect ratio) is refused here the same way,
before any pixel is decoded.

The vectors are close to the CPU path's, not bit-identical: nvJPEG's inverse DCT and colour
conversion differ slightly from libjpeg-turbo's. For a large JPEG the CPU path lets libjpeg
downscale by a power of two while decoding (:func:`shared.vision.embed.decode_for_model`); here
the full-size image is averaged over blocks of the same size (:func:`shrink_like_draft`), which
brings the features from cosine 0.9986 to 0.9993 or more of the CPU path's (torchvision's CPU
decoder, EfficientNet-Lite0). A worker decodes its queries the way it decodes its catalogue, so a
catalogue photo sent as a query finds its own vector either way: set the same decoding on every
worker that embeds for a catalogue.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from shared.errors import BadImage, InvalidInput
from shared.imaging import open_checked

log = logging.getLogger(__name__)

JPEG_DECODE_CHOICES = ("cpu", "device")
_EOI = b"\xff\xd9"
_EXIF_ORIENTATION = 0x0112
# Decoded pixels (RGB, uint8) held at once per device decode call: 128 MP is 384 MiB.
PIXEL_BUDGET = 128_000_000


@dataclass(frozen=True)
class Jpeg:
    """A JPEG file's bytes, checked for the device decoder, and its pixel count."""

    data: bytes
    pixels: int


def read_device_jpeg(path: Path, max_pixels: int) -> Jpeg | None:
    """``path``'s bytes when the device decoder can take the file, else ``None`` (decode it on
    the CPU). Raises :class:`BadImage` for what the CPU path refuses from the header alone."""
    img, name = open_checked(path, max_pixels)
    with img:
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        if img.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
            return None
        pixels = img.size[0] * img.size[1]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImage(name, f"cannot read image: {exc}") from exc
    if not data.endswith(_EOI):
        return None
    return Jpeg(data, pixels)


def _groups(jpegs: Sequence[Jpeg], budget: int) -> Iterator[list[int]]:
    """Positions of ``jpegs`` in runs whose decoded pixels stay within ``budget`` (one image
    alone may be over it)."""
    run: list[int] = []
    held = 0
    for i, j in enumerate(jpegs):
        if run and held + j.pixels > budget:
            yield run
            run, held = [], 0
        run.append(i)
        held += j.pixels
    if run:
        yield run


def _decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # deprecated in torchvision 0.29 in favour of TorchCodec, which FIR does not install
        warnings.simplefilter("ignore", DeprecationWarning)
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return list(out)


def decode_jpegs(jpegs: Sequence[Jpeg], device: torch.device,
                 budget: int = PIXEL_BUDGET) -> list[torch.Tensor | None]:
    """Decode ``jpegs`` on ``device`` into uint8 ``[3, h, w]`` tensors, batch by batch within
    the pixel budget. A batch that fails is retried file by file; a file that still fails
    gives ``None`` (the caller decodes it on the CPU, which reports it if it is bad)."""
    out: list[torch.Tensor | None] = [None] * len(jpegs)
    for run in _groups(jpegs, budget):
        data = [torch.frombuffer(bytearray(jpegs[i].data), dtype=torch.uint8) for i in run]
        try:
            for i, img in zip(run, _decode(data, device), strict=True):
                out[i] = img
        except RuntimeError as exc:
            log.debug("device JPEG decode of %d files failed (%s): one by one", len(run), exc)
            for i, one in zip(run, data, strict=True):
                try:
                    out[i] = _decode([one], device)[0]
                except RuntimeError as exc_one:
                    log.info("device JPEG decoder failed on one file (%s): decoding it on the CPU", exc_one)
    return out


def draft_scale(width: int, height: int, side: int) -> int:
    """The power of two Pillow's ``draft`` downscales a JPEG by while decoding it for a resize
    whose short side is ``side`` (the largest of 8, 4, 2, 1 that keeps both sides >= ``side``)."""
    fits = min(width // side, height // side)
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def shrink_like_draft(img: torch.Tensor, side: int) -> torch.Tensor:
    """A decoded uint8 ``[3, h, w]`` image averaged over the blocks the CPU path's draft decode
    would merge (:func:`draft_scale`): libjpeg's scaled decoding keeps each block's mean, so the
    two paths see nearly the same pixels before the resize."""
    s = draft_scale(img.shape[2], img.shape[1], side)
    if s == 1:
        return img
    pooled = torch.nn.functional.avg_pool2d(img[None].float(), s, ceil_mode=True)[0]
    return pooled.round_().clamp_(0, 255).to(torch.uint8)


def blank_jpeg(size: int) -> bytes:
    """A small uniform JPEG: to check or warm up the device decoder."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def resolve_jpeg_decode(choice: str, device: torch.device) -> bool:
    """Whether to decode JPEGs on ``device``. ``cpu`` (the default): Pillow, in the loader
    processes. ``device``: wherever the model runs (nvJPEG on a GPU; on a CPU, torchvision's
    decoder in the embedding process, for tests); one small JPEG is decoded there first, so a
    torchvision without a working decoder is refused at start-up, not at the first batch.

    Not the default because it is not faithful enough to the Pillow decoding the model was
    trained on: with ImageNet EfficientNet-Lite0 features on real photos, the minimum cosine was
    0.9975 and 5.5 % of photos fell under 0.999 (bench/RESULTS.md, section 2c), against 1.6-3.4x
    the loading throughput on an H200."""
    if choice not in JPEG_DECODE_CHOICES:
        raise InvalidInput(f"unknown JPEG decoding {choice!r} (cpu, device)")
    if choice == "cpu":
        return False
    try:
        _decode([torch.frombuffer(bytearray(blank_jpeg(16)), dtype=torch.uint8)], device)
    except (RuntimeError, ImportError) as exc:
        raise InvalidInput(f"FIR_JPEG_DECODE=device, but JPEGs cannot be decoded on {device}: {exc}") from exc
    return True
