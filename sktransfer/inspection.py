"""Why did it predict that? Saliency maps, top losses and embedding maps of fitted estimators.

:func:`saliency_maps` shows where in each image the evidence for a prediction lies: Grad-CAM
(the gradient of the chosen output weighs the channels of the last convolutional stage) or
occlusion (how much the output drops when a square of the image is blanked out), computed by
`Captum <https://captum.ai>`_. The displays follow scikit-learn's ``*Display`` classes
(``from_estimator``, ``plot(ax=...)``, ``figure_`` and ``ax_``): :class:`SaliencyDisplay`
overlays the maps, :class:`TopLossesDisplay` shows the images the model gets most wrong (as
fastai's ``plot_top_losses``) and counts the classes it confuses (``most_confused``), and
:class:`EmbeddingDisplay` maps the backbone's features to 2-D, before and after fine-tuning.
:func:`save_explanations` writes overlays and predictions to a folder (the
``sktransfer explain`` command).

None of them changes the fitted model: hooks are removed, every parameter's ``requires_grad``
flag and every module's train/eval mode are restored, and the global RNG, thread count and
grad mode are left as found. Captum and matplotlib are imported only when a map is computed or
drawn: ``pip install 'sktransfer[inspect]'``.
"""

from __future__ import annotations

import csv
import os
from collections import Counter

import numpy as np
from sklearn.base import is_classifier

from ._displays import SaliencyDisplay, TopLossesDisplay, draw
from ._embedding import EmbeddingDisplay
from ._saliency import (
    INSTALL,
    check_batch_size,
    check_estimator,
    check_method,
    explain,
    network_input,
    target_indices,
)
from .images import is_image_list

__all__ = [
    "EmbeddingDisplay",
    "SaliencyDisplay",
    "TopLossesDisplay",
    "saliency_maps",
    "save_explanations",
]


def saliency_maps(estimator, X, target=None, *, method="gradcam", layer=None, window=None,
                  batch_size=None):
    """Where in each image the evidence for an output lies: one map per image, in [0, 1].

    ``"gradcam"`` (Grad-CAM, Selvaraju et al. 2017) weighs the channels of a convolutional
    stage's output by the spatial mean of the output's gradient, keeps the positive part and
    upsamples it bilinearly: one forward and one short backward pass, coarse (the stage's
    resolution). ``"occlusion"`` needs no gradient: it fills a square window with the image's
    mean colour at each position (stride half a window) and records how much the output
    drops; finer and model-agnostic, but one forward pass per window position.
    Both are computed by Captum (``LayerGradCam``, ``Occlusion``).

    Each map is scaled so that its maximum is 1 (all zeros when nothing in the image raises
    the output). The model is left exactly as it was: see :mod:`sktransfer.inspection`.

    Parameters
    ----------
    estimator : TransferClassifier or TransferRegressor
        A fitted estimator with an image backbone.
    X : array-like, list of paths or of PIL images
        Images in any form the estimator's ``predict`` accepts.
    target : label, array-like of labels or int, default=None
        What to explain. For a classifier: ``None`` explains the predicted class of each
        image; a label of ``classes_`` (not an index) explains that class for every image;
        an array gives one label per image. For a regressor: the index of the output whose
        gradient is taken (``None`` for a single-output regressor).
    method : {"gradcam", "occlusion"}, default="gradcam"
        The attribution method.
    layer : str, default=None
        Grad-CAM only: the name of the stage (one of ``estimator.stage_names_``) whose feature
        map is weighed; ``None`` takes the last stage with a spatial map (the last
        convolutional stage). Earlier stages give finer but less class-specific maps. A map
        of fewer than 4 cells a side (EfficientNet-Lite0's last stages at 64 px are 2x2)
        cannot localise anything: a ``UserWarning`` then names a finer stage.
    window : float, default=None
        Occlusion only: side of the occluding square as a fraction of the side of the
        image the network sees (``None``: 0.25).
    batch_size : int, default=None
        Images per pass (``None``: the estimator's prediction batch size).

    Returns
    -------
    maps : ndarray of shape (n_samples, H, W), dtype float32
        One map per image at the image's own resolution: ``H x W`` of the array given, or the
        decoded size for image files and PIL images.

    Raises
    ------
    ImportError
        If Captum is not installed (``pip install 'sktransfer[inspect]'``).
    ValueError
        For a backbone that takes vectors, an unknown ``method``, ``layer`` or ``target``.

    See Also
    --------
    SaliencyDisplay : The maps overlaid on the images.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> from sktransfer.inspection import saliency_maps
    >>> X = np.random.RandomState(0).rand(20, 24, 24, 3).astype(np.float32)
    >>> y = np.array(["cat", "dog"] * 10)
    >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=2, random_state=0)
    >>> maps = saliency_maps(clf.fit(X, y), X[:3])
    >>> maps.shape, bool(maps.min() >= 0), bool(maps.max() <= 1)
    ((3, 24, 24), True, True)
    >>> saliency_maps(clf, X[:2], target="dog", method="occlusion").shape
    (2, 24, 24)
    """
    check_estimator(estimator)
    window = check_method(method, layer, window)
    batch_size = check_batch_size(estimator, batch_size)
    source, size = network_input(estimator, X)
    targets = target_indices(estimator, target, len(source))
    return explain(estimator, source, size, targets, method=method, layer=layer,
                   window=window, batch_size=batch_size)

# ---------------------------------------------------------------------------------------------
# Writing overlays and predictions to a folder
# ---------------------------------------------------------------------------------------------


def _new_figure(figsize):
    """A matplotlib figure outside pyplot (no global backend or figure registry touched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            f"save_explanations needs matplotlib, which is not installed. Install it with "
            f"{INSTALL}."
        ) from exc
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _image_paths(X):
    """The paths of X when it is a list of image files, else ``None``."""
    if is_image_list(X) and all(isinstance(x, (str, os.PathLike)) for x in X):
        return [os.fspath(x) for x in X]
    return None


def _overlay_names(paths, n):
    """PNG file names: the image files' names (made unique), else ``image_0000``..."""
    if paths is not None:
        stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    else:
        stems = [f"image_{i:0{max(4, len(str(n - 1)))}d}" for i in range(n)]
    seen, names = Counter(), []
    for stem in stems:
        seen[stem] += 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}.png")
    taken = Counter(names)
    if any(c > 1 for c in taken.values()):  # "a_2" given next to two "a": number them all
        names = [f"{i:05d}_{name}" for i, name in enumerate(names)]
    return names


def save_explanations(estimator, X, out_dir, *, method="gradcam", layer=None, window=None,
                      alpha=0.5, cmap="jet", batch_size=None):
    """Write one saliency overlay PNG per image and a CSV of the predictions to a folder.

    The Python side of ``sktransfer explain``. Each PNG shows the image, the map of its
    prediction over it, and the prediction above (a classifier's label and its probability,
    a regressor's value). ``predictions.csv`` has one row per image: for a classifier
    ``path, label, probability, overlay``, for a regressor ``path, prediction, overlay``
    (``prediction_0``, ``prediction_1``... for several outputs); ``path`` is the image file,
    or the row index for arrays and PIL images. The predictions are those of ``predict`` /
    ``predict_proba``.

    Parameters
    ----------
    estimator : TransferClassifier or TransferRegressor
        A fitted estimator with an image backbone.
    X : array-like, list of paths or of PIL images
        Images in any form ``predict`` accepts.
    out_dir : str or path-like
        Folder to write to (created if needed; files of the same names are replaced).
    method, layer, window
        As for :func:`saliency_maps`. A regressor's maps explain its first output.
    alpha : float, default=0.5
        Opacity of the maps.
    cmap : str, default="jet"
        Colormap of the maps.
    batch_size : int, default=None
        Images per pass (``None``: the estimator's prediction batch size); maps are written
        batch by batch, so memory does not grow with the number of images.

    Returns
    -------
    csv_path : str
        The path of ``predictions.csv``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> from sktransfer.inspection import save_explanations
    >>> X = np.random.RandomState(0).randint(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    >>> y = np.array(["cat", "dog"] * 10)
    >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=2, random_state=0)
    >>> with tempfile.TemporaryDirectory() as out:
    ...     path = save_explanations(clf.fit(X, y), X[:3], out)
    ...     sorted(os.listdir(out)), open(path).readline().strip()
    (['image_0000.png', 'image_0001.png', 'image_0002.png', 'predictions.csv'], \
'path,label,probability,overlay')
    """
    check_estimator(estimator)
    window = check_method(method, layer, window)
    batch_size = check_batch_size(estimator, batch_size)
    source, size = network_input(estimator, X)
    n = len(source)
    paths = _image_paths(X)
    names = _overlay_names(paths, n)
    if is_classifier(estimator):
        proba = estimator.predict_proba(X)
        best = proba.argmax(axis=1)
        header = ["path", "label", "probability", "overlay"]
        values = [[estimator.classes_[b], f"{p[b]:.6f}"] for b, p in zip(best, proba,
                                                                           strict=True)]
        titles = [f"{estimator.classes_[b]} ({p[b]:.2f})" for b, p in zip(best, proba,
                                                                         strict=True)]
        targets = best.astype(np.int64)
    else:
        pred = np.asarray(estimator.predict(X), dtype=np.float64).reshape(n, -1)
        header = ["path"] + (["prediction"] if pred.shape[1] == 1 else
                             [f"prediction_{j}" for j in range(pred.shape[1])]) + ["overlay"]
        values = [[f"{v:.6g}" for v in row] for row in pred]
        titles = [f"{row[0]:.4g}" for row in pred]
        targets = np.zeros(n, dtype=np.int64)
    os.makedirs(out_dir, exist_ok=True)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        maps, images = explain(estimator, source.take(idx), size, targets[idx], method=method,
                               layer=layer, window=window, batch_size=batch_size, images=True)
        for j, i in enumerate(idx):
            fig = _new_figure((3.2, 3.5))
            draw(fig.subplots(), images[j], maps[j], titles[i], alpha=alpha, cmap=cmap)
            fig.savefig(os.path.join(out_dir, names[i]), dpi=100)
    csv_path = os.path.join(os.fspath(out_dir), "predictions.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for path, row, name in zip(paths or range(n), values, names, strict=True):
            writer.writerow([path, *row, name])
    return csv_path
