"""Near-duplicate pairs by cosine similarity, computed blockwise.

The similarity matrix of ``n`` items is never held whole: rows are taken ``block_rows`` at a
time and columns ``block_cols`` at a time, one ``block_rows x block_cols`` float32 tile (64 MB
at the defaults) is filled by one matrix product into a reused buffer, scaled by the rows' and
columns' inverse norms (no normalised copy of the catalogue is made), and only the pairs at or
above the threshold are kept. For a whole shard only the upper triangle is computed
(``i < j``); with ``query_rows`` only those rows are compared with every column (new items
against the rest) and each pair is still reported once.

Pure numpy, no I/O: the adapters load vectors, call :func:`near_duplicate_pairs`, and store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.errors import InvalidInput

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

BLOCK_ROWS = 2048
BLOCK_COLS = 8192
# Pairs kept at most (12 bytes each): a threshold so low that it keeps more is a mistake.
MAX_PAIRS = 20_000_000

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Pairs:
    """Pairs ``(i[k], j[k])`` of row indices with ``i < j`` and their cosine ``sim[k]``."""

    i: IntArray
    j: IntArray
    sim: FloatArray

    def __len__(self) -> int:
        return int(len(self.i))

    @staticmethod
    def empty() -> Pairs:
        return Pairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))

    def select(self, keep: BoolArray) -> Pairs:
        return Pairs(self.i[keep], self.j[keep], self.sim[keep])

    def sorted(self) -> Pairs:
        """The same pairs ordered by (i, j): a canonical order for comparisons and storage."""
        order = np.lexsort((self.j, self.i))
        return Pairs(self.i[order], self.j[order], self.sim[order])


def inverse_norms(vectors: FloatArray) -> FloatArray:
    """``1 / ||row||`` per row, 0 for an all-zero row (which then matches nothing)."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
    out = np.zeros(len(vectors), dtype=np.float32)
    nonzero = norms > 0
    out[nonzero] = (1.0 / norms[nonzero]).astype(np.float32)
    return out


def check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not np.isfinite(value) or not 0.0 < value <= 1.0:
        raise InvalidInput(f"a cosine threshold must be in (0, 1], not {threshold!r}")
    return value


def near_duplicate_pairs(
    vectors: npt.NDArray[np.floating],
    threshold: float,
    *,
    query_rows: IntArray | None = None,
    block_rows: int = BLOCK_ROWS,
    block_cols: int = BLOCK_COLS,
    max_pairs: int = MAX_PAIRS,
    progress: Progress | None = None,
) -> Pairs:
    """Every pair of rows whose cosine similarity is ``>= threshold``.

    ``vectors`` is ``(n, d)``; nothing is copied when it is already C-contiguous float32.
    ``query_rows`` (sorted or not, unique) restricts the search to pairs with at least one
    of those rows in them. Returns pairs with ``i < j``, ordered by ``(i, j)``.
    ``progress(done, total)`` is called after each block of rows. More than ``max_pairs``
    pairs raises :class:`InvalidInput` (the threshold is too low to mean "duplicate").
    """
    t = check_threshold(threshold)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidInput(f"vectors must be (n, d), got shape {x.shape}")
    if block_rows < 1 or block_cols < 1:
        raise InvalidInput("block sizes must be positive")
    n = len(x)
    if query_rows is None:
        rows = None
        total = n
    else:
        rows = np.unique(np.asarray(query_rows, dtype=np.int64))
        if len(rows) and (rows[0] < 0 or rows[-1] >= n):
            raise InvalidInput("query_rows must be row indices of vectors")
        total = len(rows)
    if n < 2 or total == 0:
        if progress:
            progress(total, total)
        return Pairs.empty()
    inv = inverse_norms(x)
    is_query = np.zeros(n, dtype=bool)
    if rows is not None:
        is_query[rows] = True
    found_i: list[IntArray] = []
    found_j: list[IntArray] = []
    found_s: list[FloatArray] = []
    kept = 0
    buffer = np.empty((min(block_rows, n), min(block_cols, n)), dtype=np.float32)
    done = 0
    for r0 in range(0, total, block_rows):
        r1 = min(r0 + block_rows, total)
        if rows is None:
            row_ids = np.arange(r0, r1, dtype=np.int64)
            a = x[r0:r1]
            c_start = r0  # upper triangle: columns from the block's first row on
        else:
            row_ids = rows[r0:r1]
            a = x[row_ids]
            c_start = 0
        inv_a = inv[row_ids][:, None]
        for c0 in range(c_start, n, block_cols):
            c1 = min(c0 + block_cols, n)
            tile = buffer[: len(row_ids), : c1 - c0]
            np.matmul(a, x[c0:c1].T, out=tile)
            tile *= inv_a
            tile *= inv[None, c0:c1]
            ti, tj = np.nonzero(tile >= t)
            if len(ti) == 0:
                continue
            gi = row_ids[ti]
            gj = tj.astype(np.int64) + c0
            sims = tile[ti, tj]
            if rows is None:
                keep = gj > gi
            else:
                # A pair of two query rows is met twice (once from each side): keep i < j.
                # A query row against a non-query row is met once: keep it, oriented i < j.
                keep = (gj != gi) & (~is_query[gj] | (gj > gi))
            gi, gj, sims = gi[keep], gj[keep], sims[keep]
            if len(gi) == 0:
                continue
            lo, hi = np.minimum(gi, gj), np.maximum(gi, gj)
            found_i.append(lo)
            found_j.append(hi)
            found_s.append(sims.astype(np.float32, copy=True))
            kept += len(lo)
            if kept > max_pairs:
                raise InvalidInput(
                    f"more than {max_pairs} pairs have cosine >= {t}: the threshold is too low "
                    "to mean 'duplicate'; raise it (see `fir dedup calibrate`)"
                )
        done = r1
        if progress:
            progress(done, total)
    if not found_i:
        return Pairs.empty()
    return Pairs(np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)).sorted()


def brute_force_pairs(vectors: npt.NDArray[np.floating], threshold: float) -> Pairs:
    """The reference: the whole similarity matrix at once (small inputs and tests only)."""
    t = check_threshold(threshold)
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    norms[norms == 0] = np.inf
    unit = x / norms[:, None]
    sims = unit @ unit.T
    i, j = np.nonzero(np.triu(sims >= t, k=1))
    return Pairs(i.astype(np.int64), j.astype(np.int64), sims[i, j].astype(np.float32)).sorted()


def cosine_to(vectors: FloatArray, rows: IntArray, anchor: int) -> FloatArray:
    """Cosine similarity of ``vectors[rows]`` to ``vectors[anchor]`` (evidence for a group)."""
    inv = inverse_norms(vectors[np.append(rows, anchor)])
    sims = (vectors[rows] @ vectors[anchor]) * inv[:-1] * inv[-1]
    return np.clip(sims, -1.0, 1.0).astype(np.float32)
