"""Images as users hold them: files on disk and PIL images -> fixed-size uint8 batches.

Estimators accept, besides arrays, a list (or 1-D array, or pandas Series) of file paths
(``str`` or :class:`pathlib.Path`) and a list of :class:`PIL.Image.Image`. Such X is never
decoded as a whole: a :class:`ImageSource` opens, converts and resizes only the images of the
batch being processed, so a folder of any size trains in bounded memory. Lists slice cheaply,
so :class:`~sklearn.model_selection.GridSearchCV` and ``cross_val_score`` work on them unchanged.

Decoding rules (applied identically in ``fit`` and ``predict``):

* The EXIF orientation tag is applied (:func:`PIL.ImageOps.exif_transpose`), so a photo is
  seen the way a viewer shows it.
* Every image becomes 8-bit RGB:

  - grayscale (``L``, ``1``) is repeated to three channels;
  - 16-bit and 32-bit integer grayscale (``I;16*``, ``I``) is taken to span [0, 65535] and
    divided by 257 (65535 -> 255), values outside clipped; float grayscale (``F``) is taken to
    span [0, 1] and multiplied by 255, as float arrays are (see :mod:`sktransfer._data`);
  - transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour) is
    composited on a white background, as a page shows it;
  - ``CMYK`` and the other colour spaces use Pillow's built-in conversion to RGB (no ICC
    colour management); palette images are expanded to their colours.

* Resizing: the shorter side is scaled to ``size`` and the longer side centre-cropped to
  ``size`` (one bilinear, antialiased resampling of the centred square), keeping the whole of
  the shorter side. Large JPEGs are decoded at a reduced scale first (libjpeg's DCT scaling)
  whenever that still leaves at least ``size`` pixels on each side.
* Only the first frame of animated or multi-page files is used.

Bad files: ``fit`` decodes every image once before training starts, so that all unreadable
files (missing, empty, truncated, corrupt, not an image) are reported together in one
``ValueError`` listing their paths. To leave them out instead, drop them where the data is
loaded: :func:`drop_unreadable` for a list of paths (and its targets), or
``sktransfer.datasets.load_image_folder(..., on_bad_image="skip")``. Pillow's
``DecompressionBombError`` is never caught, and no global Pillow setting
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) is ever changed.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image

from ._decode import (
    PROPAGATE,
    Unreadable,
    as_list,
    bytes_digest,
    check_size,
    content_digest,
    decode_item,
    is_item,
    name_of,
    origin,
    read_bytes,
    unreadable_reason,
)
from ._spec import InputSpec

__all__ = ["BadImageError", "decode_image", "drop_unreadable", "is_image_list", "load_images"]

_MAX_LISTED = 100

# Side at which images are decoded only to check that they can be read: small, so that the
# check is cheap (large JPEGs are decoded at a reduced scale), through every decoding step.
_CHECK_SIZE = 32


class BadImageError(ValueError):
    """Some images could not be read; ``paths`` names every one of them.

    A subclass of :class:`ValueError`. Estimators raise it in ``fit`` and ``predict`` after
    checking every image, so one run lists them all; ``reasons`` says, in the same order, why
    each could not be read. :func:`drop_unreadable` and
    ``sktransfer.datasets.load_image_folder(..., on_bad_image="skip")`` leave such files out
    instead.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from sktransfer.images import BadImageError, load_images
    >>> folder = tempfile.mkdtemp()
    >>> good = os.path.join(folder, "good.png")
    >>> Image.new("RGB", (8, 8)).save(good)
    >>> bad = os.path.join(folder, "bad.png")
    >>> with open(bad, "wb") as fh:
    ...     _ = fh.write(b"not an image")
    >>> try:
    ...     load_images([good, bad], 8)
    ... except BadImageError as exc:
    ...     print([os.path.basename(p) for p in exc.paths], exc.reasons)
    ['bad.png'] ['not an image file Pillow can read']
    """

    def __init__(self, message, paths=(), reasons=()):
        super().__init__(message)
        self.paths = list(paths)
        self.reasons = list(reasons)


def bad_images_error(names, reasons, n_images, remedy):
    """The :class:`BadImageError` that lists ``names`` (with their ``reasons``) among
    ``n_images`` images, and says what to do (``remedy``)."""
    lines = [f"  {name}: {reason}" for name, reason in zip(names[:_MAX_LISTED], reasons)]
    if len(names) > _MAX_LISTED:
        lines.append(
            f"  ... and {len(names) - _MAX_LISTED} more (listed in the error's .paths)"
        )
    return BadImageError(
        f"{len(names)} of {n_images} images could not be read. {remedy}:\n" + "\n".join(lines),
        paths=names,
        reasons=reasons,
    )


# ---------------------------------------------------------------------------------------------
# Telling image lists apart
# ---------------------------------------------------------------------------------------------


def is_image_list(X):
    """Whether X is a non-empty list, tuple, 1-D array or Series of paths or PIL images.

    Parameters
    ----------
    X : object
        Anything given as X.

    Returns
    -------
    answer : bool
        True when every element is a ``str``, a path-like object or a ``PIL.Image.Image``.

    Examples
    --------
    >>> from pathlib import Path
    >>> from sktransfer.images import is_image_list
    >>> is_image_list(["a.jpg", Path("b.png")]), is_image_list([[0.5, 1.0]])
    (True, False)
    """
    if isinstance(X, (str, os.PathLike, Image.Image)):
        raise ValueError(
            f"X is a single {'image' if isinstance(X, Image.Image) else 'path'}; pass a list "
            "of them (e.g. [X]), or load a folder with sktransfer.datasets.load_image_folder."
        )
    items = as_list(X)
    return bool(items) and all(is_item(item) for item in items)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def decode_image(image, size):
    """Decode one image the way estimators do.

    Parameters
    ----------
    image : str, path-like or PIL.Image.Image
        A file or an image in memory.
    size : int
        Side of the square output.

    Returns
    -------
    pixels : ndarray of shape (size, size, 3), dtype uint8
        RGB pixels, after EXIF orientation, mode conversion, resizing and centre cropping
        (rules in :mod:`sktransfer.images`).

    Examples
    --------
    >>> from PIL import Image
    >>> from sktransfer.images import decode_image
    >>> decode_image(Image.new("LA", (60, 30), (0, 0)), 16)[0, 0].tolist()  # transparent
    [255, 255, 255]
    """
    try:
        return decode_item(image, check_size(size))
    except Unreadable as exc:
        raise ValueError(f"{name_of([image], 0)}: {exc}") from None


def load_images(images, size):
    """Decode a list of files or PIL images into one array.

    Use it to look at exactly what an estimator sees, or to keep a small data set decoded in
    memory. Unreadable images are all reported in one :class:`BadImageError`.

    Parameters
    ----------
    images : list of str, path-like or PIL.Image.Image
        The images.
    size : int
        Side of the square images.

    Returns
    -------
    pixels : ndarray of shape (n_images, size, size, 3), dtype uint8
        The decoded images.

    Examples
    --------
    >>> from PIL import Image
    >>> from sktransfer.images import load_images
    >>> load_images([Image.new("L", (40, 20)), Image.new("RGB", (8, 8))], 16).shape
    (2, 16, 16, 3)
    """
    items = as_list(images)
    if not items or not all(is_item(item) for item in items):
        raise ValueError("images must be a non-empty list of paths or PIL images.")
    return ImageSource(items, size).batch(np.arange(len(items))).numpy()


# ---------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------


class ImageSource:
    """Images decoded lazily, batch by batch, to ``(size, size, 3)`` uint8.

    A *source* in the sense of :class:`sktransfer._data.ArraySource`: ``len``,
    ``batch(indices)`` (decodes only those images), ``take(indices)`` and ``digests()``.

    The digest of a file is a hash of its bytes (not of its path or modification time): a copy
    or a renamed file shares cached activations with the original, and a file edited in place
    never reuses stale ones. The digest of a PIL image hashes its mode, size and pixels.

    Parameters
    ----------
    items : list of str, path-like or PIL.Image.Image
        The images.
    size : int
        Side of the decoded squares.

    Examples
    --------
    >>> from PIL import Image
    >>> from sktransfer.images import ImageSource
    >>> src = ImageSource([Image.new("RGB", (64, 48), "red")] * 3, 32)
    >>> len(src), tuple(src.batch([0, 2]).shape)
    (3, (2, 32, 32, 3))
    """

    def __init__(self, items, size, *, digests=None, kept=None, n_given=None):
        self.items = list(items)
        self.size = check_size(size)
        self._digests = None if digests is None else list(digests)
        #: indices into the X the user gave of the images kept (``on_bad_image="skip"``)
        self.kept = kept
        self.n_given = len(self.items) if n_given is None else n_given

    def __len__(self):
        return len(self.items)

    @property
    def shape(self):
        """``(n_images, size, size, 3)``: the shape of the images once decoded."""
        return (len(self.items), self.size, self.size, 3)

    def batch(self, indices):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), self.size, self.size, 3), dtype=np.uint8)
        for j, i in enumerate(idx):
            try:
                out[j] = decode_item(self.items[i], self.size)
            except PROPAGATE:
                raise
            except Exception:  # noqa: BLE001 - report every bad image at once instead
                raise self._bad_images_error(self._scan()) from None
        return torch.from_numpy(out)

    def take(self, indices):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        digests = None if self._digests is None else [self._digests[i] for i in idx]
        return type(self)([self.items[i] for i in idx], self.size, digests=digests)

    def digests(self):
        if self._digests is None:
            self._digests = [content_digest(item) for item in self.items]
        return list(self._digests)

    # -- validation ------------------------------------------------------------------------

    def _check_one(self, i):
        """Decode image ``i`` once; its digest, or the reason it cannot be read."""
        item = self.items[i]
        try:
            if isinstance(item, Image.Image):
                decode_item(item, self.size)
                return content_digest(item), None
            data = read_bytes(item)
            decode_item(item, self.size, data)
            return bytes_digest(data), None
        except PROPAGATE:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure makes the file unreadable
            return None, unreadable_reason(exc)

    def _scan(self):
        bad = []
        for i in range(len(self.items)):
            _, reason = self._check_one(i)
            if reason is not None:
                bad.append((i, reason))
        return bad

    def _bad_images_error(self, bad, *, fitting=False, remedy="Fix or remove them"):
        if fitting:
            remedy += (", or leave them out with sktransfer.images.drop_unreadable(X, y) (or "
                       "load_image_folder(..., on_bad_image='skip'))")
        return bad_images_error(
            [name_of(self.items, i) for i, _ in bad], [reason for _, reason in bad],
            len(self.items), remedy,
        )

    def validated(self, on_bad_image="raise"):
        """Decode every image once; raise on (or skip) the unreadable ones.

        This reads each file once more than training needs: it is the price of reporting all
        bad files before training starts rather than one at a time, epochs into a fit. The
        digests computed on the way are kept, so the activation cache does not read them again.
        """
        digests, bad = [], []
        for i in range(len(self.items)):
            digest, reason = self._check_one(i)
            digests.append(digest)
            if reason is not None:
                bad.append((i, reason))
        if not bad:
            return type(self)(self.items, self.size, digests=digests)
        if on_bad_image != "skip" or len(bad) == len(self.items):
            raise self._bad_images_error(bad, fitting=on_bad_image != "skip")
        skipped = {i for i, _ in bad}
        kept = np.array([i for i in range(len(self.items)) if i not in skipped], dtype=np.int64)
        names = ", ".join(f"{name_of(self.items, i)} ({reason})" for i, reason in bad)
        warnings.warn(
            f"Skipped {len(bad)} of {len(self.items)} images that could not be read (their "
            f"targets are dropped too): {names}",
            UserWarning,
            stacklevel=5,
        )
        return type(self)(
            [self.items[i] for i in kept],
            self.size,
            digests=[digests[i] for i in kept],
            kept=kept,
            n_given=len(self.items),
        )


def check_image_input(X, *, size, on_bad_image="raise", validate=True):
    """Validate a list of paths or PIL images and describe it.

    Parameters
    ----------
    X : list, tuple, 1-D array or Series of str, path-like or PIL.Image.Image
        The images.
    size : int
        Side of the decoded squares.
    on_bad_image : {"raise", "skip"}, default="raise"
        What to do with unreadable images when ``validate`` is True.
    validate : bool, default=True
        Decode every image once now (``fit``); otherwise unreadable images are reported when
        first decoded (``predict``), still all at once.

    Returns
    -------
    source : ImageSource
        The images, decoded lazily; ``source.kept`` holds the indices of the images kept when
        some were skipped.
    spec : InputSpec
        The decoded layout: ``(size, size, 3)`` uint8 NHWC, with ``source`` ("files", "pil" or
        "files+pil") and ``decode_size``.
    """
    items = as_list(X)
    src = ImageSource(items, size)
    if validate:
        src = src.validated(on_bad_image)
    spec = InputSpec(
        kind="image",
        dtype="uint8",
        scale=255.0,
        layout="nhwc",
        channels=3,
        sample_shape=(src.size, src.size, 3),
        source=origin(items),
        decode_size=src.size,
    )
    return src, spec


def take_rows(y, kept, n_given):
    """The rows of y that belong to the kept images (y of any array-like kind)."""
    if y is None or kept is None:
        return y
    n_y = len(y)
    if n_y != n_given:
        raise ValueError(
            f"Found input variables with inconsistent numbers of samples: [{n_given}, {n_y}]"
        )
    if hasattr(y, "iloc"):
        return y.iloc[kept]
    return np.asarray(y)[kept]


# ---------------------------------------------------------------------------------------------
# Leaving unreadable images out, where the data is loaded
# ---------------------------------------------------------------------------------------------


def readable_indices(items, on_bad_image="raise", *, option="on_bad_image='skip'",
                     stacklevel=2):
    """Indices of the images among ``items`` that can be read (each is decoded once, small).

    With ``on_bad_image="raise"`` one :class:`BadImageError` lists every unreadable image and
    names ``option`` as the way to leave them out; with ``"skip"`` they are left out with a
    warning naming them, which ``stacklevel`` points at the caller's caller. When no image
    can be read, :class:`BadImageError` either way.
    """
    bad = ImageSource(items, _CHECK_SIZE)._scan()
    if not bad:
        return np.arange(len(items))
    names = [name_of(items, i) for i, _ in bad]
    reasons = [reason for _, reason in bad]
    if on_bad_image != "skip":
        remedy = f"Fix or remove them, or pass {option} to leave them out"
        raise bad_images_error(names, reasons, len(items), remedy)
    if len(bad) == len(items):
        raise bad_images_error(names, reasons, len(items), "No image is left: fix them")
    listed = ", ".join(f"{name} ({reason})" for name, reason in zip(names, reasons))
    warnings.warn(
        f"Skipped {len(bad)} of {len(items)} images that could not be read: {listed}",
        UserWarning,
        stacklevel=stacklevel + 1,
    )
    skipped = {i for i, _ in bad}
    return np.array([i for i in range(len(items)) if i not in skipped], dtype=np.int64)


def _take(X, indices):
    if isinstance(X, (list, tuple)):
        return [X[i] for i in indices]
    if hasattr(X, "iloc"):
        return X.iloc[indices]
    return np.asarray(X)[indices]


def drop_unreadable(X, y=None):
    """Leave out the images that cannot be read, and their targets, with a warning.

    Estimators refuse unreadable files: ``fit`` raises one :class:`BadImageError` listing
    them all before training starts. Where leaving them out is what you want, do it here,
    before ``fit``, so that the samples and the targets an estimator sees are the ones you
    pass it. Each image is decoded once (at a small size, which is cheap).

    Parameters
    ----------
    X : list, tuple, 1-D array or Series of str, path-like or PIL.Image.Image
        The images.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs), default=None
        Targets, left out along with their images.

    Returns
    -------
    X_kept : list, ndarray or Series
        The readable images in their order, of the kind of ``X`` (a list for a tuple).
    y_kept : list, ndarray or Series
        Their targets, of the kind of ``y``; only returned when ``y`` is given.

    Raises
    ------
    BadImageError
        When no image can be read.

    Warns
    -----
    UserWarning
        Naming every image left out and why it could not be read.

    See Also
    --------
    sktransfer.datasets.load_image_folder : Lists a folder of images;
        ``on_bad_image="skip"`` drops the unreadable ones there.

    Examples
    --------
    >>> import os, tempfile, warnings
    >>> from PIL import Image
    >>> from sktransfer.images import drop_unreadable
    >>> folder = tempfile.mkdtemp()
    >>> good = os.path.join(folder, "good.png")
    >>> Image.new("RGB", (8, 8)).save(good)
    >>> empty = os.path.join(folder, "empty.png")
    >>> open(empty, "wb").close()
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     X, y = drop_unreadable([good, empty], ["cat", "dog"])
    >>> [os.path.basename(path) for path in X], y
    (['good.png'], ['cat'])
    >>> print(str(caught[0].message).replace(folder + os.sep, ""))
    Skipped 1 of 2 images that could not be read: empty.png (empty file)
    """
    items = as_list(X)
    if not items or not all(is_item(item) for item in items):
        raise ValueError("X must be a non-empty list of paths or PIL images.")
    if y is not None and len(y) != len(items):
        raise ValueError(
            f"Found input variables with inconsistent numbers of samples: "
            f"[{len(items)}, {len(y)}]"
        )
    kept = readable_indices(items, "skip")
    X_kept = _take(X, kept)
    return X_kept if y is None else (X_kept, _take(y, kept))
