"""Exact and near-duplicate groups of a catalogue, from arrays already in memory.

Exact duplicates share a content hash (sha256), across categories. Near-duplicates are pairs
of items of the same category whose features have cosine similarity at or above that
category's threshold (found blockwise, see :mod:`shared.dedup.pairs`), optionally confirmed
by a perceptual-hash distance. Groups are the connected components of both kinds of edges;
each carries, per member, its evidence against the group's representative, which is the item
the keep rule suggests keeping.

Pure: no database, no files. :mod:`shared.dedup.run` loads, calls :func:`find_duplicates`,
and stores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.dedup.groups import KEEP_RULES, ItemFacts, components, equal_value_edges, suggest_keep
from shared.dedup.pairs import (
    BLOCK_COLS,
    BLOCK_ROWS,
    MAX_PAIRS,
    check_threshold,
    cosine_to,
    near_duplicate_pairs,
)
from shared.dedup.phash import hamming
from shared.errors import InvalidInput

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Cosine similarity from which two items of a category are called near-duplicates, measured
# with `bench/bench_dedup_quality.py` (EfficientNet-Lite0 ImageNet features, clothing photos);
# `fir dedup calibrate` suggests one per category for the model actually in use.
DEFAULT_THRESHOLD = 0.9
# Perceptual-hash bits that may differ for a near pair to count as confirmed (of 64).
DEFAULT_PHASH_MAX_DISTANCE = 16

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DedupConfig:
    threshold: float = DEFAULT_THRESHOLD
    thresholds: Mapping[str, float] = field(default_factory=dict)  # per category
    use_phash: bool = False
    phash_max_distance: int = DEFAULT_PHASH_MAX_DISTANCE
    keep_rule: str = "oldest"
    block_rows: int = BLOCK_ROWS
    block_cols: int = BLOCK_COLS
    max_pairs: int = MAX_PAIRS

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        for cat, t in self.thresholds.items():
            try:
                check_threshold(t)
            except InvalidInput as exc:
                raise InvalidInput(f"category {cat!r}: {exc.message}") from None
        if self.keep_rule not in KEEP_RULES:
            raise InvalidInput(f"keep rule must be one of {', '.join(KEEP_RULES)}, not {self.keep_rule!r}")
        if not 0 <= self.phash_max_distance <= 64:
            raise InvalidInput("phash_max_distance must be from 0 to 64")

    def threshold_for(self, category: str) -> float:
        return float(self.thresholds.get(category, self.threshold))


@dataclass
class DedupInput:
    """A catalogue (or one category of it) as arrays; row ``k`` of every list is one item.

    ``vectors[v]`` is the feature of item ``vector_rows[v]`` (items without a vector take part
    in exact grouping only). ``is_new`` (optional) restricts the search to pairs with at least
    one new item in them.
    """

    item_ids: IntArray
    sha256: Sequence[str | None]
    phash: Sequence[int | None]
    categories: Sequence[str]
    facts: Sequence[ItemFacts]
    vectors: FloatArray
    vector_rows: IntArray
    is_new: BoolArray | None = None

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if not (len(self.sha256) == len(self.phash) == len(self.categories) == len(self.facts) == n):
            raise InvalidInput("every per-item list must have one entry per item")
        if len(self.vectors) != len(self.vector_rows):
            raise InvalidInput("vectors and vector_rows differ in length")
        if self.is_new is not None and len(self.is_new) != n:
            raise InvalidInput("is_new must have one entry per item")


@dataclass(frozen=True)
class Evidence:
    item_id: int
    hash_equal: bool
    phash_distance: int | None
    cosine: float | None


@dataclass(frozen=True)
class FoundGroup:
    kind: str  # "exact" (one content hash) or "near"
    category: str | None  # the members' category when they share one
    representative_item_id: int  # the suggested item to keep
    members: list[Evidence]  # ordered by item id

    @property
    def item_ids(self) -> list[int]:
        return [m.item_id for m in self.members]


@dataclass
class DedupStats:
    items: int = 0
    vectors: int = 0
    new_items: int | None = None
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)
    exact_edges: int = 0
    near_pairs: int = 0
    phash_rejected: int = 0
    groups: int = 0
    exact_groups: int = 0
    near_groups: int = 0
    items_in_groups: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class DedupResult:
    groups: list[FoundGroup]
    stats: DedupStats


def _near_edges(
    data: DedupInput, config: DedupConfig, stats: DedupStats, progress: Progress | None
) -> tuple[IntArray, IntArray]:
    """Near pairs within each category, as item-row edges."""
    vec_cat = np.asarray([data.categories[r] for r in data.vector_rows.tolist()], dtype=object)
    shards = sorted({str(c) for c in vec_cat.tolist()})
    plan: list[tuple[str, IntArray, IntArray | None]] = []
    for cat in shards:
        local = np.flatnonzero(vec_cat == cat)
        query = None
        if data.is_new is not None:
            query = np.flatnonzero(data.is_new[data.vector_rows[local]])
        plan.append((cat, local, query))
    total = sum(len(local) if q is None else len(q) for _, local, q in plan)
    done = 0
    ei: list[IntArray] = []
    ej: list[IntArray] = []
    for cat, local, query in plan:
        t0 = time.perf_counter()
        threshold = config.threshold_for(cat)
        whole = len(local) == len(data.vectors) and np.array_equal(local, np.arange(len(local)))
        shard = data.vectors if whole else data.vectors[local]  # no copy for a single shard
        base = done

        def shard_progress(d: int, _t: int, base: int = base) -> None:
            if progress:
                progress(base + d, total)

        pairs = near_duplicate_pairs(
            shard, threshold, query_rows=query, block_rows=config.block_rows,
            block_cols=config.block_cols, max_pairs=config.max_pairs, progress=shard_progress)
        done += len(local) if query is None else len(query)
        rows_i = data.vector_rows[local[pairs.i]]
        rows_j = data.vector_rows[local[pairs.j]]
        found = len(pairs)
        rejected = 0
        if config.use_phash and found:
            keep = np.zeros(found, dtype=bool)
            for k, (a, b) in enumerate(zip(rows_i.tolist(), rows_j.tolist(), strict=True)):
                ha, hb = data.phash[a], data.phash[b]
                keep[k] = ha is not None and hb is not None and hamming(ha, hb) <= config.phash_max_distance
            rejected = int((~keep).sum())
            rows_i, rows_j = rows_i[keep], rows_j[keep]
        stats.near_pairs += len(rows_i)
        stats.phash_rejected += rejected
        stats.categories[cat] = {
            "items": int(len(local)), "queries": None if query is None else int(len(query)),
            "threshold": threshold, "pairs": int(found), "phash_rejected": rejected,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        ei.append(rows_i)
        ej.append(rows_j)
    if progress and total == 0:
        progress(0, 0)
    if not ei:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(ei), np.concatenate(ej)


def _exact_edges(data: DedupInput) -> tuple[IntArray, IntArray]:
    i, j = equal_value_edges(list(data.sha256))
    if data.is_new is not None and len(i):
        # Only classes with a new item in them: an old exact pair was reported before.
        new_shas = {data.sha256[r] for r in np.flatnonzero(data.is_new).tolist()}
        keep = np.asarray([data.sha256[a] in new_shas for a in i.tolist()], dtype=bool)
        i, j = i[keep], j[keep]
    return i, j


def find_duplicates(
    data: DedupInput, config: DedupConfig | None = None, progress: Progress | None = None
) -> DedupResult:
    """Exact and near-duplicate groups of ``data`` (largest first, then by smallest item id)."""
    config = config or DedupConfig()
    t0 = time.perf_counter()
    n = len(data.item_ids)
    stats = DedupStats(items=n, vectors=int(len(data.vectors)),
                       new_items=None if data.is_new is None else int(np.count_nonzero(data.is_new)))
    xi, xj = _exact_edges(data)
    stats.exact_edges = int(len(xi))
    ni, nj = _near_edges(data, config, stats, progress)
    comps = components(n, np.concatenate([xi, ni]), np.concatenate([xj, nj]))
    vector_of = np.full(n, -1, dtype=np.int64)
    vector_of[data.vector_rows] = np.arange(len(data.vector_rows))
    groups: list[FoundGroup] = []
    for rows in comps:
        rows_list = rows.tolist()
        keep_id = suggest_keep([data.facts[r] for r in rows_list], config.keep_rule)
        rep = next(r for r in rows_list if int(data.item_ids[r]) == keep_id)
        rep_sha = data.sha256[rep]
        rep_hash = data.phash[rep]
        cosines: dict[int, float] = {}
        with_vec = [r for r in rows_list if vector_of[r] >= 0]
        if vector_of[rep] >= 0 and with_vec:
            sims = cosine_to(data.vectors, vector_of[np.asarray(with_vec)], int(vector_of[rep]))
            cosines = dict(zip(with_vec, sims.tolist(), strict=True))
        members = []
        for r in rows_list:
            h = data.phash[r]
            members.append(Evidence(
                item_id=int(data.item_ids[r]),
                hash_equal=rep_sha is not None and data.sha256[r] == rep_sha,
                phash_distance=hamming(rep_hash, h) if rep_hash is not None and h is not None else None,
                cosine=round(float(cosines[r]), 6) if r in cosines else None,
            ))
        members.sort(key=lambda m: m.item_id)
        shas = {data.sha256[r] for r in rows_list}
        cats = {data.categories[r] for r in rows_list}
        kind = "exact" if len(shas) == 1 and None not in shas else "near"
        groups.append(FoundGroup(kind=kind, category=(next(iter(cats)) or None) if len(cats) == 1 else None,
                                 representative_item_id=keep_id, members=members))
    groups.sort(key=lambda g: (-len(g.members), g.members[0].item_id))
    stats.groups = len(groups)
    stats.exact_groups = sum(1 for g in groups if g.kind == "exact")
    stats.near_groups = stats.groups - stats.exact_groups
    stats.items_in_groups = sum(len(g.members) for g in groups)
    stats.seconds = time.perf_counter() - t0
    return DedupResult(groups, stats)
