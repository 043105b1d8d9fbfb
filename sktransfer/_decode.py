"""Decoding one image: a file or a PIL image becomes a ``(size, size, 3)`` uint8 square.

The helpers behind :mod:`sktransfer.images`, whose docstring states the rules: EXIF
orientation, conversion of every mode to RGB, shorter side scaled and longer side centre-cropped
in one bilinear resampling (:func:`PIL.ImageOps.fit`), JPEG draft decoding. Also the digests
that identify an image's content for the activation cache.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "PROPAGATE",
    "Unreadable",
    "as_list",
    "bytes_digest",
    "check_size",
    "content_digest",
    "decode_item",
    "is_item",
    "is_path",
    "name_of",
    "origin",
    "read_bytes",
    "unreadable_reason",
]


# Never swallowed: a decompression bomb is the user's to see, whatever the error policy.
PROPAGATE = (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError)


def is_path(item):
    return isinstance(item, (str, os.PathLike))


def is_item(item):
    return is_path(item) or isinstance(item, Image.Image)


def as_list(X):
    """X as a list when it is a 1-D collection that may hold images, else ``None``."""
    if isinstance(X, (list, tuple)):
        return list(X)
    if hasattr(X, "iloc") and getattr(X, "ndim", None) == 1:  # pandas Series
        X = X.to_numpy()
    if isinstance(X, np.ndarray) and X.ndim == 1 and X.dtype.kind in "OUS":
        return X.tolist() if X.dtype.kind != "S" else None
    return None


def origin(items):
    paths = sum(is_path(item) for item in items)
    if paths == len(items):
        return "files"
    return "pil" if paths == 0 else "files+pil"


def to_rgb(img):
    """Any Pillow mode -> ``RGB`` by the rules of the module docstring."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I"):
        a = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)).convert(
            "RGB"
        )
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
        return Image.fromarray(np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)).convert(
            "RGB"
        )
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def decode_pil(img, size, *, own):
    """A PIL image -> ``(size, size, 3)`` uint8 array. ``own``: the image is ours to mutate."""
    if own and img.format == "JPEG":
        img.draft(None, (size, size))  # DCT scaling: a decode-time reduction, never below size
    img = ImageOps.exif_transpose(img)
    # shorter side to size, centre crop of the longer one, in one bilinear resampling
    img = ImageOps.fit(to_rgb(img), (size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def read_bytes(path):
    data = Path(path).read_bytes()
    if not data:
        raise Unreadable("empty file")
    return data


class Unreadable(Exception):
    """A file that is not an image, with the reason to show."""


def decode_item(item, size, data=None):
    if isinstance(item, Image.Image):
        return decode_pil(item, size, own=False)
    if data is None:
        data = read_bytes(item)
    with Image.open(io.BytesIO(data)) as img:
        return decode_pil(img, size, own=True)


def unreadable_reason(exc):
    if isinstance(exc, Unreadable):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file Pillow can read"
    return f"{type(exc).__name__}: {exc}"


def name_of(items, i):
    item = items[i]
    if is_path(item):
        return os.fspath(item)
    filename = getattr(item, "filename", "")
    return f"PIL image at index {i}" + (f" ({filename})" if filename else "")


def check_size(size):
    if size is None:
        raise ValueError(
            "Image files and PIL images are decoded to one square size, and none is known: "
            "pass input_size=... (e.g. input_size=224)."
        )
    size = int(size)
    if size < 1:
        raise ValueError(f"The decode size must be a positive number of pixels, got {size}.")
    return size


def bytes_digest(data):
    return hashlib.blake2b(data, digest_size=16).digest()


def content_digest(item):
    if isinstance(item, Image.Image):
        h = hashlib.blake2b(f"{item.mode}{item.size}".encode(), digest_size=16)
        h.update(item.tobytes())
        return h.digest()
    try:
        return bytes_digest(read_bytes(item))
    except (OSError, Unreadable):
        # unreadable: a digest no real file has, so the cache never mixes it up
        return hashlib.blake2b(b"unreadable:" + os.fsencode(item), digest_size=16).digest()
