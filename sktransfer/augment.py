"""Training-time data augmentation on raw batches. Pure PyTorch/torchvision.

The ``augment`` hyperparameter of the estimators is turned into a :class:`BatchAugmenter`,
which the training data set applies to each raw batch (whatever its layout: NHWC, NCHW,
grayscale, flattened rows) before the network's preprocessing. It runs only while training,
never in ``predict``, and draws from torch's random number generator, which ``fit`` seeds from
``random_state`` (and torch seeds DataLoader workers from it): fits with the same
``random_state`` and ``num_workers`` are identical.

Because an augmented image differs every epoch, the frozen stages' outputs cannot in general be
computed once and reused: with augmentation the frozen-prefix cache is bypassed and every epoch
runs the whole network. ``augment="flip"`` is the exception: an image has only two views, so the
frozen stages' outputs of both are cached (:class:`CachedFlips`) and each epoch draws one of
the two for every image, exactly as flipping the image would.
"""

from __future__ import annotations

import numpy as np
import torch

from ._data import _Batch

__all__ = ["BatchAugmenter", "CachedFlips", "light_augmentation"]


def light_augmentation(height, width):
    """``augment="light"``: a random crop of 70-100 % of the area, resized back, and a
    horizontal flip with probability 1/2.

    Parameters
    ----------
    height, width : int
        Size of the images (kept).

    Returns
    -------
    transform : torchvision.transforms.v2.Compose
        Applied to one ``(C, H, W)`` float tensor.

    Examples
    --------
    >>> import torch
    >>> from sktransfer.augment import light_augmentation
    >>> tuple(light_augmentation(24, 32)(torch.rand(3, 24, 32)).shape)
    (3, 24, 32)
    """
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop((int(height), int(width)), scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    )


def each_image(transform, x):
    """``transform`` applied to each ``(C, H, W)`` image of the batch ``x``, which it must
    return as a tensor of the same shape (else a ``ValueError`` says what came back)."""
    out = torch.empty_like(x)
    for i in range(len(x)):
        img = transform(x[i])
        if not isinstance(img, torch.Tensor) or tuple(img.shape) != tuple(x[i].shape):
            got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(
                f"augment must return a tensor of the shape it was given, "
                f"{tuple(x[i].shape)} (C, H, W); got {got}. Keep the image size (e.g. "
                "RandomResizedCrop((H, W), ...)) and return a tensor."
            )
        out[i] = img
    return out


class BatchAugmenter:
    """Apply a per-image transform to raw batches of any layout.

    Each image is handed to ``transform`` as a float32 ``(C, H, W)`` tensor scaled to [0, 1]
    (the convention of torchvision's transforms); the transform must return a tensor of the
    same shape. The batch comes back in its own layout and value scale (as float32), so the
    network's preprocessing treats it like the original.

    Parameters
    ----------
    transform : callable
        ``(C, H, W)`` tensor -> ``(C, H, W)`` tensor.
    spec : dict
        The input description from :func:`sktransfer._data.check_input`.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sktransfer.augment import BatchAugmenter
    >>> flip = BatchAugmenter(lambda img: img.flip(-1), {"layout": "nhwc", "scale": 255.0})
    >>> batch = torch.from_numpy(np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3))
    >>> flip(batch)[0, 0].tolist()
    [[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]
    """

    def __init__(self, transform, spec):
        self.transform = transform
        self.layout = spec["layout"]
        self.image_shape = tuple(spec.get("image_shape") or ())
        self.scale = float(spec.get("scale") or 1.0)

    def _to_nchw(self, xb):
        if self.layout == "flat":
            h, w = self.image_shape[:2]
            c = self.image_shape[2] if len(self.image_shape) == 3 else 1
            return xb.reshape(len(xb), h, w, c).permute(0, 3, 1, 2)
        if self.layout == "nhw":
            return xb.unsqueeze(1)
        if self.layout == "nhwc":
            return xb.permute(0, 3, 1, 2)
        return xb

    def _from_nchw(self, x):
        if self.layout == "flat":
            return x.permute(0, 2, 3, 1).reshape(len(x), -1)
        if self.layout == "nhw":
            return x[:, 0]
        if self.layout == "nhwc":
            return x.permute(0, 2, 3, 1)
        return x

    def __call__(self, xb):
        x = self._to_nchw(xb).to(torch.float32) / self.scale
        return self._from_nchw(each_image(self.transform, x) * self.scale).contiguous()

    def check(self, sample):
        """Run once on a raw sample batch, so a broken transform fails before training.

        Parameters
        ----------
        sample : torch.Tensor
            A few raw inputs, in the layout of the training data.

        Raises
        ------
        ValueError
            If the transform changes the image shape or returns no tensor.

        Examples
        --------
        >>> import torch
        >>> from sktransfer.augment import BatchAugmenter
        >>> crop = BatchAugmenter(lambda img: img[:, :1], {"layout": "nhwc", "scale": 255.0})
        >>> crop.check(torch.zeros(1, 2, 2, 3, dtype=torch.uint8))
        Traceback (most recent call last):
        ...
        ValueError: augment must return a tensor of the shape it was given, (3, 2, 2) ...
        """
        self(sample)


def make_augmenter(augment, spec):
    """The :class:`BatchAugmenter` for an ``augment`` hyperparameter value, or ``None``.

    Parameters
    ----------
    augment : None, "flip", "light" or callable
        ``None``: no augmentation; ``"flip"``: a horizontal flip with probability 1/2;
        ``"light"``: :func:`light_augmentation`; a callable (e.g. a torchvision transform) is
        applied to each ``(C, H, W)`` float image in [0, 1].
    spec : dict
        The input description from :func:`sktransfer._data.check_input`.

    Returns
    -------
    augmenter : BatchAugmenter or None
    """
    if augment is None:
        return None
    if spec.get("kind") == "vector":
        raise ValueError(
            f"augment={augment!r} transforms images, but the backbone takes vectors; use "
            "augment=None."
        )
    if augment == "flip":
        from torchvision.transforms import v2

        return BatchAugmenter(v2.RandomHorizontalFlip(), spec)
    if isinstance(augment, str):
        if augment != "light":
            raise ValueError(
                f"augment must be None, 'flip', 'light' or a callable, got {augment!r}."
            )
        if spec["layout"] == "flat":
            h, w = spec["image_shape"][:2]
        elif spec["layout"] == "nchw":
            h, w = spec["sample_shape"][1:3]
        else:
            h, w = spec["sample_shape"][:2]
        transform = light_augmentation(h, w)
    elif callable(augment):
        transform = augment
    else:
        raise ValueError(
            f"augment must be None, 'flip', 'light' or a callable, got {augment!r}."
        )
    return BatchAugmenter(transform, spec)


class CachedFlips(torch.utils.data.Dataset):
    """Training set of the frozen stages' outputs of each image and of its mirror image.

    Each time a sample is drawn, one of its two views is taken with probability 1/2 (from
    torch's random number generator, which ``fit`` seeds): the same as flipping the image
    before the frozen stages, without running them again.

    Parameters
    ----------
    plain, flipped : torch.Tensor
        Outputs of the frozen stages for the images and their mirror images, one row each.
    y : ndarray
        Targets.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sktransfer.augment import CachedFlips
    >>> ds = CachedFlips(torch.zeros(4, 2), torch.ones(4, 2), np.arange(4))
    >>> xb, yb = ds.__getitems__([0, 3])
    >>> set(xb.sum(1).tolist()) <= {0.0, 2.0}, yb.tolist()
    (True, [0, 3])
    """

    def __init__(self, plain, flipped, y):
        self.plain, self.flipped, self.y = plain, flipped, y

    def __len__(self):
        return len(self.plain)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        pick = (torch.rand(len(idx)) < 0.5).view(-1, *([1] * (self.plain.dim() - 1)))
        xb = torch.where(pick, self.flipped[idx], self.plain[idx])
        if self.plain.dim() == 4 and self.plain.is_contiguous(memory_format=torch.channels_last):
            xb = xb.contiguous(memory_format=torch.channels_last)
        return _Batch((xb, torch.as_tensor(self.y[idx.numpy()])))
