"""JPEGs decoded on the model's device (nvJPEG on a GPU). On this CPU the same code runs with
``jpeg_decode="device"``: torchvision's decoder in the embedding process, then the device
resize and crop. What the device decoder cannot take goes through the CPU path."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from shared.errors import ImageTooLarge, InvalidInput
from shared.vision import device_decode
from shared.vision.device_decode import Jpeg, read_device_jpeg, resolve_jpeg_decode


@pytest.fixture(scope="module")
def net() -> Any:
    from shared.vision.backbone import build_network

    torch.manual_seed(0)
    return build_network("resnet50", "none", num_classes=3)[0]


def _embedder(net: Any, jpeg_decode: str) -> Any:
    from shared.vision.embed import Embedder

    return Embedder(net, "resnet50", 32, device="cpu", precision="fp32", jpeg_decode=jpeg_decode)


def _photo(path: Path, size: tuple[int, int], seed: int, **save: Any) -> Path:
    """A smooth photo-like image (JPEG artefacts stay small, as on real photos)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    img.save(path, **save)
    return path


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "jpeg": _photo(tmp_path / "a.jpg", (120, 160), 1, quality=92),
        "png": _photo(tmp_path / "b.png", (100, 90), 2),
        "grey": tmp_path / "c.jpg",
        "jpeg2": _photo(tmp_path / "d.jpg", (200, 130), 4, quality=90),
    }
    _photo(tmp_path / "grey-src.png", (90, 110), 3)
    Image.open(tmp_path / "grey-src.png").convert("L").save(out["grey"], quality=90)
    cmyk = tmp_path / "e-cmyk.jpg"
    Image.open(out["jpeg"]).convert("CMYK").save(cmyk, quality=92)
    out["cmyk"] = cmyk
    rotated = tmp_path / "f-rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.open(out["jpeg2"]).save(rotated, quality=92, exif=exif)
    out["rotated"] = rotated
    data = out["jpeg"].read_bytes()
    (tmp_path / "g-truncated.jpg").write_bytes(data[: len(data) // 2])
    out["truncated"] = tmp_path / "g-truncated.jpg"
    (tmp_path / "h-junk.jpg").write_bytes(b"not an image at all")
    out["junk"] = tmp_path / "h-junk.jpg"
    return out


def test_only_plain_upright_complete_jpegs_go_to_the_device(files: dict[str, Path]) -> None:
    for name in ("jpeg", "grey", "jpeg2"):
        jpeg = read_device_jpeg(files[name], 10_000_000)
        assert jpeg is not None and jpeg.data == files[name].read_bytes(), name
    assert read_device_jpeg(files["jpeg"], 10_000_000).pixels == 120 * 160  # type: ignore[union-attr]
    for name in ("png", "cmyk", "rotated", "truncated"):
        assert read_device_jpeg(files[name], 10_000_000) is None, name
    # the header checks of the CPU path come first
    with pytest.raises(ImageTooLarge):
        read_device_jpeg(files["jpeg"], 1000)


def test_device_decoding_embeds_every_kind_of_file_and_reports_the_bad_ones(net: Any, files: dict[str, Path]) -> None:
    cpu, dev = _embedder(net, "cpu"), _embedder(net, "device")
    assert not cpu.device_jpegs and dev.device_jpegs and "JPEGs decoded on cpu" in dev.describe()
    order = ["jpeg", "junk", "png", "grey", "cmyk", "rotated", "truncated", "jpeg2"]
    paths = [files[n] for n in order]
    ref = cpu.embed_paths(paths, batch_size=3, workers=0, progress=False)
    got = dev.embed_paths(paths, batch_size=3, workers=0, progress=False)
    assert got.ok.tolist() == ref.ok.tolist() == [0, 2, 3, 4, 5, 7]  # in input order
    assert set(got.errors) == set(ref.errors) == {1, 6}
    cos = _cos(got.vectors, ref.vectors)
    # the files the CPU path decodes (PNG, CMYK, EXIF-rotated) give the same vectors
    np.testing.assert_allclose(got.vectors[[1, 3, 4]], ref.vectors[[1, 3, 4]], rtol=0, atol=1e-5)
    # decoded by another JPEG decoder: close, not bit-equal
    assert cos.min() > 0.999, cos


@pytest.mark.parametrize("workers", [0, 1])
def test_a_query_photo_is_decoded_as_it_was_indexed_on_the_device(net: Any, tmp_path: Path, workers: int) -> None:
    """A large JPEG indexed by the device path and sent as a query to the same embedder: the
    same vector; and close to the CPU path's, which drafts (downscales while decoding)."""
    big = _photo(tmp_path / "big.jpg", (1200, 900), 7, quality=92)
    small = _photo(tmp_path / "small.jpg", (100, 140), 8, quality=92)
    dev = _embedder(net, "device")
    indexed = dev.embed_paths([small, big], batch_size=2, workers=workers, progress=False).vectors
    queried = dev.embed_crops([dev.prepare(small), dev.prepare(big)])
    np.testing.assert_allclose(queried, indexed, rtol=0, atol=1e-5)
    cpu = _embedder(net, "cpu")
    on_cpu = cpu.embed_crops([cpu.prepare(small), cpu.prepare(big)])
    np.testing.assert_allclose(on_cpu, cpu.embed_images([cpu.decode(small), cpu.decode(big)]), rtol=0, atol=1e-5)
    # the large JPEG averaged over the blocks the CPU path's draft merges: within the bar
    assert _cos(on_cpu, indexed).min() > 0.999


def test_a_file_the_device_decoder_fails_on_is_decoded_on_the_cpu(net: Any, files: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch the decoder fails on is retried file by file; the file that still fails is
    decoded by the CPU path, and the others keep their device-decoded vectors."""
    dev = _embedder(net, "device")
    paths = [files["jpeg"], files["jpeg2"], files["grey"]]
    before = dev.embed_paths(paths, batch_size=3, workers=0, progress=False)
    poisoned = files["jpeg2"].read_bytes()
    real = device_decode._decode
    calls: list[int] = []

    def flaky(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        calls.append(len(data))
        if any(bytes(t.numpy()) == poisoned for t in data):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, device)

    monkeypatch.setattr(device_decode, "_decode", flaky)
    after = dev.embed_paths(paths, batch_size=3, workers=0, progress=False)
    assert calls == [3, 1, 1, 1] and after.ok.tolist() == [0, 1, 2] and not after.errors
    np.testing.assert_allclose(after.vectors[[0, 2]], before.vectors[[0, 2]], rtol=0, atol=1e-6)
    on_cpu = _embedder(net, "cpu").embed_paths([files["jpeg2"]], workers=0, progress=False).vectors[0]
    # (a batch of one against a batch of three: float rounding only)
    np.testing.assert_allclose(after.vectors[1], on_cpu, rtol=1e-5, atol=1e-4)
    # a query for that file takes the same way
    np.testing.assert_allclose(dev.embed_crops([dev.prepare(files["jpeg2"])])[0], on_cpu, rtol=0, atol=1e-5)


def test_decoding_is_split_by_the_pixel_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = device_decode._decode

    def counted(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        sizes.append(len(data))
        return real(data, device)

    monkeypatch.setattr(device_decode, "_decode", counted)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buf, "JPEG")
    jpegs = [Jpeg(buf.getvalue(), 1200)] * 5
    out = device_decode.decode_jpegs(jpegs, torch.device("cpu"), budget=2500)
    assert sizes == [2, 2, 1] and all(o is not None and o.shape == (3, 30, 40) for o in out)


def test_choosing_the_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_jpeg_decode("cpu", cpu) is False
    assert resolve_jpeg_decode("device", cpu) is True
    with pytest.raises(InvalidInput, match="unknown JPEG decoding"):
        resolve_jpeg_decode("gpu", cpu)

    def broken(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        raise RuntimeError("no nvjpeg in this build")

    monkeypatch.setattr(device_decode, "_decode", broken)
    # refused at start-up, naming the setting, not at the first batch
    with pytest.raises(InvalidInput, match="FIR_JPEG_DECODE=device, but JPEGs cannot be decoded on cpu"):
        resolve_jpeg_decode("device", cpu)


def test_pillow_stays_the_default(tmp_path: Path, net: Any) -> None:
    from shared.config import Settings
    from shared.vision.embed import Embedder

    assert Settings(home=tmp_path).jpeg_decode == "cpu"
    assert Embedder(net, "resnet50", 32, device="cpu").device_jpegs is False
    assert Settings(home=tmp_path, jpeg_decode="device").jpeg_decode == "device"


def test_shrinking_like_pillows_draft() -> None:
    from shared.vision.device_decode import draft_scale, shrink_like_draft

    assert [draft_scale(w, h, 256) for w, h in [(400, 534), (600, 512), (1600, 2136), (3000, 2100), (255, 999)]] \
        == [1, 2, 4, 8, 1]
    img = torch.arange(2 * 5 * 3, dtype=torch.uint8).reshape(1, 5, 6).repeat(3, 1, 1)
    assert shrink_like_draft(img, 5) is img  # no draft below twice the resize side
    small = shrink_like_draft(img, 2)  # 6x5 -> blocks of 2 (ceil: the last row alone)
    assert small.shape == (3, 3, 3) and small.dtype == torch.uint8
    assert small[0, 0, 0] == round((0 + 1 + 6 + 7) / 4) and small[0, 2, 2] == round((28 + 29) / 2)
    # decoding on the CPU with Pillow's draft gives about the same pixels as the average
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((1024, 768), Image.Resampling.BICUBIC)\
        .save(buf, "JPEG", quality=95)
    drafted = Image.open(io.BytesIO(buf.getvalue()))
    drafted.draft("RGB", (256, 256))
    want = torch.from_numpy(np.array(drafted.convert("RGB"))).permute(2, 0, 1)
    full = torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))).permute(2, 0, 1)
    got = shrink_like_draft(full.contiguous(), 256)
    assert got.shape == want.shape == (3, 384, 512)  # min(1024 // 256, 768 // 256) = 3: halved
    assert (got.int() - want.int()).abs().float().mean() < 2.0


def test_images_of_one_size_are_cropped_as_a_batch_with_the_same_result(net: Any, tmp_path: Path) -> None:
    from shared.vision.device_decode import decode_jpegs, shrink_like_draft

    dev = _embedder(net, "device")  # 32 px crops: resized from 37 px, so photos of 74 px and up are drafted
    paths = [_photo(tmp_path / f"{i}.jpg", size, i, quality=90)
             for i, size in enumerate([(120, 160), (90, 70), (120, 160), (120, 160), (300, 200)])]
    jpegs = [read_device_jpeg(p, 10_000_000) for p in paths]
    crops = dev._device_crops(jpegs)
    # each image alone as a batch of one, as a query's single file is
    one_by_one = [dev.geometry(torch.stack([shrink_like_draft(img, 37)]))[0]  # type: ignore[arg-type]
                  for img in decode_jpegs(jpegs, dev.device)]  # type: ignore[arg-type]
    for got, want in zip(crops, one_by_one, strict=True):
        assert got is not None and want is not None and got.shape == (3, 32, 32)
        assert torch.equal(got, want)
