"""Grouping (connected components), the keep rule, and whole-catalogue detection on arrays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from shared.dedup.detect import DedupConfig, DedupInput, find_duplicates
from shared.dedup.groups import ItemFacts, components, equal_value_edges, suggest_keep
from shared.errors import InvalidInput

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def arr(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def test_components_are_transitive_and_canonical() -> None:
    # 0-1-2 chain (0 and 2 never paired directly), 5-6, 3 and 4 alone, 7-8-9 star.
    i, j = arr(0, 1, 5, 7, 7), arr(1, 2, 6, 8, 9)
    got = components(10, i, j)
    assert [g.tolist() for g in got] == [[0, 1, 2], [7, 8, 9], [5, 6]]
    # Any order or orientation of the same edges gives the same groups.
    rng = np.random.default_rng(0)
    order = rng.permutation(len(i))
    again = components(10, j[order], i[order])
    assert [g.tolist() for g in again] == [g.tolist() for g in got]
    assert [g.tolist() for g in components(10, i, j, min_size=1)][-1] == [4]
    assert components(3, arr(), arr()) == []
    assert components(0, arr(), arr()) == []
    with pytest.raises(InvalidInput):
        components(3, arr(0), arr(3))


def test_union_of_many_edges_matches_a_reference() -> None:
    rng = np.random.default_rng(1)
    n = 300
    i, j = rng.integers(0, n, 200), rng.integers(0, n, 200)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        parent[find(a)] = find(b)
    expected: dict[int, set[int]] = {}
    for x in range(n):
        expected.setdefault(find(x), set()).add(x)
    want = sorted(sorted(s) for s in expected.values() if len(s) > 1)
    assert sorted(g.tolist() for g in components(n, i, j)) == want


def test_equal_value_edges() -> None:
    i, j = equal_value_edges(["a", "b", "a", None, None, "a", "b"])
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 2), (0, 5), (1, 6)]


def test_keep_rules() -> None:
    items = [
        ItemFacts(10, T0 + timedelta(days=2), 800, 800, {"title": "x"}, "dress"),
        ItemFacts(11, T0, 100, 100, None, "dress"),
        ItemFacts(12, T0 + timedelta(days=1), 800, 800, {"title": "x", "brand": "y", "empty": ""}, None),
        ItemFacts(9, T0 + timedelta(days=1), 400, 1600, {"a": 1, "b": 2, "c": None}, "dress"),
    ]
    assert suggest_keep(items, "oldest") == 11
    # 640,000 px each for 9, 10 and 12: the oldest (9 and 12), then the lowest id.
    assert suggest_keep(items, "largest") == 9
    assert suggest_keep(items, "most_complete") == 9  # 2 fields + category = 3 > 2 (12)
    items[3] = ItemFacts(9, T0 + timedelta(days=1), 400, 400, {"a": 1}, None)
    assert suggest_keep(items, "largest") == 12
    assert suggest_keep([ItemFacts(5), ItemFacts(3)], "oldest") == 3
    with pytest.raises(InvalidInput):
        suggest_keep(items, "newest")
    with pytest.raises(InvalidInput):
        suggest_keep([], "oldest")


def _input(vectors: np.ndarray, cats: list[str], shas: list[str | None], **kw: object) -> DedupInput:
    n = len(cats)
    return DedupInput(
        item_ids=np.arange(101, 101 + n, dtype=np.int64), sha256=shas, phash=kw.pop("phash", [None] * n),  # type: ignore[arg-type]
        categories=cats, facts=[ItemFacts(101 + k, T0 + timedelta(hours=k)) for k in range(n)],
        vectors=vectors, vector_rows=kw.pop("vector_rows", np.arange(n, dtype=np.int64)), **kw)  # type: ignore[arg-type]


def base_vectors() -> np.ndarray:
    e = np.eye(8, dtype=np.float32)
    return np.stack([
        e[0], e[0] + 0.05 * e[1], e[2], e[2] + 0.02 * e[3],  # 0,1 near; 2,3 near
        e[4], e[4], e[5], e[6],  # 4,5 identical vectors but different categories
    ])


def test_exact_and_near_groups_with_evidence() -> None:
    cats = ["dress", "dress", "shirt", "shirt", "dress", "shirt", "shirt", "dress"]
    shas = ["a", "b", "c", "d", "e", "f", "c", "h"]  # item 6 is a byte copy of item 2
    result = find_duplicates(_input(base_vectors(), cats, shas), DedupConfig(threshold=0.99))
    groups = {tuple(g.item_ids): g for g in result.groups}
    # 2, 3 near (same category), 6 exact with 2 although its vector is far: one group of three.
    assert set(groups) == {(103, 104, 107), (101, 102)}
    big = groups[(103, 104, 107)]
    assert big.kind == "near" and big.category == "shirt" and big.representative_item_id == 103
    ev = {m.item_id: m for m in big.members}
    assert ev[107].hash_equal and not ev[104].hash_equal and ev[103].hash_equal
    assert ev[104].cosine == pytest.approx(1 / np.sqrt(1 + 0.02**2), abs=1e-5)
    assert ev[107].cosine == pytest.approx(0.0, abs=1e-6)
    # 4 and 5 have the same vector but different categories: never compared.
    assert (105, 106) not in groups
    assert result.stats.groups == 2 and result.stats.exact_edges == 1
    assert result.groups[0].item_ids == [103, 104, 107]  # largest first


def test_exact_only_group_and_items_without_vectors() -> None:
    cats = ["dress", "dress", "shirt"]
    vecs = np.eye(3, dtype=np.float32)[:2]
    data = _input(vecs, cats, ["s", "t", "s"], vector_rows=np.asarray([0, 1], dtype=np.int64))
    (g,) = find_duplicates(data).groups
    assert g.kind == "exact" and g.item_ids == [101, 103] and g.category is None
    assert [m.cosine for m in g.members] == [pytest.approx(1.0), None]


def test_per_category_thresholds() -> None:
    cats = ["dress", "dress", "shirt", "shirt", "dress", "shirt", "shirt", "dress"]
    shas = list("abcdefgh")
    strict = DedupConfig(threshold=0.99, thresholds={"dress": 0.9999})
    got = [g.item_ids for g in find_duplicates(_input(base_vectors(), cats, shas), strict).groups]
    assert got == [[103, 104]]
    with pytest.raises(InvalidInput):
        DedupConfig(thresholds={"dress": 2.0})


def test_only_new_items_against_the_rest() -> None:
    cats = ["dress"] * 8
    vecs = base_vectors()
    shas = ["a", "b", "c", "d", "e", "e", "g", "h"]
    is_new = np.zeros(8, dtype=bool)
    is_new[3] = True  # item 104 is new: only its pairs (with 103) are looked for
    result = find_duplicates(_input(vecs, cats, shas, is_new=is_new), DedupConfig(threshold=0.99))
    assert [g.item_ids for g in result.groups] == [[103, 104]]
    assert result.stats.new_items == 1
    is_new[:] = False
    is_new[5] = True  # a new byte copy of an old item
    result = find_duplicates(_input(vecs, cats, shas, is_new=is_new), DedupConfig(threshold=0.99))
    assert [g.item_ids for g in result.groups] == [[105, 106]]
    assert result.groups[0].kind == "exact"


def test_phash_confirmation_rejects_far_hashes() -> None:
    cats = ["dress"] * 8
    hashes = [0, 0b1, 0, (1 << 40) - 1, None, None, None, None]
    data = _input(base_vectors(), cats, list("abcdefgh"), phash=hashes)
    result = find_duplicates(data, DedupConfig(threshold=0.99, use_phash=True, phash_max_distance=4))
    assert [g.item_ids for g in result.groups] == [[101, 102]]
    assert result.groups[0].members[1].phash_distance == 1
    # 2-3 rejected by distance, 4-5 (identical vectors) for having no hash at all.
    assert result.stats.phash_rejected == 2


def test_rerun_is_stable() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(size=(200, 16)).astype(np.float32)
    vecs = np.concatenate([base, base[:30] + 0.01 * rng.normal(size=(30, 16)).astype(np.float32)])
    cats = [["a", "b", "c"][k % 3] for k in range(200)] + [["a", "b", "c"][k % 3] for k in range(30)]
    shas = [f"s{k}" for k in range(230)]
    first = find_duplicates(_input(vecs, cats, shas), DedupConfig(threshold=0.98, block_rows=17, block_cols=23))
    second = find_duplicates(_input(vecs, cats, shas), DedupConfig(threshold=0.98))
    assert len(first.groups) == 30
    assert first.groups == second.groups
