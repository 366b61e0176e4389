"""Batched feature extraction with a loaded model: eval mode, inference mode, the right
device and precision, decoding overlapped with compute."""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from shared.errors import BadImage, InvalidInput
from shared.imaging import DEFAULT_MAX_PIXELS, load_image
from shared.vision.backbone import FeatureNet
from shared.vision.device_decode import (
    Jpeg,
    blank_jpeg,
    decode_jpegs,
    read_device_jpeg,
    resolve_jpeg_decode,
    shrink_like_draft,
)
from shared.vision.preprocess import eval_geometry, make_transform, normalise_batch, resize_size

# torch raises torch.OutOfMemoryError (torch.cuda.OutOfMemoryError before 2.5); the CPU allocator
# raises MemoryError or a RuntimeError that says so.
OUT_OF_MEMORY: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError)

log = logging.getLogger(__name__)


def pick_device(name: str = "auto", setting: str = "FIR_DEVICE") -> torch.device:
    """The torch device for ``name`` (``auto``: CUDA when there is one); a CUDA device asked for
    on a machine without one is refused, naming the ``setting`` it came from."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"{setting}={name} asks for a CUDA device but none is available")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: fp16 autocast on CUDA; fp32 on CPU.

    bf16 autocast is about 2x faster on a CPU with AVX512-BF16 but not faithful: on real
    photos with ImageNet EfficientNet-Lite0 features its minimum cosine to fp32 was 0.9957 and
    only 65% of test queries kept their fp32 top-10 (ResNet50, random weights: 74%), against
    the bar of cosine >= 0.999 and the same top-10 (bench/bench_precision.py, bench/RESULTS.md).
    It stays opt-in (``FIR_PRECISION=bf16``); channels_last in fp32 is faithful but measured
    within noise of NCHW, so it is not turned on either.
    """
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise InvalidInput(f"unknown precision {precision!r} (auto, fp32, bf16, fp16)")
    if precision == "fp16" and device.type != "cuda":
        raise InvalidInput("fp16 runs on CUDA only; use bf16 or fp32 on the CPU")
    return precision


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class EmbedResult:
    """Features of the images that decoded; ``errors`` maps input position -> reason."""

    vectors: npt.NDArray[np.float32]  # [n_ok, d]
    ok: npt.NDArray[np.int64]  # input positions of the rows of ``vectors``
    errors: dict[int, str] = field(default_factory=dict)


def decode_for_model(path: Path, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image file decoded for a model of ``image_size``: JPEG is drafted (downscaled by a
    power of two while decoding) no further than the resize step needs. Indexing and queries
    both decode this way, so a catalogue photo sent as a query gets the vector it was indexed
    with."""
    side = resize_size(image_size)
    return load_image(path, max_pixels=max_pixels, draft_size=(side, side))


@dataclass
class _Item:
    """One file from a loader process: a crop decoded there, or a JPEG for the device decoder,
    or the reason it failed."""

    index: int
    crop: torch.Tensor | None = None
    jpeg: Jpeg | None = None
    error: str = ""


@dataclass
class _Batch:
    """A loader batch: the crops decoded in the loader (stacked, so one shared-memory tensor
    crosses from the loader process), the JPEGs left for the device, and the failures."""

    crops: torch.Tensor
    crop_idx: list[int]
    jpegs: list[Jpeg]
    jpeg_idx: list[int]
    errors: dict[int, str]

    def pin_memory(self) -> _Batch:  # called by the DataLoader when it pins batches
        self.crops = self.crops.pin_memory()
        return self


class _Collate:
    def __init__(self, shape: tuple[int, int, int], dtype: torch.dtype) -> None:
        self.shape, self.dtype = shape, dtype

    def __call__(self, items: list[_Item]) -> _Batch:
        crops = [(it.index, it.crop) for it in items if it.crop is not None]
        jpegs = [(it.index, it.jpeg) for it in items if it.jpeg is not None]
        stacked = (torch.stack([c for _, c in crops]) if crops
                   else torch.zeros((0, *self.shape), dtype=self.dtype))
        return _Batch(stacked, [i for i, _ in crops], [j for _, j in jpegs], [i for i, _ in jpegs],
                      {it.index: it.error for it in items if it.error})


class _PathDataset(Dataset[_Item]):
    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor],
                 image_size: int, max_pixels: int, device_jpegs: bool) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.device_jpegs = device_jpegs  # hand JPEGs over undecoded, for the device

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> _Item:
        try:
            if self.device_jpegs:
                jpeg = read_device_jpeg(self.paths[i], self.max_pixels)
                if jpeg is not None:
                    return _Item(i, jpeg=jpeg)
            img = decode_for_model(self.paths[i], self.image_size, self.max_pixels)
            return _Item(i, crop=self.transform(img))
        except BadImage as exc:
            return _Item(i, error=exc.reason)


class Embedder:
    """Holds a :class:`FeatureNet` on its device and turns images into features."""

    def __init__(
        self,
        net: FeatureNet,
        backbone: str,
        image_size: int,
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        normalise_on_device: bool | None = None,
        jpeg_decode: str = "cpu",
    ) -> None:
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = (self.device.type == "cuda" or self.precision == "bf16") if channels_last is None else channels_last
        self.backbone = backbone
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.transform = make_transform(backbone, image_size)
        # JPEGs decoded on the model's device (opt-in; nvJPEG on a GPU; shared/vision/device_decode.py)
        self.device_jpegs = resolve_jpeg_decode(jpeg_decode, self.device)
        # Loader processes hand over uint8 crops, normalised on the device: on a GPU a quarter
        # of the bytes to collate, pin and copy (default there); on a CPU nothing is gained.
        # Decoding on the device makes uint8 crops there, so the loader's must match.
        self.normalise_on_device = self.device_jpegs or (
            self.device.type == "cuda" if normalise_on_device is None else normalise_on_device)
        self.crop_transform = make_transform(backbone, image_size, normalise=False)
        self.loader_transform = self.crop_transform if self.normalise_on_device else self.transform
        self.geometry = eval_geometry(image_size)
        net = net.eval().to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self._compiled: Any = None  # torch.compile'd features, built on first compiled use
        self._compile_failed = False

    def can_compile(self) -> bool:
        """Bulk embedding may use a compiled forward: on the CPU in fp32, the one mode measured
        faithful and faster (bench/RESULTS.md, section 3), and only while compiling works."""
        return self.device.type == "cpu" and self.precision == "fp32" and not self._compile_failed

    @torch.inference_mode()
    def _embed_compiled(self, batch: torch.Tensor, size: int) -> npt.NDArray[np.float32]:
        """``batch`` through the compiled forward, padded with zeros to exactly ``size`` images
        (one input shape: it compiles once). Falls back to the eager forward for good if
        compiling fails (no C++ compiler, an unsupported operator)."""
        if batch.dtype == torch.uint8:
            batch = normalise_batch(batch, self.backbone)
        n = batch.shape[0]
        if n > size or not self.can_compile():
            return self.embed_tensor(batch)
        x = batch if n == size else torch.cat([batch, batch.new_zeros((size - n, *batch.shape[1:]))])
        x = x.contiguous(memory_format=torch.channels_last)
        try:
            if self._compiled is None:
                # channels_last (measured faithful and no slower in fp32): eager calls follow
                self.net = self.net.to(memory_format=torch.channels_last)
                self.channels_last = True
                self._compiled = torch.compile(self.net.features, dynamic=False)
            feats = self._compiled(x)
        except Exception as exc:  # noqa: BLE001 - any compile failure: eager is always correct
            log.warning("torch.compile failed (%s: %s): embedding without it", type(exc).__name__, exc)
            self._compile_failed = True
            self._compiled = None
            return self.embed_tensor(batch)
        return feats[:n].float().numpy().astype(np.float32, copy=False)

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    def describe(self) -> str:
        extras = [self.precision] + (["channels_last"] if self.channels_last else [])
        extras += [f"JPEGs decoded on {self.device}"] if self.device_jpegs else []
        return f"{self.backbone} on {self.device} ({', '.join(extras)})"

    def embed_tensor(self, batch: torch.Tensor) -> npt.NDArray[np.float32]:
        """Features of a batch; a batch too big for memory is split in halves and retried
        (down to one image, which re-raises), never crash-looped."""
        try:
            return self._embed_once(batch)
        except OUT_OF_MEMORY as exc:
            if batch.shape[0] <= 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = batch.shape[0] // 2
            log.warning("out of memory embedding %d images (%s): splitting into %d + %d",
                        batch.shape[0], type(exc).__name__, half, batch.shape[0] - half)
            return np.concatenate([self.embed_tensor(batch[:half]), self.embed_tensor(batch[half:])])

    @torch.inference_mode()
    def _embed_once(self, batch: torch.Tensor) -> npt.NDArray[np.float32]:
        x = batch.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:  # a crop from loader_transform: normalised here
            x = normalise_batch(x, self.backbone)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.precision):
            feats = self.net.features(x)
        return feats.float().cpu().numpy().astype(np.float32, copy=False)

    def decode(self, path: Path) -> Image.Image:
        """``path`` decoded on the CPU as :meth:`iter_paths` decodes it there (:func:`decode_for_model`)."""
        return decode_for_model(path, self.image_size, self.max_pixels)

    def _device_crops(self, jpegs: Sequence[Jpeg]) -> list[torch.Tensor | None]:
        """JPEGs decoded, resized and cropped on the device (uint8 ``[3, s, s]``); ``None`` where
        the device decoder failed."""
        side = resize_size(self.image_size)
        images = [None if img is None else shrink_like_draft(img, side) for img in decode_jpegs(jpegs, self.device)]
        # images of one size are resized and cropped as one batch: a catalogue's photos often
        # share a few sizes, and one call per image cost more than the decoding (bench_decode).
        # A single image is a batch of one: the same memory layout, so the same pixels.
        same_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            if img is not None:
                same_size[tuple(img.shape)].append(i)
        out: list[torch.Tensor | None] = [None] * len(images)
        for members in same_size.values():
            crops = self.geometry(torch.stack([images[i] for i in members]))  # type: ignore[misc]
            for i, crop in zip(members, crops, strict=True):
                out[i] = crop
        return out

    def prepare(self, path: Path) -> torch.Tensor:
        """One image file as the uint8 crop :meth:`iter_paths` would embed for it, decoded the
        same way (on the device where it would be): a catalogue photo sent as a query gets
        the vector it was indexed with. Raises :class:`BadImage`."""
        if self.device_jpegs:
            jpeg = read_device_jpeg(path, self.max_pixels)
            if jpeg is not None:
                crop = self._device_crops([jpeg])[0]
                if crop is not None:
                    return crop
        return self.crop_transform(self.decode(path))

    def embed_crops(self, crops: Sequence[torch.Tensor], batch_size: int = 16) -> npt.NDArray[np.float32]:
        """Features of :meth:`prepare`'s crops."""
        if not crops:
            return np.zeros((0, self.feature_dim), np.float32)
        out = []
        for start in range(0, len(crops), batch_size):
            chunk = [c.to(self.device, non_blocking=True) for c in crops[start : start + batch_size]]
            out.append(self.embed_tensor(torch.stack(chunk)))
        return np.concatenate(out)

    def warm(self) -> None:
        """One forward of a blank image, and one device JPEG decode where JPEGs are decoded on
        the device: the first query would otherwise pay for both set-ups."""
        self.embed_images([Image.new("RGB", (self.image_size, self.image_size))])
        if self.device_jpegs:
            self._device_crops([Jpeg(blank_jpeg(self.image_size), self.image_size ** 2)])

    def _batch_input(self, batch: _Batch, paths: Sequence[Path]) -> tuple[torch.Tensor, list[int], dict[int, str]]:
        """A loader batch as one input tensor on the device, rows in input order: the loader's
        crops, and the JPEGs decoded on the device (a JPEG the device decoder fails on is
        decoded on the CPU here, and reported if that fails too)."""
        errors = dict(batch.errors)
        parts = [batch.crops.to(self.device, non_blocking=True)] if batch.crop_idx else []
        idx = list(batch.crop_idx)
        if batch.jpegs:
            decoded = self._device_crops(batch.jpegs)
            for i, crop in zip(batch.jpeg_idx, decoded, strict=True):
                if crop is None:
                    try:
                        crop = self.crop_transform(self.decode(paths[i]))
                    except BadImage as exc:
                        errors[i] = exc.reason
                        continue
                parts.append(crop.to(self.device)[None])
                idx.append(i)
        if not parts:
            return torch.zeros(0), [], errors
        x = torch.cat(parts) if len(parts) > 1 else parts[0]
        order = sorted(range(len(idx)), key=idx.__getitem__)
        if order != list(range(len(idx))):
            x = x[torch.as_tensor(order, device=x.device)]
        return x, [idx[j] for j in order], errors

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 16) -> npt.NDArray[np.float32]:
        if not images:
            return np.zeros((0, self.feature_dim), np.float32)
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out.append(self.embed_tensor(torch.stack([self.transform(im) for im in chunk])))
        return np.concatenate(out)

    def iter_paths(
        self,
        paths: Sequence[Path],
        batch_size: int = 16,
        workers: int = 1,
        progress: bool = False,
        desc: str = "embedding",
        compiled: bool = False,
    ) -> Iterator[EmbedResult]:
        """Embed image files batch by batch, in input order: one :class:`EmbedResult` per
        batch, its ``ok`` and ``errors`` keyed by position in ``paths``.

        One loader over all the paths: ``workers`` processes decode and preprocess ahead of
        the model (``prefetch_factor`` batches each), so decoding overlaps with compute; on
        CUDA the batches come in pinned memory and are copied without blocking. ``compiled``
        runs the batches through a ``torch.compile``'d forward where :meth:`can_compile`
        allows (every batch padded to ``batch_size``), else the eager one.
        """
        if not paths:
            return
        loader = DataLoader(
            _PathDataset(paths, self.loader_transform, self.image_size, self.max_pixels, self.device_jpegs),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_Collate((3, self.image_size, self.image_size),
                                torch.uint8 if self.normalise_on_device else torch.float32),
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )
        bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
        try:
            for batch in loader:
                x, ok, errors = self._batch_input(batch, paths)
                for i, reason in errors.items():
                    log.warning("skipped %s: %s", paths[i], reason)
                if ok:
                    feats = self._embed_compiled(x, batch_size) if compiled else self.embed_tensor(x)
                else:
                    feats = np.zeros((0, self.feature_dim), np.float32)
                bar.update(len(ok) + len(errors))
                yield EmbedResult(feats, np.asarray(ok, dtype=np.int64), errors)
        finally:
            bar.close()

    def embed_paths(
        self,
        paths: Sequence[Path],
        batch_size: int = 16,
        workers: int = 1,
        progress: bool = True,
        desc: str = "embedding",
    ) -> EmbedResult:
        """Embed image files; decoding runs in ``workers`` loader processes beside the model."""
        if not paths:
            return EmbedResult(np.zeros((0, self.feature_dim), np.float32), np.zeros(0, np.int64))
        parts = list(self.iter_paths(paths, batch_size, workers, progress, desc))
        return merge_results(parts, self.feature_dim)


def merge_results(parts: Sequence[EmbedResult], dim: int) -> EmbedResult:
    """Batches' results as one (rows in the batches' order)."""
    vectors = [p.vectors for p in parts if len(p.vectors)]
    errors: dict[int, str] = {}
    for p in parts:
        errors.update(p.errors)
    mat = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    ok = np.concatenate([p.ok for p in parts]) if parts else np.zeros(0, np.int64)
    return EmbedResult(mat, ok.astype(np.int64, copy=False), errors)
