"""Batched feature extraction with a loaded model: eval mode, inference mode, the right
device and precision, decoding overlapped with compute."""

from __future__ import annotations

import contextlib
import logging
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
from shared.vision.preprocess import make_transform, normalise_batch, resize_size

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


class _PathDataset(Dataset[tuple[torch.Tensor, int, str]]):
    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor],
                 image_size: int, max_pixels: int, blank_dtype: torch.dtype = torch.float32) -> None:
        self.paths = list(paths)
        self.blank_dtype = blank_dtype  # the placeholder for a file that fails to decode
        self.transform = transform
        self.image_size = image_size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            img = decode_for_model(self.paths[i], self.image_size, self.max_pixels)
            return self.transform(img), i, ""
        except BadImage as exc:
            return torch.zeros(3, self.image_size, self.image_size, dtype=self.blank_dtype), i, exc.reason


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
    ) -> None:
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = (self.device.type == "cuda" or self.precision == "bf16") if channels_last is None else channels_last
        self.backbone = backbone
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.transform = make_transform(backbone, image_size)
        # Loader processes hand over uint8 crops, normalised on the device: on a GPU a quarter
        # of the bytes to collate, pin and copy (default there); on a CPU nothing is gained.
        self.normalise_on_device = self.device.type == "cuda" if normalise_on_device is None else normalise_on_device
        self.loader_transform = (make_transform(backbone, image_size, normalise=False)
                                 if self.normalise_on_device else self.transform)
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
        return f"{self.backbone} on {self.device} ({self.precision}{', channels_last' if self.channels_last else ''})"

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
        """``path`` decoded as :meth:`iter_paths` decodes it (:func:`decode_for_model`)."""
        return decode_for_model(path, self.image_size, self.max_pixels)

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
            _PathDataset(paths, self.loader_transform, self.image_size, self.max_pixels,
                         torch.uint8 if self.normalise_on_device else torch.float32),
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )
        bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
        try:
            for images, idx, errs in _iterate(loader):
                good = [j for j, e in enumerate(errs) if not e]
                errors = {int(idx[j]): e for j, e in enumerate(errs) if e}
                for i, reason in errors.items():
                    log.warning("skipped %s: %s", paths[i], reason)
                if good:
                    batch = images[good] if len(good) < len(errs) else images
                    feats = self._embed_compiled(batch, batch_size) if compiled else self.embed_tensor(batch)
                else:
                    feats = np.zeros((0, self.feature_dim), np.float32)
                bar.update(len(errs))
                yield EmbedResult(feats, np.asarray([int(idx[j]) for j in good], dtype=np.int64), errors)
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


def _iterate(loader: DataLoader[tuple[torch.Tensor, int, str]]) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    for images, idx, errs in loader:
        yield images, idx, list(errs)
