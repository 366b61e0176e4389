from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from shared.data.readers import read_dataset, read_fashioniq, read_folder, read_manifest
from shared.errors import EmptyDataset, InvalidInput, NotFound


def _img(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)
    return path


def test_folder_with_splits(tmp_path: Path) -> None:
    for split in ("train", "validation", "test"):
        for cat in ("dress", "shirt"):
            _img(tmp_path / split / cat / f"{cat}1.jpg")
    (tmp_path / "train" / "dress" / "empty.jpg").write_bytes(b"")
    (tmp_path / "train" / "dress" / "readme.txt").write_text("not an image")
    scan = read_folder(tmp_path)
    assert len(scan.samples) == 6
    assert {s.split for s in scan.samples} == {"train", "val", "test"}
    assert scan.categories == ["dress", "shirt"]
    assert scan.missing == ["train/dress/empty.jpg"]
    assert scan.counts()["val"] == {"dress": 1, "shirt": 1}
    assert scan.split("train")[0].key.startswith("train/")


def test_folder_without_splits_and_category_map(tmp_path: Path) -> None:
    _img(tmp_path / "t-shirt" / "a.jpg")
    _img(tmp_path / "longsleeve" / "b.jpg")
    _img(tmp_path / "hat" / "c.jpg")
    scan = read_folder(tmp_path, category_map={"t-shirt": "toptee", "longsleeve": "toptee"})
    assert [s.category for s in scan.samples] == ["toptee", "toptee"]
    assert scan.uncategorised == 1
    assert all(s.split is None for s in scan.samples)


def test_manifest(tmp_path: Path) -> None:
    _img(tmp_path / "imgs" / "a.jpg")
    _img(tmp_path / "imgs" / "b.jpg")
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "category", "split", "sku", "colour"])
        w.writerow(["imgs/a.jpg", "dress", "train", "S1", "red"])
        w.writerow(["imgs/b.jpg", "shirt", "validation", "S2", "blue"])
        w.writerow(["imgs/missing.jpg", "shirt", "test", "S3", "green"])
        w.writerow(["imgs/a.jpg", "", "train", "S4", ""])
    scan = read_manifest(tmp_path / "m.csv")
    assert [s.key for s in scan.samples] == ["imgs/a.jpg", "imgs/b.jpg"]
    assert scan.samples[1].split == "val"
    assert scan.samples[0].metadata == {"sku": "S1", "colour": "red"}
    assert scan.missing == ["imgs/missing.jpg"]
    assert scan.uncategorised == 1
    assert read_dataset(tmp_path / "m.csv").samples == scan.samples


def test_manifest_errors(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image,label\nx.jpg,dress\n")
    with pytest.raises(InvalidInput, match="no 'path' column"):
        read_manifest(tmp_path / "m.csv")
    with pytest.raises(NotFound):
        read_manifest(tmp_path / "absent.csv")
    (tmp_path / "bad.csv").write_text("path,category,split\nx.jpg,dress,holdout\n")
    with pytest.raises(InvalidInput, match="unknown split"):
        read_manifest(tmp_path / "bad.csv")


def test_empty_dataset_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dress").mkdir()
    with pytest.raises(EmptyDataset, match="no usable images"):
        read_folder(tmp_path).require_samples()
    with pytest.raises(NotFound):
        read_dataset(tmp_path / "nothing-here")


def _write_split(path: Path, asins: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asins, indent=4))


def test_fashioniq_overlap_policy_generated(tmp_path: Path) -> None:
    _write_split(tmp_path / "image_splits" / "split.dress.train.json", ["D1", "D2"])
    _write_split(tmp_path / "image_splits" / "split.shirt.train.json", ["S1", "X1"])
    _write_split(tmp_path / "image_splits" / "split.toptee.val.json", ["T1", "X1"])
    for asin in ("D1", "S1", "X1", "T1"):
        _img(tmp_path / "images" / f"{asin}.jpg")
    scan = read_fashioniq(tmp_path)
    by_key = {s.key: s for s in scan.samples}
    assert by_key["X1"].category == "shirt" and by_key["X1"].split == "train"
    assert scan.overlapping == 1 and scan.missing == ["D2"]
    dropped = read_fashioniq(tmp_path, overlap="drop")
    assert "X1" not in {s.key for s in dropped.samples} and dropped.overlapping == 1
    with pytest.raises(InvalidInput):
        read_fashioniq(tmp_path, categories=["hats"])


@pytest.mark.realdata
def test_fashioniq_reader_on_real_annotations(shared_data: Path, tmp_path: Path) -> None:
    """Real FashionIQ split files (a subset, rewritten in their own format) with real clothing
    photos laid out under real ASIN names."""
    ann = shared_data / "fashioniq_annotations" / "image_splits"
    photos = sorted((shared_data / "clothing_dataset_small" / "train" / "t-shirt").glob("*.jpg"))
    real = {f.name: json.loads(f.read_text()) for f in ann.glob("split.*.json")}
    assert len(real) == 9
    shirt_all = (
        set(real["split.shirt.train.json"])
        | set(real["split.shirt.val.json"])
        | set(real["split.shirt.test.json"])
    )
    toptee_all = (
        set(real["split.toptee.train.json"])
        | set(real["split.toptee.val.json"])
        | set(real["split.toptee.test.json"])
    )
    assert len(shirt_all & toptee_all) == 3302  # the documented overlap, in the real files
    overlap = sorted(shirt_all & toptee_all)[:3]

    fixture = tmp_path / "fashioniq"
    photo_iter = iter(photos)
    (fixture / "images").mkdir(parents=True)
    expected = 0
    for name, asins in real.items():
        _, cat, split = name.split(".")[:3]
        chosen = asins[:4] + [a for a in overlap if a in asins]
        _write_split(fixture / "image_splits" / name, chosen)
        # the 4th listed ASIN has no image: reported missing
        for asin in chosen[:3] + [a for a in overlap if a in asins]:
            dest = fixture / "images" / f"{asin}.jpg"
            if not dest.exists():
                shutil.copy(next(photo_iter), dest)
                expected += 1
    scan = read_fashioniq(fixture)
    keys = [s.key for s in scan.samples]
    assert len(keys) == len(set(keys))
    assert scan.overlapping >= 1
    assert any(s.key in overlap for s in scan.samples)
    for s in scan.samples:
        assert s.path.name == f"{s.key}.jpg"
        assert s.category in ("dress", "shirt", "toptee") and s.split in ("train", "val", "test")
        if s.key in overlap:
            assert s.category == "shirt"
    assert len(scan.samples) == expected
    assert len(scan.missing) > 0
    assert set(scan.counts()) == {"train", "val", "test"}
