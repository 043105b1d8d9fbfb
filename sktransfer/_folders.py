"""Image files in folders: a ``root/<class>/<image>`` tree, or every image under one folder.

Both scans are torchvision's ``ImageFolder`` scan (:func:`torchvision.datasets.folder.
find_classes` and :func:`~torchvision.datasets.folder.make_dataset`): classes sorted, the files
of each class found recursively (symbolic links followed) and sorted folder by folder. Hidden
files and folders (names starting with ``"."``) are left out. torchvision is imported when a
scan runs, not with this module, so that :mod:`sktransfer.datasets` imports without torch.
"""

import os

__all__ = ["IMAGE_EXTENSIONS", "image_files", "scan_class_folders"]

#: File name endings :func:`~sktransfer.datasets.load_image_folder` accepts by default
#: (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _visible_files_ending_in(top, extensions):
    """``is_valid_file`` for make_dataset: the name ends with one of ``extensions``
    (lower case) and no part of the path below ``top`` is hidden."""
    top = os.path.expanduser(top)

    def is_valid_file(path):
        if not path.lower().endswith(extensions):
            return False
        return not any(part.startswith(".") for part in os.path.relpath(path, top).split(os.sep))

    return is_valid_file


def scan_class_folders(root, extensions=IMAGE_EXTENSIONS):
    """The images of a ``root/<class>/<image>`` tree.

    Returns ``(paths, labels, classes, empty)``: the image files class by class, the class
    (folder name) of each, the sorted class names, and the classes without any image.
    ``extensions`` must be lower case.
    """
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        classes, _ = find_classes(root)
    except FileNotFoundError:  # not a single sub-folder
        classes = []
    classes = [c for c in classes if not c.startswith(".")]
    if not classes:
        return [], [], [], []
    samples = make_dataset(
        root,
        {c: i for i, c in enumerate(classes)},
        is_valid_file=_visible_files_ending_in(root, extensions),
        allow_empty=True,
    )
    labels = [classes[i] for _, i in samples]
    found = set(labels)
    return [p for p, _ in samples], labels, classes, [c for c in classes if c not in found]


def image_files(folder, extensions=IMAGE_EXTENSIONS):
    """Every image file under ``folder``, recursively, sorted folder by folder (the scan of a
    single class folder). ``extensions`` must be lower case."""
    from torchvision.datasets.folder import make_dataset

    parent, name = os.path.split(os.fspath(folder))
    samples = make_dataset(
        parent,
        {name: 0},
        is_valid_file=_visible_files_ending_in(os.fspath(folder), extensions),
        allow_empty=True,
    )
    return [p for p, _ in samples]
