"""A batch too big for memory is split in halves and retried, not crash-looped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shared.vision.embed import Embedder


class FakeNet(torch.nn.Module):
    """Features = the mean of each channel; 'out of memory' for batches over ``limit``."""

    feature_dim = 3

    def __init__(self, limit: int, error: type[BaseException] = MemoryError) -> None:
        super().__init__()
        self.limit, self.error, self.sizes = limit, error, []  # type: ignore[var-annotated]
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        if x.shape[0] > self.limit:
            raise self.error("out of memory (fake)")
        return x.mean(dim=(2, 3))


def _images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (40, 40), (n * 7 % 255, 100, 200 - n)) for n in range(n)]


@pytest.mark.parametrize("error", [MemoryError, torch.cuda.OutOfMemoryError])
def test_oom_batch_is_split_and_every_image_embedded_once(error: type[BaseException]) -> None:
    net = FakeNet(limit=3, error=error)
    emb = Embedder(net, "resnet50", 32, device="cpu", precision="fp32")
    images = _images(13)
    out = emb.embed_images(images, batch_size=13)
    reference = Embedder(FakeNet(limit=100), "resnet50", 32, device="cpu", precision="fp32")
    expected = reference.embed_images(images, batch_size=1)
    assert out.shape == (13, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)  # same order, nothing lost or doubled
    assert max(s for s in net.sizes if s <= 3) <= 3 and 13 in net.sizes


def test_a_single_image_that_does_not_fit_raises() -> None:
    emb = Embedder(FakeNet(limit=0), "resnet50", 32, device="cpu", precision="fp32")
    with pytest.raises(MemoryError):
        emb.embed_images(_images(4), batch_size=4)
