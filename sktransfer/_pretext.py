"""Pretext tasks of self-supervised pretraining: views, masks, the NT-Xent loss, the projection
head and the decoder. Pure PyTorch/torchvision.

A pretext task turns a raw input batch into a loss without labels. :class:`PretextModel` wraps a
:class:`~sktransfer._network.TransferNet` and a task so that the fine-tuning machinery trains it
unchanged: in training mode its forward pass returns the task's loss (and
:class:`PassThroughLoss` hands it to skorch as the criterion's value); in evaluation mode it is
the network itself, so the training guard's checks run on it as on any network.

* :class:`ContrastiveTask` (SimCLR): two random views of every image, the network's features,
  a projection head, and the NT-Xent loss (:func:`nt_xent_loss`) that pulls the two views of an
  image together and pushes the other images of the batch away.
* :class:`ReconstructionTask` (masked autoencoder): random patches of every image are blanked,
  and a light decoder on the backbone's last feature map (:class:`MapDecoder`) reconstructs the
  blanked pixels from what is left.

Vectors (for vector backbones) get the same two tasks with their own corruption: a random share
of each row's features replaced by the values of other rows (SCARF's views), or set to zero
(reconstruction).

The views are drawn for the whole batch at once, with independent parameters per image:
torchvision's ``RandomResizedCrop``, ``RandomHorizontalFlip``, ``ColorJitter`` and
``RandomGrayscale`` draw one set of parameters per call, so applying them batched would give
every image of a batch the same crop. :class:`ImageViews` computes what they compute (the same
crop, flip and colour operations; tested against ``torchvision.transforms.v2.functional``) in a
few batched tensor operations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .augment import each_image

__all__ = [
    "ContrastiveTask",
    "ImageViews",
    "MapDecoder",
    "PassThroughLoss",
    "PretextModel",
    "ReconstructionTask",
    "attach_decoder",
    "attach_projection_head",
    "nt_xent_loss",
]

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def nt_xent_loss(z1, z2, temperature=0.5):
    """SimCLR's normalized temperature-scaled cross-entropy of two batches of views.

    With ``z`` the ``2N`` L2-normalised rows of ``z1`` and ``z2`` and ``s(i, k) = z_i . z_k``,
    the loss of row ``i`` whose other view is row ``j`` is
    ``-log(exp(s(i, j) / t) / sum_{k != i} exp(s(i, k) / t))``, averaged over the ``2N`` rows.

    Parameters
    ----------
    z1, z2 : torch.Tensor of shape (N, D)
        Projections of the first and the second view of the same N samples.
    temperature : float, default=0.5
        The temperature ``t``.

    Returns
    -------
    loss : torch.Tensor
        A scalar.

    Examples
    --------
    Two samples whose views agree exactly, orthogonal to each other: each row's positive has
    similarity 1, its two negatives 0, so the loss is ``-log(e^2 / (e^2 + 2))`` at t = 0.5.

    >>> import math, torch
    >>> from sktransfer._pretext import nt_xent_loss
    >>> z = torch.eye(2)
    >>> expected = -math.log(math.e**2 / (math.e**2 + 2))
    >>> round(float(nt_xent_loss(z, z, 0.5)), 6), round(expected, 6)
    (0.239545, 0.239545)
    """
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, targets)


class PassThroughLoss(nn.Module):
    """The criterion of a pretext model: its output already is the loss."""

    def forward(self, loss, target=None):
        return loss


# ---------------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------------


class ImageViews:
    """Random views of a batch of images in [0, 1], ``(N, C, H, W)``, with parameters drawn
    per image: a random resized crop (area ``crop_scale``, aspect ratio 3/4 to 4/3) resized back
    to ``H x W`` (bilinear), a horizontal flip with probability ``flip``, with probability
    ``jitter_p`` brightness, contrast and saturation each scaled by a factor in
    ``[1 - jitter, 1 + jitter]`` (in that order, clamped to [0, 1] after each, as torchvision
    does), and grayscale with probability ``gray_p`` (RGB only). Draws from torch's global
    random number generator.

    Examples
    --------
    >>> import torch
    >>> from sktransfer._pretext import ImageViews
    >>> views = ImageViews()(torch.rand(4, 3, 16, 16))
    >>> tuple(views.shape), bool(views.min() >= 0), bool(views.max() <= 1)
    ((4, 3, 16, 16), True, True)
    """

    def __init__(self, crop_scale=(0.25, 1.0), flip=0.5, jitter=0.4, jitter_p=0.8, gray_p=0.2):
        self.crop_scale = crop_scale
        self.flip = flip
        self.jitter = jitter
        self.jitter_p = jitter_p
        self.gray_p = gray_p

    def __call__(self, x):
        n = len(x)
        dev = x.device
        theta = crop_matrices(n, self.crop_scale, self.flip, device=dev)
        x = resized_crops(x, theta)
        if self.jitter:
            on = torch.rand(n, device=dev) < self.jitter_p

            def factors():
                f = 1 + (torch.rand(n, device=dev) * 2 - 1) * self.jitter
                return torch.where(on, f, torch.ones_like(f)).view(n, 1, 1, 1)

            x = adjust_brightness(x, factors())
            x = adjust_contrast(x, factors())
            if x.shape[1] == 3:
                x = adjust_saturation(x, factors())
        if self.gray_p and x.shape[1] == 3:
            gray = (torch.rand(n, device=dev) < self.gray_p).view(n, 1, 1, 1)
            x = torch.where(gray, _grayscale(x).expand_as(x), x)
        return x


def crop_matrices(n, scale=(0.25, 1.0), flip=0.5, *, ratio=(3 / 4, 4 / 3), device=None):
    """``(n, 2, 3)`` affine matrices of random resized crops (and flips) in the normalised
    coordinates of :func:`torch.nn.functional.affine_grid`: a crop of width ``w`` and height
    ``h`` (fractions of the image's sides) centred at ``(cx, cy)`` is ``[[w, 0, cx], [0, h,
    cy]]``, a flip negates ``w``."""
    area = torch.empty(n, device=device).uniform_(*scale)
    log_r = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (torch.rand(n, device=device) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, device=device) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(n, device=device) < flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta


def box_matrix(top, left, height, width, size):
    """The :func:`crop_matrices` matrix of the pixel box ``(top, left, height, width)`` of an
    image of ``size = (H, W)``: :func:`resized_crops` then samples what
    ``torchvision.transforms.v2.functional.resized_crop`` does (bilinear, no antialiasing)."""
    H, W = size
    return torch.tensor([[width / W, 0.0, (2 * left + width) / W - 1],
                         [0.0, height / H, (2 * top + height) / H - 1]])


def resized_crops(x, theta):
    """Each image of ``x`` cropped and resized back to its size by its matrix in ``theta``."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grayscale(x):
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def adjust_brightness(x, factor):
    """``torchvision``'s ``adjust_brightness`` with one factor per image (``(N, 1, 1, 1)``)."""
    return (x * factor).clamp(0, 1)


def adjust_contrast(x, factor):
    """``torchvision``'s ``adjust_contrast`` with one factor per image: a blend with the mean
    of the image's grayscale version."""
    gray = _grayscale(x) if x.shape[1] == 3 else x
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    return (factor * x + (1 - factor) * mean).clamp(0, 1)


def adjust_saturation(x, factor):
    """``torchvision``'s ``adjust_saturation`` with one factor per image (RGB): a blend with
    the image's grayscale version."""
    return (factor * x + (1 - factor) * _grayscale(x)).clamp(0, 1)


class PerImageViews:
    """Views made by a per-image transform (e.g. a ``torchvision.transforms.v2.Compose``) on
    each ``(C, H, W)`` image in [0, 1]; it must return an image of the same shape."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, x):
        return each_image(self.transform, x)


def vector_views(x, share=0.3):
    """SCARF's view of a batch of vectors: each feature, with probability ``share``, replaced
    by the same feature of a random row of the batch."""
    n = len(x)
    rows = torch.randint(0, n, x.shape, device=x.device)
    mask = torch.rand(x.shape, device=x.device) < share
    return torch.where(mask, x.gather(0, rows), x)


def patch_mask(x, ratio):
    """``(N, 1, H, W)`` mask (1 = blanked) of random square patches covering ``ratio`` of each
    image on average; patches are about a seventh of the shorter side."""
    n, _, h, w = x.shape
    p = max(1, round(min(h, w) / 7))
    grid = torch.rand(n, 1, -(-h // p), -(-w // p), device=x.device) < ratio
    return grid.repeat_interleave(p, 2).repeat_interleave(p, 3)[:, :, :h, :w].to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Heads and decoders
# ---------------------------------------------------------------------------------------------


def attach_projection_head(net):
    """Make ``net.head`` (the builder's ``Linear(features, dim)``) the output layer of SimCLR's
    projection head: ``Linear(features, features)``, ReLU, then it."""
    n = net.head.in_features
    net.head = nn.Sequential(nn.Linear(n, n), nn.ReLU(), net.head)
    return net


_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _global_pool(net):
    """The last global pooling layer of the last stage (its input is the last feature map)."""
    last = list(net.stages)[-1]
    pools = [m for m in last.modules()
             if isinstance(m, _POOLS) or type(m).__name__ == "SelectAdaptivePool2d"]
    return pools[-1] if pools else None


class _Tap:
    """Records the input of the last global pooling layer while it is entered."""

    def __init__(self, pool):
        self.pool = pool
        self.value = None

    def __enter__(self):
        self.value = None
        self._handle = None
        if self.pool is not None:
            self._handle = self.pool.register_forward_pre_hook(self._record)
        return self

    def _record(self, module, inputs):
        x = inputs[0]
        self.value = x if isinstance(x, torch.Tensor) and x.dim() == 4 else None

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()


class MapDecoder(nn.Module):
    """A light decoder: the last feature map ``(N, C, h, w)`` -> an image ``(N, C_out, H, W)``.

    A 1x1 convolution to ``width`` channels, then as many (bilinear 2x upsampling, 3x3
    convolution, ReLU) steps as it takes to reach ``H x W``, halving the channels at each step
    (at least 8), and a 3x3 convolution to ``C_out``; resized to exactly ``H x W``. Light on
    purpose: a strong decoder would learn what the backbone should.

    Examples
    --------
    >>> import torch
    >>> from sktransfer._pretext import MapDecoder
    >>> MapDecoder(16, (2, 2), 3, (16, 16))(torch.rand(5, 16, 2, 2)).shape
    torch.Size([5, 3, 16, 16])
    """

    def __init__(self, in_channels, map_size, out_channels, out_size, width=32):
        super().__init__()
        self.out_size = tuple(int(s) for s in out_size)
        steps = max(0, math.ceil(math.log2(max(self.out_size[0] / map_size[0],
                                                self.out_size[1] / map_size[1]))))
        layers = [nn.Conv2d(in_channels, width, 1), nn.ReLU()]
        c = width
        for _ in range(steps):
            nxt = max(8, c // 2)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(c, nxt, 3, padding=1), nn.ReLU()]
            c = nxt
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, m):
        y = self.body(m)
        if tuple(y.shape[-2:]) != self.out_size:
            y = F.interpolate(y, size=self.out_size, mode="bilinear", align_corners=False)
        return y


class VectorDecoder(nn.Module):
    """Pooled features -> the flattened input (for backbones without a spatial feature map)."""

    def __init__(self, n_features, out_shape, hidden=128):
        super().__init__()
        self.out_shape = tuple(int(s) for s in out_shape)
        self.body = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(),
                                  nn.Linear(hidden, math.prod(self.out_shape)))

    def forward(self, f):
        return self.body(f).view(len(f), *self.out_shape)


@torch.no_grad()
def attach_decoder(net, sample):
    """Give ``net`` (a :class:`~sktransfer._network.TransferNet`) the decoder of
    :class:`ReconstructionTask`, sized by a dry run on ``sample``: a :class:`MapDecoder` from
    the last feature map, or a :class:`VectorDecoder` from the pooled features when there is
    none (vector backbones, transformers). ``net.head`` becomes the identity: the network's
    output is then its features."""
    was = net.training
    net.eval()
    try:
        x = net.preprocess(sample)
        with _Tap(_global_pool(net)) as tap:
            feats = run_stages(net, x)
    finally:
        net.train(was)
    net.head = nn.Identity()
    if tap.value is not None and x.dim() == 4:
        fmap = tap.value
        net.decoder = MapDecoder(fmap.shape[1], fmap.shape[-2:], x.shape[1], x.shape[-2:])
    else:
        net.decoder = VectorDecoder(feats.shape[1], x.shape[1:])
    return net


# ---------------------------------------------------------------------------------------------
# Tasks and the model that trains them
# ---------------------------------------------------------------------------------------------


def run_stages(net, x):
    """The stages of ``net`` on an already preprocessed batch (frozen ones without autograd)."""
    stages = list(net.stages)
    k = net.n_frozen
    if k:
        with torch.no_grad():
            for stage in stages[:k]:
                x = stage(x)
    for stage in stages[k:]:
        x = stage(x)
    return x


def _unit_range(net, x):
    """``(to_unit, from_unit)``: maps between the preprocessed batch and images in [0, 1]."""
    mean, std = net.preprocess.mean, net.preprocess.std
    if mean is None:
        return (lambda t: t), (lambda t: t)
    if mean.shape[1] != x.shape[1]:
        mean, std = mean.mean(1, keepdim=True), std.mean(1, keepdim=True)
    return (lambda t: t * std + mean), (lambda t: (t - mean) / std)


def _as_channels_last(net, x):
    if net.preprocess.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


class ContrastiveTask(nn.Module):
    """SimCLR: NT-Xent loss of the projections of two random views of every sample.

    Parameters
    ----------
    temperature : float
        Of :func:`nt_xent_loss`.
    views : callable or None
        Images in [0, 1] ``(N, C, H, W)`` -> one random view each; ``None``: :class:`ImageViews`.
    """

    def __init__(self, temperature=0.5, views=None):
        super().__init__()
        self.temperature = float(temperature)
        self.views = views if views is not None else ImageViews()

    def forward(self, net, raw):
        x = net.preprocess(raw)
        if x.dim() == 4:
            to_unit, from_unit = _unit_range(net, x)
            unit = to_unit(x)
            pair = [_as_channels_last(net, from_unit(self.views(unit))) for _ in range(2)]
        else:
            pair = [vector_views(x) for _ in range(2)]
        z = net.head(run_stages(net, torch.cat(pair)))
        return nt_xent_loss(z[: len(x)], z[len(x):], self.temperature)


class ReconstructionTask(nn.Module):
    """Masked autoencoding: blank ``mask_ratio`` of each sample (square patches of images, single
    features of vectors), reconstruct it with ``net.decoder``; mean squared error on the blanked
    values (on all values when nothing is blanked)."""

    def __init__(self, mask_ratio=0.5):
        super().__init__()
        self.mask_ratio = float(mask_ratio)

    def forward(self, net, raw):
        x = net.preprocess(raw)
        if x.dim() == 4:
            mask = patch_mask(x, self.mask_ratio)
            corrupted = _as_channels_last(net, x * (1 - mask))
        else:
            mask = (torch.rand(x.shape, device=x.device) < self.mask_ratio).to(x.dtype)
            corrupted = x * (1 - mask)
        decoder = net.decoder
        if isinstance(decoder, MapDecoder):
            with _Tap(_global_pool(net)) as tap:
                run_stages(net, corrupted)
            recon = decoder(tap.value)
        else:
            recon = decoder(run_stages(net, corrupted))
        err = (recon.float() - x.float()) ** 2
        weight = mask.expand_as(err) if mask.sum() > 0 else torch.ones_like(err)
        return (err * weight).sum() / weight.sum()


class PretextModel(nn.Module):
    """A network and its pretext task, trained like any network: in training mode the forward
    pass returns the task's loss; in evaluation mode it is the network's forward pass."""

    def __init__(self, net, task):
        super().__init__()
        self.net = net
        self.task = task

    def forward(self, x, start=None):
        if self.training:
            return self.task(self.net, x)
        return self.net(x, start=0 if start is None else start)
