"""The fast depthwise weight gradient: same outputs and gradients as PyTorch's, used only where
it applies, and invisible to everything but the timings."""

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sktransfer import TransferClassifier
from sktransfer._depthwise import (
    FastDepthwiseConv2d,
    FastDepthwiseConv2dSame,
    _DepthwiseConv2d,
    depthwise_weight_grad,
    use_fast_depthwise,
)
from sktransfer._efficientnet_lite import Conv2dSame, efficientnet_lite0


def _native_weight_grad(grad_out, x, weight, stride, padding):
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, list(stride), list(padding), [1, 1], False, [0, 0],
        weight.shape[0], [False, True, False],
    )[1]


# every (size, kernel, stride, padding) with at least one output pixel
_SHAPES = [
    (size, kernel, stride, padding)
    for size in (1, 2, 3, 4, 5, 7, 9)
    for kernel in (3, 5)
    for stride in (1, 2)
    for padding in (0, 1, 2)
    if size + 2 * padding >= kernel
]


@pytest.mark.parametrize("size, kernel, stride, padding", _SHAPES)
def test_weight_grad_matches_pytorch(size, kernel, stride, padding):
    x = torch.randn(3, 6, size, size + 1, dtype=torch.float64)
    w = torch.randn(6, 1, kernel, kernel, dtype=torch.float64)
    out = F.conv2d(x, w, None, stride, padding, 1, 6)
    g = torch.randn_like(out)
    expected = _native_weight_grad(g, x, w, (stride, stride), (padding, padding))
    got = depthwise_weight_grad(g, x, (kernel, kernel), (stride, stride), (padding, padding))
    assert got.shape == w.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_autograd_function_passes_gradcheck():
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _DepthwiseConv2d.apply(x, w, b, (1, 2), (2, 1)), (x, w, b)
    )


def _layers(cls, **kw):
    torch.manual_seed(0)
    native = cls(**kw)
    fast = copy.deepcopy(native)
    assert use_fast_depthwise(fast) == 1
    return native, fast


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "cls, kw, size",
    [
        (nn.Conv2d, dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8,
                         bias=True), 2),
        (nn.Conv2d, dict(in_channels=8, out_channels=8, kernel_size=5, stride=2, padding=2,
                         groups=8, bias=False), 4),
        (Conv2dSame, dict(in_channels=8, out_channels=8, kernel_size=5, stride=2, groups=8), 3),
        # odd "SAME" padding: the input is padded by hand before the convolution
        (Conv2dSame, dict(in_channels=8, out_channels=8, kernel_size=5, stride=2, groups=8), 4),
        (Conv2dSame, dict(in_channels=8, out_channels=8, kernel_size=3, groups=8), 1),
    ],
)
def test_fast_layers_match_native_layers(cls, kw, size, channels_last):
    native, fast = _layers(cls, **kw)
    expected = {nn.Conv2d: FastDepthwiseConv2d, Conv2dSame: FastDepthwiseConv2dSame}[cls]
    assert isinstance(fast, cls) and type(fast) is expected
    x = torch.randn(4, 8, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grads = []
    for layer in (native, fast):
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        out.square().sum().backward()
        grads.append((out.detach(), xi.grad, [p.grad for p in layer.parameters()]))
    (o1, gx1, gp1), (o2, gx2, gp2) = grads
    torch.testing.assert_close(o2, o1, rtol=0, atol=0)
    torch.testing.assert_close(gx2, gx1, rtol=1e-6, atol=1e-6)
    for a, b in zip(gp2, gp1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and the fast path was the one taken
    assert type(fast(x.requires_grad_(True)).grad_fn).__name__ == "_DepthwiseConv2dBackward"


def test_fast_path_only_where_it_applies():
    native, fast = _layers(nn.Conv2d, in_channels=4, out_channels=4, kernel_size=3, padding=1,
                           groups=4)
    small, large = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 8, 8)

    def uses_fast(x):
        out = fast(x)
        return out.grad_fn is not None and "_DepthwiseConv2d" in type(out.grad_fn).__name__

    assert uses_fast(small)
    assert not uses_fast(large)  # PyTorch's own kernel is as fast there
    with torch.no_grad():
        assert fast(small).grad_fn is None
    fast.weight.requires_grad_(False)  # a frozen layer: no weight gradient to compute
    assert not uses_fast(small.clone().requires_grad_(True))
    fast.weight.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_fast(small)


def test_only_plain_depthwise_layers_are_swapped():
    class MyConv(nn.Conv2d):
        pass

    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),                              # not depthwise
        nn.Conv2d(8, 8, 3, groups=8),                    # depthwise: swapped
        nn.Conv2d(8, 16, 3, groups=8),                   # channel multiplier 2: left alone
        nn.Conv2d(16, 16, 3, groups=16, dilation=2),     # dilated: left alone
        nn.Conv2d(16, 16, 3, groups=16, padding=1, padding_mode="reflect"),  # left alone
        MyConv(16, 16, 3, groups=16),                    # a user's subclass: left alone
        Conv2dSame(16, 16, 5, groups=16),                # swapped
    )
    keys = list(net.state_dict())
    assert use_fast_depthwise(net) == 2
    assert [type(m).__name__ for m in net] == [
        "Conv2d", "FastDepthwiseConv2d", "Conv2d", "Conv2d", "Conv2d", "MyConv",
        "FastDepthwiseConv2dSame",
    ]
    assert list(net.state_dict()) == keys
    assert use_fast_depthwise(net) == 0  # idempotent


def test_lite0_training_step_is_unchanged():
    torch.manual_seed(0)
    native = efficientnet_lite0(None, dropout=0.0)
    fast = copy.deepcopy(native)
    assert use_fast_depthwise(fast) == 16
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    for m in (native, fast):
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        for _ in range(2):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for (name, a), b in zip(native.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_swapped_layers_pickle_and_copy():
    _, fast = _layers(Conv2dSame, in_channels=4, out_channels=4, kernel_size=3, groups=4)
    for clone in (pickle.loads(pickle.dumps(fast)), copy.deepcopy(fast)):
        assert type(clone) is FastDepthwiseConv2dSame
        x = torch.randn(2, 4, 2, 2)
        torch.testing.assert_close(clone(x), fast(x))


def test_estimators_train_with_fast_layers(tiny_images):
    X, y = tiny_images
    clf = TransferClassifier("efficientnet_lite0", weights=None, freeze_depth=0, max_epochs=1,
                             batch_size=8, input_size=32, random_state=0).fit(X, y)
    kinds = {type(m).__name__ for m in clf.module_.modules()}
    assert "FastDepthwiseConv2dSame" in kinds and "Conv2dSame" in kinds
    assert np.isfinite(clf.predict_proba(X)).all()


def test_compiled_estimators_keep_pytorch_layers(tiny_images, monkeypatch):
    # torch.compile's graph breaks at the swapped layers cost more compile time than they save
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(m) or m)
    X, y = tiny_images
    clf = TransferClassifier("efficientnet_lite0", weights=None, freeze_depth=0, max_epochs=1,
                             batch_size=8, input_size=32, random_state=0, compile=True).fit(X, y)
    assert compiled  # the estimator did ask for compilation
    kinds = {type(m).__name__ for m in clf.module_.modules()}
    assert "Conv2dSame" in kinds and "FastDepthwiseConv2dSame" not in kinds
