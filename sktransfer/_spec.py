"""What ``fit`` saw of X: layout, per-sample shape, value scale. Pure Python/numpy.

An :class:`InputSpec` is recorded by ``fit`` (``input_spec_``), drives the network's first module
(:class:`sktransfer._data.Preprocess`), checks the X given to ``predict``, and travels with a
saved model as a small JSON object (:meth:`InputSpec.to_dict` / :meth:`InputSpec.from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["InputSpec"]

_KINDS = ("image", "vector")
_LAYOUTS = ("flat", "nhw", "nhwc", "nchw")
_SOURCES = (None, "files", "pil", "files+pil")


def _is_int(v, lo):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo


@dataclass(frozen=True)
class InputSpec:
    """The input an estimator was fitted on.

    Parameters
    ----------
    kind : {"image", "vector"}
        What the backbone consumes.
    layout : {"flat", "nhw", "nhwc", "nchw"}
        How each sample is laid out: rows (vectors, or images reshaped by ``image_shape``),
        grayscale ``(H, W)``, channels last or channels first.
    sample_shape : tuple of int
        Shape of one sample as given (``X.shape[1:]``).
    dtype : str
        numpy dtype name of X.
    scale : float
        The value that stands for full intensity: 255 for 8-bit images, 65535 for 16-bit, 1 for
        floats and vectors.
    channels : int or None
        Channels per image (``None`` for vectors).
    image_shape : tuple of int or None
        ``(H, W)`` or ``(H, W, C)`` of the images held in rows (``layout="flat"``).
    source : {"files", "pil", "files+pil"} or None
        Where decoded images came from (``None`` for arrays).
    decode_size : int or None
        Side of the squares that image files and PIL images are decoded to.

    Examples
    --------
    >>> from sktransfer._spec import InputSpec
    >>> spec = InputSpec(kind="image", layout="nhwc", sample_shape=(28, 28, 1), dtype="uint8",
    ...                  scale=255.0, channels=1)
    >>> spec["layout"], spec.get("decode_size")
    ('nhwc', None)
    >>> InputSpec.from_dict(spec.to_dict()) == spec
    True
    """

    kind: str
    layout: str
    sample_shape: tuple
    dtype: str
    scale: float = 1.0
    channels: int | None = None
    image_shape: tuple | None = None
    source: str | None = None
    decode_size: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "sample_shape", tuple(int(s) for s in self.sample_shape))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        object.__setattr__(self, "scale", float(self.scale))

    # Read access by key, as for the dict this replaced (``input_spec_["decode_size"]``).
    def __getitem__(self, key):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key, default=None):
        """The field ``key``, or ``default`` when it is unset or not a field.

        Examples
        --------
        >>> from sktransfer._spec import InputSpec
        >>> InputSpec("vector", "flat", (4,), "float32").get("channels", 0)
        0
        """
        value = getattr(self, key, None) if key in self.__dataclass_fields__ else None
        return default if value is None else value

    def replace(self, **changes):
        """A copy with some fields changed.

        Examples
        --------
        >>> from sktransfer._spec import InputSpec
        >>> InputSpec("vector", "flat", (4,), "float32").replace(sample_shape=(5,)).sample_shape
        (5,)
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """A plain dict (tuples kept), for JSON encoding and cache keys.

        Examples
        --------
        >>> from sktransfer._spec import InputSpec
        >>> InputSpec("vector", "flat", (4,), "float32").to_dict()["sample_shape"]
        (4,)
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        """Check a dict read from an untrusted file and build the spec.

        Raises
        ------
        ValueError
            Naming the first field that is missing, unknown or of the wrong kind.

        Examples
        --------
        >>> from sktransfer._spec import InputSpec
        >>> InputSpec.from_dict({"kind": "code", "layout": "flat", "sample_shape": (4,),
        ...                      "dtype": "float32"})
        Traceback (most recent call last):
        ...
        ValueError: needs kind 'image' or 'vector'
        """
        if not isinstance(data, dict):
            raise ValueError("must be an object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"has unknown fields {unknown}")

        def check(cond, what):
            if not cond:
                raise ValueError(what)

        check(data.get("kind") in _KINDS, "needs kind 'image' or 'vector'")
        check(data.get("layout") in _LAYOUTS, "needs a known layout")
        shape = data.get("sample_shape")
        check(
            isinstance(shape, tuple) and len(shape) > 0 and all(_is_int(s, 1) for s in shape),
            "needs sample_shape, a tuple of positive integers",
        )
        image_shape = data.get("image_shape")
        check(
            image_shape is None
            or (isinstance(image_shape, tuple) and len(image_shape) in (2, 3)
                and all(_is_int(s, 1) for s in image_shape)),
            "needs image_shape, a tuple of 2 or 3 positive integers, or null",
        )
        channels = data.get("channels")
        check(channels is None or _is_int(channels, 1), "needs channels, an integer or null")
        scale = data.get("scale", 1.0)
        check(
            isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0,
            "needs scale, a positive number",
        )
        check(isinstance(data.get("dtype"), str), "needs dtype, a numpy dtype name")
        try:
            dtype = np.dtype(data["dtype"])
        except TypeError as exc:
            raise ValueError(f"needs dtype, a numpy dtype name ({exc})") from None
        check(dtype.kind in "biuf", "needs a numeric dtype")
        check(data.get("source") in _SOURCES, "needs source 'files', 'pil', 'files+pil' or null")
        size = data.get("decode_size")
        check(size is None or _is_int(size, 1), "needs decode_size, a positive integer or null")
        return cls(**data)
