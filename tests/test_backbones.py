import os

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from sktransfer import get_backbone, list_backbones, register_backbone
from sktransfer._stages import split_torchvision
from sktransfer.backbones import load_weights_file


def _head_input(model, head, x):
    """The features the original network feeds its classification head."""
    seen = {}
    handle = head.register_forward_pre_hook(lambda m, inp: seen.setdefault("x", inp[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["x"]


# (name, expected stage names, head getter, input size)
FAMILIES = [
    ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4"], lambda m: m.fc, 64),
    ("resnext50_32x4d", ["stem", "layer1", "layer2", "layer3", "layer4"], lambda m: m.fc, 64),
    ("wide_resnet50_2", ["stem", "layer1", "layer2", "layer3", "layer4"], lambda m: m.fc, 64),
    ("mobilenet_v2", ["stem", "stage1", "stage2", "stage3", "stage4"],
     lambda m: m.classifier[-1], 64),
    ("mobilenet_v3_small", ["stem", "stage1", "stage2", "stage3", "stage4"],
     lambda m: m.classifier[-1], 64),
    ("efficientnet_b0", ["stem", "stage1", "stage2", "stage3", "stage4"],
     lambda m: m.classifier[-1], 64),
    ("efficientnet_v2_s", ["stem", "stage1", "stage2", "stage3", "stage4"],
     lambda m: m.classifier[-1], 64),
    ("convnext_tiny", ["stem", "stage2", "stage3", "stage4"], lambda m: m.classifier[-1], 64),
    ("regnet_x_400mf", ["stem", "stage1", "stage2", "stage3", "stage4"], lambda m: m.fc, 64),
    ("densenet121", ["stem", "stage1", "stage2", "stage3", "stage4"],
     lambda m: m.classifier, 64),
    ("vgg11", ["stem", "stage1", "stage2", "stage3", "stage4", "stage5"],
     lambda m: m.classifier[-1], 64),
    ("squeezenet1_1", ["stem", "stage1", "stage2", "stage3"], None, 64),
    ("shufflenet_v2_x0_5", ["stem", "stage1", "stage2", "stage3", "stage4"],
     lambda m: m.fc, 64),
    ("mnasnet0_5", ["stem", "stage1", "stage2", "stage3", "stage4"],
     lambda m: m.classifier[-1], 64),
    ("vit_b_16", ["embed", "blocks1", "blocks2", "blocks3", "blocks4"],
     lambda m: m.heads[-1], 224),
    ("swin_t", ["stem", "stage2", "stage3", "stage4"], lambda m: m.head, 64),
]


@pytest.mark.parametrize("name,stages,head,size", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_torchvision_family_stages_compose_to_features(name, stages, head, size):
    torch.manual_seed(0)
    model = tvm.get_model(name, weights=None).eval()
    split, num_features = split_torchvision(name, model)
    assert list(split) == stages
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        composed = nn.Sequential(*split.values())(x)
    assert composed.shape == (2, num_features)
    if head is None:  # squeezenet: the head is a conv; features are its pooled input
        expected = torch.flatten(
            nn.functional.adaptive_avg_pool2d(_head_input(model, model.classifier, x), 1), 1
        )
    else:
        expected = _head_input(model, head(model), x)
    torch.testing.assert_close(composed, expected, atol=1e-5, rtol=1e-4)


def test_every_stage_has_parameters_except_possibly_pooling_stages():
    bb = get_backbone("resnet18")
    assert all(sum(p.numel() for p in s.parameters()) > 0 for s in bb.stages.values())
    assert bb.num_features == 512
    assert bb.preprocessing.input_size == 224
    assert bb.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


def test_list_backbones_has_torchvision_and_registered_names():
    names = list_backbones()
    assert {"resnet18", "vit_b_16", "efficientnet_lite0", "test_cnn", "test_mlp"} <= set(names)
    assert "test_cnn" not in list_backbones("torchvision")
    assert list_backbones("registered") == sorted(list_backbones("registered"))
    with pytest.raises(ValueError, match="source must be"):
        list_backbones("hub")


def test_unknown_backbone_suggests_close_matches():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet19'.*resnet18.*list_backbones"):
        get_backbone("resnet19")


def test_unknown_torchvision_weights_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown weights 'IMAGENET9'.*IMAGENET1K_V1"):
        get_backbone("resnet18", weights="IMAGENET9")


def test_pretrained_weights_missing_offline_names_file_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # follow TORCH_HOME, restored afterwards
    with pytest.raises(ValueError, match="not available offline") as info:
        get_backbone("resnet18", weights="DEFAULT")
    msg = str(info.value)
    assert "resnet18-f37072fd.pth" in msg
    assert "weights=None" in msg and "local weights file" in msg


def test_callable_backbone_falls_back_to_top_level_children():
    def factory():
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7)
        )

    bb = get_backbone(factory)
    assert bb.stage_names == ["0", "1", "2", "3"]
    assert bb.num_features == 4
    assert bb.input_kind == "image"


def test_callable_must_return_a_module():
    with pytest.raises(TypeError, match="not an nn.Module"):
        get_backbone(lambda: 3)


def test_register_backbone_refuses_silent_overwrite():
    register_backbone("dup_test", lambda: nn.Linear(2, 2), input_kind="vector", overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("dup_test", lambda: nn.Linear(2, 2), input_kind="vector")


def test_local_weights_file_loads_and_keeps_values(tmp_path):
    torch.manual_seed(1)
    src = get_backbone("test_cnn")
    # a full state dict of the original network (with its head), as users save them
    from sktransfer.backbones import _REGISTRY

    torch.manual_seed(2)
    module = _REGISTRY["test_cnn"].factory()
    path = tmp_path / "cnn.pt"
    torch.save(module.state_dict(), path)
    bb = get_backbone("test_cnn", weights=str(path))
    torch.testing.assert_close(bb.stages["stem"][0].weight, module.stem[0].weight)
    assert not torch.equal(bb.stages["stem"][0].weight, src.stages["stem"][0].weight)
    from safetensors.torch import save_file

    st = tmp_path / "cnn.safetensors"
    save_file(module.state_dict(), str(st))
    bb2 = get_backbone("test_cnn", weights=str(st))
    torch.testing.assert_close(bb2.stages["block2"][0].weight, module.block2[0].weight)


def test_weights_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(nn.Linear(3, 3).state_dict(), path)
    with pytest.raises(ValueError, match="do not match the architecture"):
        get_backbone("test_cnn", weights=str(path))


def test_missing_weights_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_weights_file(tmp_path / "nope.pth")


def test_pretrained_backbones_are_built_once_and_handed_out_as_independent_copies(tmp_path):
    from sktransfer import backbones as B

    calls = []

    def factory():
        calls.append(1)
        return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))

    torch.manual_seed(0)
    path = tmp_path / "w.pt"
    torch.save(factory().state_dict(), path)
    calls.clear()
    register_backbone("_cached_mlp", factory, input_kind="vector", overwrite=True)
    try:
        a = get_backbone("_cached_mlp", weights=str(path))
        b = get_backbone("_cached_mlp", weights=str(path))
        assert len(calls) == 1  # the second one is a copy of the first
        pa = list(a.stages.values())[0].weight
        pb = list(b.stages.values())[0].weight
        torch.testing.assert_close(pa, pb)
        with torch.no_grad():
            pa.add_(1.0)  # training one copy leaves the next one pristine
        c = get_backbone("_cached_mlp", weights=str(path))
        torch.testing.assert_close(list(c.stages.values())[0].weight, pb)
        # a new weights file (other content) is read again
        torch.save({k: v + 1 for k, v in factory().state_dict().items()}, path)
        os.utime(path, ns=(1, 1))
        d = get_backbone("_cached_mlp", weights=str(path))
        assert len(calls) == 3
        assert not torch.equal(list(d.stages.values())[0].weight, pb)
        # registering the name again drops what was built for the old factory
        register_backbone("_cached_mlp", factory, input_kind="vector", overwrite=True)
        get_backbone("_cached_mlp", weights=str(path))
        assert len(calls) == 4
        # random init is never cached: each call draws new weights
        e = get_backbone("_cached_mlp", weights=None)
        f = get_backbone("_cached_mlp", weights=None)
        assert not torch.equal(list(e.stages.values())[0].weight,
                               list(f.stages.values())[0].weight)
    finally:
        B._REGISTRY.pop("_cached_mlp", None)
        B._BUILT.clear()
