"""The saliency and top-losses displays of :mod:`sktransfer.inspection`, and the drawing
helpers they share with :func:`sktransfer.inspection.save_explanations`."""

from __future__ import annotations

import math
import numbers
from collections import Counter

import numpy as np
from sklearn.base import is_classifier

from ._saliency import (
    check_estimator,
    check_method,
    displayable,
    explain,
    network_input,
    target_indices,
)
from .plotting import _import_pyplot


def as_images(images):
    """User-given images for a display: uint8 or float in [0, 1], gray or RGB."""
    images = np.asarray(images)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise ValueError(
            f"images must be an array (n, H, W) or (n, H, W, C) with C in (1, 3, 4), got shape "
            f"{images.shape}."
        )
    if images.dtype.kind in "ui":
        images = images / 255.0
    if images.ndim == 4:
        images = images[..., :3] if images.shape[-1] != 1 else images[..., 0]
    return np.clip(images.astype(np.float32), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def grid(n, ax, n_cols, user, panel=2.2):
    """A figure and ``n`` axes: new ones in a grid, or those given in ``ax``."""
    plt = _import_pyplot(user, "inspect")
    if ax is None:
        n_cols = min(n, 5) if n_cols is None else int(n_cols)
        n_rows = max(1, math.ceil(n / max(n_cols, 1)))
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel * n_cols, (panel + 0.6) * n_rows),
                                 squeeze=False, layout="constrained")
        axes = axes.ravel()
        for extra in axes[n:]:
            extra.set_axis_off()
        return fig, axes[:n]
    axes = np.asarray(ax, dtype=object).ravel()
    if len(axes) < n:
        raise ValueError(
            f"ax holds {len(axes)} axes but there are {n} images to draw: pass at least {n} "
            "axes, or ax=None."
        )
    return axes[0].figure, axes[:n]


def draw(ax, image, heat, title, *, alpha, cmap, color="black"):
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image)
    if heat is not None:
        ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=9, color=color)
    ax.set_axis_off()


def _fmt(value):
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}"
    return str(value)


def _prediction_title(y_true, y_pred, proba):
    lines = []
    if y_true is not None:
        lines.append(f"true: {_fmt(y_true)}")
    if y_pred is not None:
        lines.append(f"pred: {_fmt(y_pred)}" + ("" if proba is None else f" ({proba:.2f})"))
    return "\n".join(lines)


class SaliencyDisplay:
    """Images with their saliency maps overlaid, titled with the true label, the predicted
    label and its probability.

    Build it with :meth:`from_estimator`; the constructor takes precomputed maps (e.g. from
    :func:`saliency_maps`). Call :meth:`plot` to draw it.

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, H, W, C)
        The images, uint8 or float in [0, 1].
    maps : array-like of shape (n, H, W)
        Saliency maps in [0, 1], at the images' resolution.
    y_true : array-like of shape (n,), default=None
        True labels (or targets), shown when given.
    y_pred : array-like of shape (n,), default=None
        Predicted labels (or values), shown when given.
    proba : array-like of shape (n,), default=None
        Probability of each predicted label, shown when given.

    Attributes
    ----------
    figure_ : matplotlib.figure.Figure
        The figure holding the panels.
    ax_ : ndarray of matplotlib.axes.Axes
        One axes per image, in order.

    See Also
    --------
    saliency_maps : The maps alone.
    TopLossesDisplay : The images the model gets most wrong.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sktransfer.inspection import SaliencyDisplay
    >>> images = np.zeros((2, 8, 8), dtype=np.uint8)
    >>> maps = np.random.RandomState(0).rand(2, 8, 8)
    >>> disp = SaliencyDisplay(images, maps, y_pred=["cat", "dog"], proba=[0.9, 0.6]).plot()
    >>> [ax.get_title() for ax in disp.ax_]
    ['pred: cat (0.90)', 'pred: dog (0.60)']
    """

    def __init__(self, images, maps, *, y_true=None, y_pred=None, proba=None):
        self.images = images
        self.maps = maps
        self.y_true = y_true
        self.y_pred = y_pred
        self.proba = proba

    def plot(self, *, ax=None, n_cols=None, alpha=0.5, cmap="jet"):
        """Draw one panel per image: the image, the map over it, the labels above.

        A title is red where the true label is given and differs from the predicted one.

        Parameters
        ----------
        ax : array-like of matplotlib.axes.Axes, default=None
            One axes per image (a single Axes for one image). ``None`` creates a figure.
        n_cols : int, default=None
            Panels per row of a new figure (``None``: up to 5).
        alpha : float, default=0.5
            Opacity of the map.
        cmap : str, default="jet"
            Colormap of the map.

        Returns
        -------
        display : SaliencyDisplay
            With ``figure_`` and ``ax_`` set.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sktransfer.inspection import SaliencyDisplay
        >>> disp = SaliencyDisplay(np.ones((3, 4, 4, 3)), np.zeros((3, 4, 4)),
        ...                        y_true=[0, 1, 1], y_pred=[0, 0, 1])
        >>> len(disp.plot(n_cols=3).ax_), disp.ax_[1].title.get_color()
        (3, 'red')
        """
        images = as_images(self.images)
        maps = np.asarray(self.maps, dtype=np.float32)
        n = len(images)
        if maps.shape != images.shape[:3]:
            raise ValueError(
                f"maps must have shape {images.shape[:3]} (one per image, at the images' "
                f"resolution), got {maps.shape}."
            )
        self.figure_, self.ax_ = grid(n, ax, n_cols, "SaliencyDisplay")
        for i, axis in enumerate(self.ax_):
            true = None if self.y_true is None else self.y_true[i]
            pred = None if self.y_pred is None else self.y_pred[i]
            proba = None if self.proba is None else float(self.proba[i])
            # a label differs or not; a regressor's value is never exactly its target
            wrong = (true is not None and pred is not None and true != pred
                     and not isinstance(pred, (float, np.floating)))
            draw(axis, images[i], maps[i], _prediction_title(true, pred, proba), alpha=alpha,
                  cmap=cmap, color="red" if wrong else "black")
        return self

    @classmethod
    def from_estimator(cls, estimator, X, y=None, *, target=None, method="gradcam", layer=None,
                       window=None, ax=None, n_cols=None, alpha=0.5, cmap="jet"):
        """Compute the maps of a fitted estimator for X and plot them.

        Parameters
        ----------
        estimator : TransferClassifier or TransferRegressor
            A fitted estimator with an image backbone.
        X : array-like, list of paths or of PIL images
            The images to explain, in any form ``predict`` accepts; one panel each.
        y : array-like of shape (n_samples,), default=None
            True labels (or targets), shown above each image.
        target, method, layer, window
            As for :func:`saliency_maps` (by default the predicted class is explained).
        ax : array-like of matplotlib.axes.Axes, default=None
            One axes per image; ``None`` creates a figure.
        n_cols : int, default=None
            Panels per row of a new figure.
        alpha : float, default=0.5
            Opacity of the maps.
        cmap : str, default="jet"
            Colormap of the maps.

        Returns
        -------
        display : SaliencyDisplay
            With the images, maps and predictions, plotted.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sktransfer import TransferClassifier
        >>> from sktransfer.inspection import SaliencyDisplay
        >>> X = np.random.RandomState(0).randint(0, 256, (20, 16, 16), dtype=np.uint8)
        >>> y = np.array(["cat", "dog"] * 10)
        >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=2, random_state=0)
        >>> disp = SaliencyDisplay.from_estimator(clf.fit(X, y), X[:4], y[:4])
        >>> disp.maps.shape, disp.images.shape, len(disp.ax_)
        ((4, 16, 16), (4, 16, 16), 4)
        """
        check_estimator(estimator)
        window = check_method(method, layer, window)
        source, size = network_input(estimator, X)
        targets = target_indices(estimator, target, len(source))
        if y is not None:
            y = np.asarray(y)
            if len(y) != len(source):
                raise ValueError(f"y has {len(y)} entries but X has {len(source)} images.")
        if is_classifier(estimator):
            proba = estimator.predict_proba(X)
            best = proba.argmax(axis=1)
            y_pred, proba = estimator.classes_[best], proba[np.arange(len(best)), best]
            targets = best if targets is None else targets
        else:
            y_pred, proba = estimator.predict(X), None
            y_pred = y_pred if y_pred.ndim == 1 else y_pred[:, targets[0]]
            if y is not None and y.ndim == 2:
                y = y[:, targets[0]]
        maps, images = explain(
            estimator, source, size, targets, method=method, layer=layer, window=window,
            batch_size=estimator._infer_batch_size(), images=True,
        )
        disp = cls(images, maps, y_true=y, y_pred=y_pred, proba=proba)
        return disp.plot(ax=ax, n_cols=n_cols, alpha=alpha, cmap=cmap)


class TopLossesDisplay:
    """The images with the highest loss, as fastai's ``plot_top_losses``, and the classes
    confused most often (:meth:`most_confused`).

    The loss of an image is the cross-entropy of its true label, ``-log p(true label)``:
    confident mistakes first, then hesitant ones. They show mislabelled images, ambiguous
    classes and what the model has not learned.

    Parameters
    ----------
    images : array-like of shape (k, H, W) or (k, H, W, C)
        The images of the ``k`` highest losses, highest first (uint8 or float in [0, 1]).
    indices : array-like of shape (k,)
        Their rows in the data.
    y_true : array-like of shape (n_samples,)
        True labels of all samples.
    y_pred : array-like of shape (n_samples,)
        Predicted labels of all samples.
    losses : array-like of shape (n_samples,)
        Loss of every sample.
    proba : array-like of shape (n_samples,)
        Probability of every predicted label.
    maps : array-like of shape (k, H, W), default=None
        Saliency maps of the shown images, overlaid when given.

    Attributes
    ----------
    figure_ : matplotlib.figure.Figure
        The figure holding the panels.
    ax_ : ndarray of matplotlib.axes.Axes
        One axes per shown image, highest loss first.

    See Also
    --------
    sklearn.metrics.ConfusionMatrixDisplay : All the confusions at once.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sktransfer.inspection import TopLossesDisplay
    >>> images = np.zeros((4, 8, 8), dtype=np.uint8)
    >>> proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    >>> disp = TopLossesDisplay.from_predictions(images, ["a", "a", "b", "b"], proba, k=2)
    >>> disp.indices.tolist(), [ax.get_title() for ax in disp.ax_]
    ([1, 2], ['b / a\\n1.61 / 0.80', 'a / b\\n0.92 / 0.60'])
    >>> disp.most_confused()
    [('a', 'b', 1), ('b', 'a', 1)]
    """

    def __init__(self, images, indices, *, y_true, y_pred, losses, proba, maps=None):
        self.images = images
        self.indices = indices
        self.y_true = y_true
        self.y_pred = y_pred
        self.losses = losses
        self.proba = proba
        self.maps = maps

    def most_confused(self, min_val=1):
        """Pairs of classes confused at least ``min_val`` times, most often first.

        Parameters
        ----------
        min_val : int, default=1
            Smallest count reported.

        Returns
        -------
        pairs : list of tuple
            ``(true label, predicted label, count)``, by decreasing count (ties in the order
            of the labels), as fastai's ``ClassificationInterpretation.most_confused``.

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer.inspection import TopLossesDisplay
        >>> disp = TopLossesDisplay(np.zeros((0, 2, 2)), [], y_true=[0, 0, 1, 2, 2],
        ...                         y_pred=[1, 1, 1, 0, 2], losses=np.zeros(5),
        ...                         proba=np.ones(5))
        >>> disp.most_confused()
        [(0, 1, 2), (2, 0, 1)]
        >>> disp.most_confused(min_val=2)
        [(0, 1, 2)]
        """
        y_true = np.asarray(self.y_true)
        y_pred = np.asarray(self.y_pred)
        labels = np.unique(np.concatenate([y_true, y_pred]))
        position = {label: i for i, label in enumerate(labels.tolist())}
        counts = Counter(
            (t, p) for t, p in zip(y_true.tolist(), y_pred.tolist(), strict=True) if t != p
        )
        pairs = [(t, p, c) for (t, p), c in counts.items() if c >= min_val]
        return sorted(pairs, key=lambda r: (-r[2], position[r[0]], position[r[1]]))

    def plot(self, *, ax=None, n_cols=None, alpha=0.5, cmap="jet"):
        """Draw the images, titled ``prediction / actual`` and ``loss / probability``.

        Parameters
        ----------
        ax : array-like of matplotlib.axes.Axes, default=None
            One axes per image. ``None`` creates a figure, with the legend of the titles as
            its title.
        n_cols : int, default=None
            Panels per row of a new figure (``None``: up to 5).
        alpha : float, default=0.5
            Opacity of the saliency maps, when there are any.
        cmap : str, default="jet"
            Colormap of the saliency maps.

        Returns
        -------
        display : TopLossesDisplay
            With ``figure_`` and ``ax_`` set.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sktransfer.inspection import TopLossesDisplay
        >>> disp = TopLossesDisplay(np.zeros((1, 4, 4)), [2], y_true=[0, 0, 1],
        ...                         y_pred=[0, 0, 0], losses=[0.1, 0.2, 2.3],
        ...                         proba=[0.9, 0.8, 0.9]).plot()
        >>> disp.ax_[0].get_title(), disp.figure_.get_suptitle()
        ('0 / 1\\n2.30 / 0.90', 'prediction / actual / loss / probability')
        """
        images = as_images(self.images)
        indices = np.asarray(self.indices, dtype=np.int64)
        maps = None if self.maps is None else np.asarray(self.maps, dtype=np.float32)
        own = ax is None
        self.figure_, self.ax_ = grid(len(images), ax, n_cols, "TopLossesDisplay")
        for axis, image, i, heat in zip(
            self.ax_, images, indices, [None] * len(images) if maps is None else maps,
            strict=True,
        ):
            title = (f"{_fmt(self.y_pred[i])} / {_fmt(self.y_true[i])}\n"
                     f"{float(self.losses[i]):.2f} / {float(self.proba[i]):.2f}")
            draw(axis, image, heat, title, alpha=alpha, cmap=cmap)
        if own:
            self.figure_.suptitle("prediction / actual / loss / probability")
        return self

    @classmethod
    def _from_losses(cls, images_of, y_true, y_pred, losses, proba, k, maps_of=None):
        order = np.argsort(-losses, kind="stable")[: int(k)]
        return cls(images_of(order), order, y_true=y_true, y_pred=y_pred, losses=losses,
                   proba=proba, maps=None if maps_of is None else maps_of(order))

    @classmethod
    def from_estimator(cls, estimator, X, y, *, k=9, saliency=False, method="gradcam",
                       layer=None, ax=None, n_cols=None, alpha=0.5, cmap="jet"):
        """Find and plot the ``k`` images of X with the highest loss under a fitted classifier.

        Parameters
        ----------
        estimator : TransferClassifier
            A fitted classifier with an image backbone.
        X : array-like, list of paths or of PIL images
            Images in any form ``predict`` accepts.
        y : array-like of shape (n_samples,)
            Their true labels (all in ``classes_``).
        k : int, default=9
            How many images to show.
        saliency : bool, default=False
            Overlay the saliency map of each shown image's prediction: what the model saw
            in the class it wrongly chose.
        method, layer
            Of the saliency maps, as for :func:`saliency_maps`.
        ax : array-like of matplotlib.axes.Axes, default=None
            One axes per image; ``None`` creates a figure.
        n_cols : int, default=None
            Panels per row of a new figure.
        alpha : float, default=0.5
            Opacity of the saliency maps.
        cmap : str, default="jet"
            Colormap of the saliency maps.

        Returns
        -------
        display : TopLossesDisplay
            Plotted; :meth:`most_confused` counts the confusions over all of X.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sktransfer import TransferClassifier
        >>> from sktransfer.inspection import TopLossesDisplay
        >>> X = np.random.RandomState(0).randint(0, 256, (30, 16, 16, 3), dtype=np.uint8)
        >>> y = np.array(["cat", "dog", "fox"] * 10)
        >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=2, random_state=0)
        >>> disp = TopLossesDisplay.from_estimator(clf.fit(X, y), X, y, k=4, saliency=True)
        >>> disp.images.shape, disp.maps.shape, len(disp.losses)
        ((4, 16, 16, 3), (4, 16, 16), 30)
        >>> bool(np.all(np.diff(disp.losses[disp.indices]) <= 0))
        True
        """
        check_estimator(estimator)
        if not is_classifier(estimator):
            raise ValueError("TopLossesDisplay needs a classifier; this is a regressor.")
        if not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        window = check_method(method, layer, None) if saliency else None
        source, size = network_input(estimator, X)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(source):
            raise ValueError(f"y must hold one label per image ({len(source)}), got shape "
                             f"{y.shape}.")
        true_idx = target_indices(estimator, y, len(y), name="y")
        log_proba = estimator.predict_log_proba(X)
        best = log_proba.argmax(axis=1)
        rows = np.arange(len(y))
        losses = -log_proba[rows, true_idx]
        spec = estimator.input_spec_

        def maps_of(order):
            part = source.take(order)
            return explain(estimator, part, size, best[order], method=method, layer=layer,
                           window=window, batch_size=estimator._infer_batch_size())

        disp = cls._from_losses(
            lambda order: displayable(source.batch(order), spec), y,
            estimator.classes_[best], losses, np.exp(log_proba[rows, best]), k,
            maps_of if saliency else None,
        )
        return disp.plot(ax=ax, n_cols=n_cols, alpha=alpha, cmap=cmap)

    @classmethod
    def from_predictions(cls, images, y_true, y_proba, *, labels=None, k=9, ax=None,
                         n_cols=None):
        """Plot the ``k`` images with the highest loss, from predicted probabilities.

        Parameters
        ----------
        images : array-like of shape (n_samples, H, W) or (n_samples, H, W, C)
            The images, uint8 or float in [0, 1].
        y_true : array-like of shape (n_samples,)
            True labels.
        y_proba : array-like of shape (n_samples, n_classes)
            Predicted probabilities, e.g. from ``predict_proba``.
        labels : array-like of shape (n_classes,), default=None
            The label of each column of ``y_proba`` (``classes_``); ``None``: the sorted
            labels of ``y_true``.
        k : int, default=9
            How many images to show.
        ax : array-like of matplotlib.axes.Axes, default=None
            One axes per image; ``None`` creates a figure.
        n_cols : int, default=None
            Panels per row of a new figure.

        Returns
        -------
        display : TopLossesDisplay
            Plotted.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sktransfer.inspection import TopLossesDisplay
        >>> proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
        >>> disp = TopLossesDisplay.from_predictions(np.zeros((3, 5, 5, 3)), [0, 1, 2], proba,
        ...                                          k=1)
        >>> disp.indices.tolist(), round(float(disp.losses[1]), 3)
        ([1], 2.303)
        """
        y_true = np.asarray(y_true)
        y_proba = np.asarray(y_proba, dtype=np.float64)
        labels = np.unique(y_true) if labels is None else np.asarray(labels)
        if y_proba.ndim != 2 or y_proba.shape != (len(y_true), len(labels)):
            raise ValueError(
                f"y_proba must have shape (n_samples, n_classes) = ({len(y_true)}, "
                f"{len(labels)}), got {y_proba.shape}."
            )
        lookup = {label: j for j, label in enumerate(labels.tolist())}
        unknown = [v for v in dict.fromkeys(y_true.tolist()) if v not in lookup]
        if unknown:
            raise ValueError(f"y_true holds {unknown[0]!r}, which is not in labels "
                             f"{labels.tolist()}.")
        images = as_images(images)
        if len(images) != len(y_true):
            raise ValueError(f"images holds {len(images)} images but y_true has "
                             f"{len(y_true)} labels.")
        rows = np.arange(len(y_true))
        true_idx = np.array([lookup[v] for v in y_true.tolist()], dtype=np.int64)
        best = y_proba.argmax(axis=1)
        eps = np.finfo(np.float64).eps
        losses = -np.log(np.clip(y_proba[rows, true_idx], eps, 1.0))
        disp = cls._from_losses(lambda order: images[order], y_true, labels[best], losses,
                                y_proba[rows, best], k)
        return disp.plot(ax=ax, n_cols=n_cols)
