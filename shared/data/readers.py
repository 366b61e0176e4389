"""Readers that turn a catalogue on disk into a list of :class:`Sample`.

A reader never crashes on a missing or unreadable image: it counts and reports it in the
:class:`DatasetScan`. Checking that a file *decodes* is left to the embedding step (which
records bad images); readers check only that the file exists and is not empty.

Three layouts:
- **FashionIQ**: ``images/<asin>.<ext>`` and ``image_splits/split.<category>.<split>.json``
  (JSON lists of ASINs). FashionIQ lists 3,302 ASINs under both ``shirt`` and ``toptee``.
  A category label must be unique for classification and for "relevant = same category",
  so by default (``overlap="first"``) such an ASIN is kept once, under the first category
  in ``FASHIONIQ_CATEGORIES`` order that lists it (``shirt``); ``overlap="drop"`` leaves
  it out. Either way the count is reported as ``overlapping``.
- **Folder per category**: ``<root>/<category>/*.jpg``, optionally under split folders
  ``<root>/<split>/<category>/*.jpg`` (``train``, ``val``/``validation``/``valid``, ``test``).
- **CSV manifest**: a ``path`` column (relative to the CSV's folder or absolute), a
  ``category`` column, an optional ``split`` column; every other column is metadata.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.errors import EmptyDataset, InvalidInput, NotFound

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def normalise_split(value: str | None) -> str | None:
    if value is None or value.strip() == "":
        return None
    key = value.strip().lower()
    if key not in SPLIT_ALIASES:
        raise InvalidInput(f"unknown split {value!r} (expected train, val or test)")
    return SPLIT_ALIASES[key]


@dataclass(frozen=True)
class Sample:
    """One catalogue image: a stable key, where it is, and what is known about it."""

    key: str
    path: Path
    category: str | None
    split: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class DatasetScan:
    """What a reader found: the usable samples and what it had to leave out."""

    samples: list[Sample]
    source: str
    missing: list[str] = field(default_factory=list)  # listed but no file / empty file
    uncategorised: int = 0  # rows or files with no category (left out)
    overlapping: int = 0  # FashionIQ ASINs listed under two categories
    duplicate_keys: int = 0

    @property
    def categories(self) -> list[str]:
        return sorted({s.category for s in self.samples if s.category is not None})

    def split(self, *names: str) -> list[Sample]:
        wanted = {normalise_split(n) for n in names}
        return [s for s in self.samples if s.split in wanted]

    def counts(self) -> dict[str, dict[str, int]]:
        """Counts by split then category (``all`` for samples with no split)."""
        out: dict[str, Counter[str]] = {}
        for s in self.samples:
            out.setdefault(s.split or "all", Counter())[s.category or "-"] += 1
        return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}

    def summary(self) -> str:
        parts = [f"{len(self.samples)} images from {self.source}"]
        for split, counts in self.counts().items():
            parts.append(f"  {split}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
        if self.missing:
            parts.append(f"  missing or empty files: {len(self.missing)}")
        if self.uncategorised:
            parts.append(f"  without a category (left out): {self.uncategorised}")
        if self.overlapping:
            parts.append(f"  listed under two categories: {self.overlapping}")
        if self.duplicate_keys:
            parts.append(f"  duplicate keys (left out): {self.duplicate_keys}")
        return "\n".join(parts)

    def require_samples(self) -> DatasetScan:
        if not self.samples:
            raise EmptyDataset(f"no usable images in {self.source}\n{self.summary()}")
        return self


def _usable(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_fashioniq(
    root: Path,
    categories: Iterable[str] = FASHIONIQ_CATEGORIES,
    splits: Iterable[str] = ("train", "val", "test"),
    overlap: Literal["first", "drop"] = "first",
) -> DatasetScan:
    """Read the FashionIQ layout (see the module docstring for the overlap policy)."""
    root = Path(root)
    split_dir = root / "image_splits"
    image_dir = root / "images"
    if not split_dir.is_dir():
        raise NotFound(f"{root} has no image_splits/ folder: not a FashionIQ layout")
    cats = list(categories)
    for c in cats:
        if c not in FASHIONIQ_CATEGORIES:
            raise InvalidInput(f"unknown FashionIQ category {c!r} (known: {', '.join(FASHIONIQ_CATEGORIES)})")
    wanted_splits = [normalise_split(s) for s in splits]

    # asin -> list of (category, split), in category order
    listings: dict[str, list[tuple[str, str]]] = {}
    for cat in FASHIONIQ_CATEGORIES:
        if cat not in cats:
            continue
        for split in wanted_splits:
            path = split_dir / f"split.{cat}.{split}.json"
            if not path.is_file():
                continue
            try:
                asins = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InvalidInput(f"{path}: not a JSON list of ASINs ({exc})") from exc
            if not isinstance(asins, list):
                raise InvalidInput(f"{path}: expected a JSON list of ASINs")
            for asin in asins:
                listings.setdefault(str(asin), []).append((cat, str(split)))

    files: dict[str, Path] = {}
    if image_dir.is_dir():
        for p in image_dir.iterdir():
            if _is_image(p):
                files.setdefault(p.stem, p)

    scan = DatasetScan(samples=[], source=f"FashionIQ layout at {root}")
    for asin, where in listings.items():
        if len({c for c, _ in where}) > 1:
            scan.overlapping += 1
            if overlap == "drop":
                continue
        cat, split = where[0]
        found = files.get(asin)
        if found is None or not _usable(found):
            scan.missing.append(asin)
            continue
        scan.samples.append(Sample(key=asin, path=found, category=cat, split=split))
    return scan


def read_folder(root: Path, category_map: Mapping[str, str | None] | None = None) -> DatasetScan:
    """Read ``<root>/<category>/*`` or ``<root>/<split>/<category>/*``.

    ``category_map`` renames folder names to categories; a folder mapped to ``None`` (or
    absent from a given map) is left out and counted as uncategorised.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFound(f"catalogue folder {root} does not exist")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if p.name.lower() in SPLIT_ALIASES]
    scan = DatasetScan(samples=[], source=f"folder {root}")
    groups: list[tuple[str | None, Path]] = []
    if split_dirs:
        for sd in split_dirs:
            for cd in sorted(p for p in sd.iterdir() if p.is_dir()):
                groups.append((normalise_split(sd.name), cd))
    else:
        groups = [(None, cd) for cd in subdirs]
    for split, cat_dir in groups:
        if category_map is not None:
            category = category_map.get(cat_dir.name)
        else:
            category = cat_dir.name
        for p in sorted(cat_dir.rglob("*")):
            if not p.is_file() or not _is_image(p):
                continue
            if category is None:
                scan.uncategorised += 1
                continue
            if not _usable(p):
                scan.missing.append(str(p.relative_to(root)))
                continue
            key = p.relative_to(root).as_posix()
            scan.samples.append(Sample(key=key, path=p, category=category, split=split))
    return scan


def read_manifest(
    csv_path: Path,
    path_column: str = "path",
    category_column: str = "category",
    split_column: str | None = "split",
    key_column: str | None = None,
) -> DatasetScan:
    """Read a CSV manifest. Rows with an empty category are left out (counted)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise NotFound(f"manifest {csv_path} does not exist")
    base = csv_path.parent
    scan = DatasetScan(samples=[], source=f"manifest {csv_path}")
    seen: set[str] = set()
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        for needed in (path_column, category_column):
            if needed not in columns:
                raise InvalidInput(
                    f"{csv_path}: no {needed!r} column (columns: {', '.join(columns) or 'none'})"
                )
        if key_column and key_column not in columns:
            raise InvalidInput(f"{csv_path}: no {key_column!r} column")
        use_split = split_column if split_column and split_column in columns else None
        reserved = {path_column, category_column, use_split, key_column}
        for row in reader:
            raw_path = (row.get(path_column) or "").strip()
            if not raw_path:
                scan.missing.append("<empty path>")
                continue
            category = (row.get(category_column) or "").strip() or None
            if category is None:
                scan.uncategorised += 1
                continue
            path = Path(raw_path)
            if not path.is_absolute():
                path = base / path
            key = (row.get(key_column) or "").strip() if key_column else raw_path
            if key in seen:
                scan.duplicate_keys += 1
                continue
            seen.add(key)
            split = normalise_split(row.get(use_split)) if use_split else None
            if not _usable(path):
                scan.missing.append(raw_path)
                continue
            metadata = {k: v for k, v in row.items() if k not in reserved and k is not None}
            scan.samples.append(
                Sample(key=key, path=path, category=category, split=split, metadata=metadata)
            )
    return scan


DatasetFormat = Literal["auto", "fashioniq", "folder", "manifest"]


def read_dataset(
    path: Path,
    fmt: DatasetFormat = "auto",
    path_column: str = "path",
    category_column: str = "category",
    split_column: str | None = "split",
) -> DatasetScan:
    """Read any supported layout; ``auto`` picks by what ``path`` is."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"dataset path {path} does not exist")
    if fmt == "auto":
        if path.is_file():
            fmt = "manifest"
        elif (path / "image_splits").is_dir():
            fmt = "fashioniq"
        else:
            fmt = "folder"
    if fmt == "manifest":
        return read_manifest(path, path_column, category_column, split_column)
    if fmt == "fashioniq":
        return read_fashioniq(path)
    return read_folder(path)
