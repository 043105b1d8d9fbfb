"""A faster weight gradient for depthwise convolutions on small images, on CPU.

When a depthwise convolution's kernel is about as large as its input or larger (a 5x5 kernel
on the 4x4 or 2x2 maps that 64 px images reach in EfficientNet's last stages, a 3x3 kernel on
2x2 or 1x1 maps), most kernel taps fall on padding, and PyTorch's CPU kernel for the weight
gradient is 10 to 100 times slower than the forward pass (``benchmarks/diagnose_depthwise.py``
measures it). The gradient itself is cheap: for each of the ``k * k`` taps it is one product
of the output gradient with a shifted view of the input, summed over batch and pixels.

:func:`use_fast_depthwise` swaps such layers of a network for subclasses that compute the
weight gradient that way, and leave every other case (GPU, no weight gradient, larger
images, autocast, other dtypes) to PyTorch. Parameters, state dicts and outputs are those of
the original layers; gradients agree to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._efficientnet_lite import Conv2dSame

__all__ = ["use_fast_depthwise", "depthwise_weight_grad"]


def _valid_taps(tap, stride, pad, n_out, n_in):
    """First and last output index whose input index ``o * stride + tap - pad`` is inside
    ``[0, n_in)`` (outside is zero padding)."""
    lo = max(0, -((tap - pad) // stride))
    hi = min(n_out - 1, (n_in - 1 + pad - tap) // stride)
    return lo, hi


def depthwise_weight_grad(grad_out, x, kernel_size, stride, padding):
    """Weight gradient of ``F.conv2d(x, w, None, stride, padding, groups=C)`` for a depthwise
    ``w`` of shape ``(C, 1, kh, kw)`` (dilation 1), from the output gradient.

    For each kernel tap, the output gradient times the input pixels that tap saw, summed over
    batch and pixels; taps over zero padding are skipped rather than multiplied.
    """
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    _, c, oh, ow = grad_out.shape
    h, w = x.shape[-2:]
    out = grad_out.new_zeros((c, kh, kw))
    for i in range(kh):
        lo_h, hi_h = _valid_taps(i, sh, ph, oh, h)
        if hi_h < lo_h:
            continue
        ih = lo_h * sh + i - ph
        for j in range(kw):
            lo_w, hi_w = _valid_taps(j, sw, pw, ow, w)
            if hi_w < lo_w:
                continue
            iw = lo_w * sw + j - pw
            g = grad_out[:, :, lo_h : hi_h + 1, lo_w : hi_w + 1]
            seen = x[:, :, ih : ih + (hi_h - lo_h) * sh + 1 : sh,
                     iw : iw + (hi_w - lo_w) * sw + 1 : sw]
            out[:, i, j] = (g * seen).sum((0, 2, 3))
    return out.unsqueeze(1)


class _DepthwiseConv2d(torch.autograd.Function):
    """``F.conv2d`` for a depthwise weight, with :func:`depthwise_weight_grad` in backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, 1, weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1],
                False, [0, 0], weight.shape[0], [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(grad_out, x, weight.shape[2:], ctx.stride,
                                           ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def _small_input(kernel_size, size):
    """The shapes where PyTorch's CPU weight gradient is the slower one (measured with
    ``benchmarks/diagnose_depthwise.py``): a kernel larger than the input, or a kernel of 5 or
    more on inputs of at most 7x7. From 8x8 (5x5 kernel) and 3x3 (3x3 kernel) up, PyTorch's
    own kernel is as fast or faster."""
    (kh, kw), (h, w) = kernel_size, size
    return kh > h or kw > w or (min(kh, kw) >= 5 and max(h, w) <= 7)


def _fast_applies(x, weight, size):
    """Whether the fast weight gradient is used: a weight gradient is wanted, on CPU, in
    float32/float64 without autocast, on a small input (:func:`_small_input`)."""
    return (
        weight.requires_grad
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.dtype == weight.dtype
        and not torch.is_autocast_enabled("cpu")
        and _small_input(weight.shape[2:], size)
    )


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class FastDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` (depthwise, zero padding, dilation 1) with the fast weight gradient."""

    def _conv_forward(self, input, weight, bias):
        if _fast_applies(input, weight, input.shape[-2:]) and isinstance(self.padding, tuple):
            return _DepthwiseConv2d.apply(input, weight, bias, _pair(self.stride),
                                          _pair(self.padding))
        return super()._conv_forward(input, weight, bias)


class FastDepthwiseConv2dSame(Conv2dSame):
    """:class:`Conv2dSame` (depthwise, dilation 1) with the fast weight gradient."""

    def _conv(self, x, padding, size):
        if _fast_applies(x, self.weight, size):
            return _DepthwiseConv2d.apply(x, self.weight, self.bias, _pair(self.stride),
                                          _pair(padding))
        return super()._conv(x, padding, size)


def _is_depthwise(m):
    return (
        m.groups > 1
        and m.groups == m.in_channels == m.out_channels
        and tuple(m.dilation) == (1, 1)
        and m.padding_mode == "zeros"
    )


def use_fast_depthwise(module):
    """Give every depthwise ``nn.Conv2d`` / ``Conv2dSame`` in ``module`` the fast weight
    gradient (in place, by swapping the layer's class for its subclass above); returns the
    number of layers changed. Layers of other classes (subclasses included) are left alone."""
    n = 0
    for m in module.modules():
        if type(m) is nn.Conv2d and _is_depthwise(m):
            m.__class__ = FastDepthwiseConv2d
        elif type(m) is Conv2dSame and _is_depthwise(m):
            m.__class__ = FastDepthwiseConv2dSame
        else:
            continue
        n += 1
    return n
