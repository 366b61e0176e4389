"""A small perceptual hash (pHash) with numpy and Pillow, and its Hamming distance.

The image is reduced to 32 x 32 grey pixels, transformed with a 2-D DCT-II, and the 8 x 8
lowest frequencies give 64 bits: bit ``(v, u)`` is set when that coefficient is positive.
(The classic pHash compares with the coefficients' median; comparing with zero is as robust
for the AC terms, which are centred on zero, and makes a horizontal flip predictable:
mirroring the image negates every coefficient of odd horizontal frequency ``u`` and leaves the
others alone, so ``hash(flip(img)) == hash(img) ^ FLIP_MASK`` up to a bit or two that the
resampling's rounding flips.) :func:`hamming` therefore
takes the smaller of the distances to the hash and to its mirror: a mirrored copy of a photo
is as close as the photo itself. The DC bit (overall brightness, always positive) is kept so
that a hash is 64 bits, written as 16 hex digits.

No library is added for this: about thirty lines, the exact behaviour documented and tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from PIL import Image

HASH_SIZE = 8  # 8 x 8 = 64 bits
SAMPLE_SIZE = 32  # the image is reduced to 32 x 32 before the DCT
HEX_DIGITS = HASH_SIZE * HASH_SIZE // 4


@lru_cache(maxsize=1)
def _dct_matrix() -> npt.NDArray[np.float64]:
    """The orthonormal DCT-II matrix ``C`` (``C @ x`` transforms a column vector)."""
    n = SAMPLE_SIZE
    k = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * m + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


def _flip_mask() -> int:
    mask = 0
    for v in range(HASH_SIZE):
        for u in range(HASH_SIZE):
            if u % 2 == 1:
                mask |= 1 << (HASH_SIZE * HASH_SIZE - 1 - (v * HASH_SIZE + u))
    return mask


FLIP_MASK = _flip_mask()


def grey_pixels(img: Image.Image) -> npt.NDArray[np.float64]:
    """The image as ``SAMPLE_SIZE x SAMPLE_SIZE`` grey levels (0..255)."""
    small = img.convert("L").resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64)


def phash_bits(pixels: npt.NDArray[np.float64]) -> int:
    """The 64-bit hash of ``SAMPLE_SIZE x SAMPLE_SIZE`` grey pixels."""
    c = _dct_matrix()
    coeffs = c @ pixels @ c.T  # rows: vertical frequency v; columns: horizontal frequency u
    low = coeffs[:HASH_SIZE, :HASH_SIZE].reshape(-1) > 0
    value = 0
    for bit in low:
        value = (value << 1) | int(bit)
    return value


def phash(img: Image.Image) -> str:
    """The image's perceptual hash as 16 hex digits."""
    return f"{phash_bits(grey_pixels(img)):0{HEX_DIGITS}x}"


def phash_file(path: str, draft: bool = True) -> str:
    """The hash of an image file, decoded cheaply (JPEG: at 1/8 scale where possible).

    Raises :class:`~shared.errors.BadImage` when the file cannot be decoded safely.
    """
    from shared.imaging import load_image

    img = load_image(path, draft_size=(SAMPLE_SIZE * 2, SAMPLE_SIZE * 2) if draft else None)
    with img:
        return phash(img)


def parse(value: str | None) -> int | None:
    """A stored hash (hex) as an int; None when missing or malformed."""
    if not value:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def hamming(a: int, b: int, *, flip_invariant: bool = True) -> int:
    """Bits that differ between two hashes (with ``flip_invariant``: or between ``a`` and the
    mirror image's hash of ``b``, whichever is fewer)."""
    d = (a ^ b).bit_count()
    if flip_invariant:
        d = min(d, (a ^ b ^ FLIP_MASK).bit_count())
    return d


def hamming_many(
    a: Sequence[int | None], b: Sequence[int | None], *, flip_invariant: bool = True
) -> npt.NDArray[np.int16]:
    """Element-wise :func:`hamming`; ``-1`` where either hash is missing."""
    out = np.full(len(a), -1, dtype=np.int16)
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        if x is not None and y is not None:
            out[k] = hamming(x, y, flip_invariant=flip_invariant)
    return out
