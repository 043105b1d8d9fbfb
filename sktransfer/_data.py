"""X in the forms users hold it -> batches the backbone can eat. Pure numpy/PyTorch.

Rules (the user guide repeats them):

* ``uint8`` (and other integer) images are in [0, 255], ``uint16`` in [0, 65535]; float and bool
  images are in [0, 1] (float images with values above 1 raise a :class:`FloatScaleWarning`
  naming the fix, ``X / 255``). Vectors for vector backbones are used as they are.
* 4-D arrays are ``(N, H, W, C)`` when the last axis has 1-4 entries, else ``(N, C, H, W)``;
  3-D arrays are grayscale ``(N, H, W)``; 2-D arrays go to vector backbones as they are, or to
  image backbones reshaped by ``image_shape=(H, W)`` or ``(H, W, C)``.
* Channels: grayscale is repeated to RGB (or the stem convolution is adapted, see
  ``grayscale="adapt"``); RGBA drops alpha; gray+alpha keeps gray.
* Conversion, resizing (bilinear, antialiased) and normalisation happen per batch inside the
  network's first module, so a data set is never materialised as float32 at the target size.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils import check_array
from torch import nn

from ._spec import InputSpec
from .images import ImageSource, check_image_input, is_image_list

__all__ = [
    "ArrayDataset",
    "ArraySource",
    "FloatScaleWarning",
    "InputSpec",
    "Preprocess",
    "check_input",
    "check_same_input",
    "make_source",
]


def _scale_for(dtype, kind):
    if kind == "vector":
        return 1.0
    if dtype == np.uint16:
        return 65535.0
    if np.issubdtype(dtype, np.integer):
        return 255.0
    return 1.0


def check_input(X, *, input_kind, image_shape=None, estimator=None, image_size=None,
                on_bad_image="raise"):
    """Validate X and describe it.

    A list (or 1-D array) of file paths or PIL images is decoded lazily to ``image_size``
    (see :mod:`sktransfer.images`); every image is read once now, so that unreadable ones are
    reported before training starts.

    Returns
    -------
    X : ndarray or ImageSource
        The validated array, uint8 kept as uint8 (no copy when none is needed); for paths and
        PIL images a :class:`~sktransfer.images.ImageSource`.
    spec : InputSpec
        Layout and scaling to pass to :class:`Preprocess`.
    """
    if is_image_list(X):
        if input_kind != "image":
            raise ValueError(
                "X holds image files or PIL images but the backbone takes 2-D vectors "
                "(n_samples, n_features); use an image backbone."
            )
        return check_image_input(X, size=image_size, on_bad_image=on_bad_image)
    X = _check_array(X, estimator)
    dtype = str(X.dtype)
    if input_kind == "vector":
        if X.ndim != 2:
            raise ValueError(
                f"This backbone takes 2-D X (n_samples, n_features), got X of shape {X.shape}. "
                "Reshape your data, e.g. X.reshape(len(X), -1)."
            )
        return X, InputSpec("vector", "flat", X.shape[1:], dtype, scale=1.0)
    _warn_if_float_beyond_one(X)
    layout = _image_layout(X, image_shape)
    return X, InputSpec("image", sample_shape=X.shape[1:], dtype=dtype,
                        scale=_scale_for(X.dtype, input_kind), **layout)


def _check_array(X, estimator):
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = check_array(
        X,
        accept_sparse=False,
        dtype="numeric",
        allow_nd=True,
        ensure_all_finite=True,
        ensure_min_samples=1,
        ensure_min_features=1,
        estimator=estimator,
        input_name="X",
    )
    if X.dtype == object or not (
        np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_
    ):
        raise ValueError(
            f"X must hold numbers, got dtype {X.dtype}. Convert it with np.asarray(X, float)."
        )
    if np.iscomplexobj(X):
        raise ValueError("Complex data not supported; X must be real-valued.")
    if X.ndim > 4:
        raise ValueError(
            f"X has {X.ndim} dimensions; expected 2-D (n_samples, n_features), 3-D grayscale "
            "images (n_samples, H, W) or 4-D images (n_samples, H, W, C) / (n_samples, C, H, W)."
        )
    if any(s == 0 for s in X.shape[1:]):
        raise ValueError(f"X has shape {X.shape}: 0 feature(s) per sample; nothing to learn from.")
    return X


class FloatScaleWarning(UserWarning):
    """Float images hold values above 1, where [0, 1] is expected."""


def _warn_if_float_beyond_one(X):
    """Float images are read as [0, 1]; 0-255 floats (``X.astype(float)`` without ``/ 255``)
    would train on saturated inputs, so they are never used silently."""
    if X.dtype.kind != "f" or X.size == 0:
        return
    top = float(X.max())
    if top > 1.0 + 1e-3:
        warnings.warn(
            f"X holds float images with values up to {top:g}, but float images are read as "
            "[0, 1] (integer images as [0, 255]): values above 1 saturate. If these are 8-bit "
            "pixel values, pass X / 255 (or the uint8 array itself).",
            FloatScaleWarning,
            stacklevel=4,
        )


def _image_layout(X, image_shape):
    """``layout``, ``channels`` (and ``image_shape`` for rows) of an image array."""
    if X.ndim == 2:
        if image_shape is None:
            raise ValueError(
                f"X is 2-D {X.shape} but the backbone takes images. Pass image_shape=(H, W) or "
                "(H, W, C) so each row can be reshaped, or give X as images (N, H, W[, C])."
            )
        shape = tuple(int(s) for s in image_shape)
        if int(np.prod(shape)) != X.shape[1]:
            raise ValueError(
                f"image_shape={shape} holds {int(np.prod(shape))} values but X has "
                f"{X.shape[1]} features per sample."
            )
        if len(shape) not in (2, 3):
            raise ValueError(f"image_shape must be (H, W) or (H, W, C), got {image_shape!r}.")
        channels = 1 if len(shape) == 2 else shape[-1]
        return {"layout": "flat", "image_shape": shape, "channels": channels}
    if X.ndim == 3:
        return {"layout": "nhw", "channels": 1}
    last, first = X.shape[-1], X.shape[1]
    if last in (1, 2, 3, 4) and not (first in (1, 2, 3, 4) and last > first):
        return {"layout": "nhwc", "channels": last}
    if first in (1, 2, 3, 4):
        return {"layout": "nchw", "channels": first}
    raise ValueError(
        f"Cannot tell the channel axis of X with shape {X.shape}: expected "
        "(N, H, W, C) or (N, C, H, W) with 1 (gray), 3 (RGB) or 4 (RGBA) channels."
    )


def check_same_input(X, spec, *, image_shape=None, estimator=None, resize=False):
    """Validate X at predict time against the spec recorded by ``fit``.

    Paths and PIL images are accepted when ``fit`` saw them (they are decoded to the fitted
    size); arrays in the other channel layout (NCHW vs NHWC) or value scale (uint8 vs float in
    [0, 1]) than in ``fit`` are converted to the fitted ones.
    """
    if is_image_list(X):
        if spec.decode_size is None:
            raise ValueError(
                "X holds image files or PIL images but the model was fitted on arrays of "
                f"per-sample shape {spec.sample_shape}; pass arrays like those, or fit on files."
            )
        return check_image_input(X, size=spec.decode_size, validate=False)[0]
    if len(spec.sample_shape) > 1 and tuple(getattr(X, "shape", ())) == spec.sample_shape:
        raise ValueError(
            f"X has shape {tuple(X.shape)}, the shape of a single sample; predict takes a batch. "
            "Reshape your data with X[np.newaxis] (or X.reshape(1, *X.shape)) if it contains "
            "a single sample."
        )
    X, new = check_input(X, input_kind=spec.kind, image_shape=image_shape, estimator=estimator)
    if {new.layout, spec.layout} == {"nhwc", "nchw"} and new.channels == spec.channels:
        X = np.moveaxis(X, 1, -1) if spec.layout == "nhwc" else np.moveaxis(X, -1, 1)
        new = new.replace(layout=spec.layout, sample_shape=X.shape[1:])
    if new.scale != spec.scale:
        # Preprocess divides by the scale seen in fit: bring X to it (uint8 fit, float predict)
        X = X.astype(np.float32) * np.float32(spec.scale / new.scale)
    expected, got = spec.sample_shape, new.sample_shape
    if spec.layout == "flat" or new.layout == "flat":
        if expected != got:
            name = type(estimator).__name__ if estimator is not None else "the estimator"
            raise ValueError(
                f"X has {got[-1]} features, but {name} is expecting {expected[-1]} features "
                "as input."
            )
        return X
    if new.channels != spec.channels:
        raise ValueError(
            f"X has {new.channels} channel(s) per image but the model was fitted on "
            f"{spec.channels}: expected per-sample shape {expected}, got {got}."
        )
    if not resize and expected != got:
        raise ValueError(
            f"X has per-sample shape {got} but the model was fitted on {expected}. Resize the "
            "images to the fitted size, or fit with input_size=... so every image is resized "
            "to one size."
        )
    return X


class Preprocess(nn.Module):
    """Raw batch -> normalised float batch, on whatever device the batch is on.

    Parameters
    ----------
    spec : InputSpec
        From :func:`check_input`.
    in_channels : int
        Channels the backbone's first layer takes.
    size : int or None
        Square size to resize to (``None``: keep the input's size).
    mean, std : tuple or None
        Normalisation after scaling to [0, 1].
    channels_last : bool
        Return a ``channels_last`` tensor (faster convolutions on CPU).
    """

    def __init__(self, spec, *, in_channels=3, size=None, mean=None, std=None,
                 channels_last=False):
        super().__init__()
        self.kind = spec["kind"]
        self.layout = spec["layout"]
        self.image_shape = tuple(spec.get("image_shape") or ())
        self.scale = float(spec["scale"])
        self.channels = spec.get("channels")
        self.in_channels = in_channels
        self.size = None if size is None else (int(size), int(size))
        self.channels_last = channels_last
        if mean is not None:
            self.register_buffer(
                "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
            )
            self.register_buffer(
                "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
            )
        else:
            self.mean = None
            self.std = None

    def forward(self, x):
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        if self.kind == "vector":
            return x
        if self.scale != 1.0:
            x = x / self.scale
        if self.layout == "flat":
            h, w = self.image_shape[:2]
            c = self.image_shape[2] if len(self.image_shape) == 3 else 1
            x = x.reshape(x.shape[0], h, w, c).permute(0, 3, 1, 2)
        elif self.layout == "nhw":
            x = x.unsqueeze(1)
        elif self.layout == "nhwc":
            x = x.permute(0, 3, 1, 2)
        c = x.shape[1]
        if c == 4:
            x = x[:, :3]
        elif c == 2:
            x = x[:, :1]
        c = x.shape[1]
        if c == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and self.in_channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
            x = (x * w.view(1, 3, 1, 1)).sum(1, keepdim=True)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                              antialias=True)
        if self.mean is not None:
            mean, std = self.mean, self.std
            if mean.shape[1] != x.shape[1]:
                mean, std = mean.mean(1, keepdim=True), std.mean(1, keepdim=True)
            x = (x - mean) / std
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = x.contiguous()
        return x


class ArraySource:
    """Samples held in a numpy array (or a tensor of cached activations).

    A *source* is what the training and prediction loops index: ``len(source)``,
    ``source.batch(indices)`` (a raw batch tensor), ``source.take(indices)`` (a cheap subset)
    and ``source.digests()`` (one digest per sample, for the activation cache). Other inputs
    (file paths, PIL images) provide the same four methods.
    """

    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def batch(self, indices):
        idx = np.asarray(indices)
        if isinstance(self.X, torch.Tensor):
            return self.X[torch.as_tensor(idx, dtype=torch.long)]
        return torch.from_numpy(np.ascontiguousarray(self.X[idx]))

    def take(self, indices):
        return type(self)(self.X[np.asarray(indices)])

    def digests(self):
        X = self.X
        tag = f"{X.dtype}{tuple(X.shape[1:])}".encode()
        out = []
        for i in range(len(X)):
            h = hashlib.blake2b(tag, digest_size=16)
            h.update(np.ascontiguousarray(X[i]).data)
            out.append(h.digest())
        return out


def make_source(X, spec=None):
    """The source for validated input X (see :func:`check_input`)."""
    if hasattr(X, "batch") and hasattr(X, "digests"):
        return X
    if spec is not None and spec.get("decode_size") is not None and not hasattr(X, "shape"):
        return ImageSource(X, spec["decode_size"])
    return ArraySource(X)


class ArrayDataset(torch.utils.data.Dataset):
    """Batches from a source (and targets), optionally transformed per sample for training."""

    def __init__(self, source, y=None, transform=None):
        self.source = source if hasattr(source, "batch") else ArraySource(source)
        self.y = y
        self.transform = transform

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        idx = np.asarray(indices)
        xb = self.source.batch(idx)
        if self.transform is not None:
            xb = self.transform(xb)
        yb = torch.zeros(len(idx)) if self.y is None else torch.as_tensor(self.y[idx])
        return _Batch((xb, yb))


class _Batch(tuple):
    """A batch already assembled by ``__getitems__``."""


def collate_batch(items):
    """DataLoader ``collate_fn`` that accepts whole batches from ``__getitems__``."""
    if isinstance(items, _Batch):
        return tuple(items)
    if len(items) == 1 and isinstance(items[0], _Batch):
        return tuple(items[0])
    return torch.utils.data.default_collate(items)
