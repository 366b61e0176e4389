"""Duplicate groups: transitive closure of pairs, and the item to keep.

Groups are the connected components of the pair graph (scipy's union-find-like
``connected_components`` over a sparse matrix: linear in pairs, in C).

Pure functions over arrays and plain records; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.errors import InvalidInput

IntArray = npt.NDArray[np.int64]

KEEP_RULES = ("oldest", "largest", "most_complete")


def components(n: int, i: IntArray, j: IntArray, *, min_size: int = 2) -> list[IntArray]:
    """The connected components of the graph on ``0..n-1`` with edges ``(i[k], j[k])``.

    Each component is a sorted array of nodes; components of fewer than ``min_size`` nodes are
    left out; the list is ordered by size (largest first), then by smallest node. The same
    edges in any order give the same answer.
    """
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    if len(i) != len(j):
        raise InvalidInput("edge endpoint arrays differ in length")
    if n == 0:
        return []
    if len(i) and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise InvalidInput("an edge names a node outside 0..n-1")
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    groups = [g for g in np.split(order, cuts) if len(g) >= min_size]
    groups = [np.sort(g) for g in groups]
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return groups


def equal_value_edges(values: Sequence[Any]) -> tuple[IntArray, IntArray]:
    """Edges joining positions whose value is equal (and not None): a star per value."""
    first: dict[Any, int] = {}
    ei: list[int] = []
    ej: list[int] = []
    for pos, value in enumerate(values):
        if value is None:
            continue
        anchor = first.setdefault(value, pos)
        if anchor != pos:
            ei.append(anchor)
            ej.append(pos)
    return np.asarray(ei, dtype=np.int64), np.asarray(ej, dtype=np.int64)


@dataclass(frozen=True)
class ItemFacts:
    """What the keep rule looks at."""

    item_id: int
    first_seen_at: datetime | None = None
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] | None = None
    category: str | None = None


def completeness(item: ItemFacts) -> int:
    """How complete an item's record is: non-empty metadata fields, plus its category."""
    filled = sum(1 for v in (item.meta or {}).values() if v not in (None, "", [], {}))
    return filled + (1 if item.category else 0)


def _pixels(item: ItemFacts) -> int:
    return int(item.width or 0) * int(item.height or 0)


def _age_key(item: ItemFacts) -> tuple[float, int]:
    ts = item.first_seen_at.timestamp() if item.first_seen_at is not None else float("inf")
    return ts, item.item_id


def suggest_keep(items: Sequence[ItemFacts], rule: str = "oldest") -> int:
    """The item id to keep in a group by ``rule``; ties go to the oldest, then the lowest id.

    ``oldest``: first seen earliest. ``largest``: the most pixels. ``most_complete``: the most
    filled metadata fields (the category counts as one), then the most pixels.
    """
    if not items:
        raise InvalidInput("a group has no items")
    if rule == "oldest":
        return min(items, key=_age_key).item_id
    if rule == "largest":
        return min(items, key=lambda it: (-_pixels(it), *_age_key(it))).item_id
    if rule == "most_complete":
        return min(items, key=lambda it: (-completeness(it), -_pixels(it), *_age_key(it))).item_id
    raise InvalidInput(f"keep rule must be one of {', '.join(KEEP_RULES)}, not {rule!r}")
