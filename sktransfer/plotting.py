"""Plots of a fitted estimator's training. matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.exceptions import NotFittedError

__all__ = ["plot_learning_curves", "plot_lr_range_test"]


def _import_pyplot(what="plot_learning_curves", extra="plot"):
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            f"{what} needs matplotlib, which is not installed. Install it with "
            f"pip install 'sktransfer[{extra}]' (or pip install matplotlib)."
        ) from exc
    return plt


def _history_rows(obj):
    """The per-epoch rows of a fitted estimator, a pipeline ending in one, a skorch net, or a
    history given as a list of dicts."""
    if hasattr(obj, "steps") and hasattr(obj, "_final_estimator"):  # Pipeline
        obj = obj._final_estimator
    if isinstance(obj, (list, tuple)):
        rows = list(obj)
    elif hasattr(obj, "history_"):
        rows = list(obj.history_)
    elif hasattr(obj, "history") and hasattr(obj, "module_"):  # skorch NeuralNet
        rows = list(obj.history)
    elif hasattr(obj, "get_params"):
        raise NotFittedError(
            f"This {type(obj).__name__} instance has no training history: it is not fitted "
            "yet (call 'fit' first), or it does not train (e.g. TransferFeatures)."
        )
    else:
        raise TypeError(
            "estimator_or_history must be a fitted TransferClassifier/TransferRegressor, a "
            f"pipeline ending in one, a skorch net, or a list of dicts; got {type(obj).__name__}."
        )
    if not rows:
        raise ValueError("The training history is empty: there is nothing to plot.")
    if not all(isinstance(row, dict) for row in rows):
        raise TypeError("A history must be a list of dicts, one per epoch.")
    if not any("train_loss" in row for row in rows):
        raise ValueError(
            "The training history has no 'train_loss' entry; expected rows such as "
            "{'epoch': 1, 'train_loss': 0.9, 'valid_loss': 1.1, 'valid_acc': 0.6}."
        )
    return rows


def _column(rows, key):
    """Epochs and values of ``key`` over the rows that have a finite number for it."""
    epochs, values = [], []
    for i, row in enumerate(rows):
        value = row.get(key)
        if isinstance(value, numbers.Real) and np.isfinite(value):
            epochs.append(row.get("epoch", i + 1))
            values.append(float(value))
    return np.asarray(epochs), np.asarray(values)


def plot_learning_curves(estimator_or_history, ax=None):
    """Plot the training and validation loss per epoch, and the validation accuracy.

    The losses are drawn on ``ax``; the validation accuracy, when the history has it (a
    :class:`~sktransfer.TransferClassifier` fitted with ``early_stopping=True``), on a twin
    axis at the right whose scale is [0, 1]. A gap that opens between the training and the
    validation loss is the usual sign of overfitting: fewer epochs, a deeper ``freeze_depth``
    or more data help.

    Parameters
    ----------
    estimator_or_history : estimator, skorch net or list of dict
        A fitted :class:`~sktransfer.TransferClassifier` or
        :class:`~sktransfer.TransferRegressor` (its ``history_`` is plotted), a
        :class:`~sklearn.pipeline.Pipeline` ending in one, a fitted skorch net, or a history
        given directly as a list of dicts with keys ``epoch``, ``train_loss`` and optionally
        ``valid_loss`` and ``valid_acc``.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on. ``None`` creates a new figure.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The axes holding the losses. The accuracy axis, when drawn, is ``ax.right_ax``.

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install 'sktransfer[plot]'``).
    sklearn.exceptions.NotFittedError
        If the estimator has not been fitted.

    See Also
    --------
    sklearn.metrics.ConfusionMatrixDisplay : Confusion matrix of a fitted classifier.

    Notes
    -----
    :class:`~sktransfer.TransferRegressor` records its losses on standardised targets, so
    that curves of targets with different scales are comparable.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sktransfer.plotting import plot_learning_curves
    >>> history = [
    ...     {"epoch": 1, "train_loss": 1.2, "valid_loss": 1.0, "valid_acc": 0.55},
    ...     {"epoch": 2, "train_loss": 0.7, "valid_loss": 0.8, "valid_acc": 0.70},
    ...     {"epoch": 3, "train_loss": 0.4, "valid_loss": 0.7, "valid_acc": 0.75},
    ... ]
    >>> ax = plot_learning_curves(history)
    >>> [line.get_label() for line in ax.get_lines()]
    ['train loss', 'valid loss']
    >>> ax.right_ax.get_lines()[0].get_ydata().tolist()
    [0.55, 0.7, 0.75]

    With a fitted estimator:

    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> X = np.random.RandomState(0).rand(40, 16, 16, 3).astype(np.float32)
    >>> y = np.array(["cat", "dog"] * 20)
    >>> clf = TransferClassifier("test_cnn", weights=None, freeze_depth=1, max_epochs=3,
    ...                          random_state=0)
    >>> ax = plot_learning_curves(clf.fit(X, y))
    >>> ax.get_lines()[0].get_xdata().tolist()
    [1, 2, 3]
    """
    rows = _history_rows(estimator_or_history)
    plt = _import_pyplot()
    from matplotlib.ticker import MaxNLocator

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")

    handles = []
    for key, label, style in (
        ("train_loss", "train loss", {"color": "C0", "marker": "o"}),
        ("valid_loss", "valid loss", {"color": "C1", "marker": "s"}),
    ):
        epochs, values = _column(rows, key)
        if len(values):
            handles += ax.plot(epochs, values, label=label, **style)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)

    epochs, acc = _column(rows, "valid_acc")
    if len(acc):
        right = ax.twinx()
        handles += right.plot(
            epochs, acc, label="valid accuracy", color="C2", marker="^", linestyle="--"
        )
        right.set_ylabel("accuracy")
        right.set_ylim(0, 1.02)
        ax.right_ax = right
    ax.legend(handles=handles, loc="best")
    return ax


def plot_lr_range_test(estimator, ax=None):
    """Plot the learning-rate range test of a fit with ``lr="auto"``, and the rate it chose.

    Parameters
    ----------
    estimator : TransferClassifier or TransferRegressor
        Fitted with ``lr="auto"`` (or a pipeline ending in one).
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when None.

    Returns
    -------
    ax : matplotlib Axes
        The smoothed training loss against the learning rate (log scale), with the chosen
        ``lr_`` marked.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> from sktransfer.plotting import plot_lr_range_test
    >>> X = np.random.RandomState(0).rand(40, 16, 16, 3).astype(np.float32)
    >>> y = np.array([0, 1] * 20)
    >>> clf = TransferClassifier("test_cnn", weights=None, lr="auto", max_epochs=1,
    ...                          freeze_depth=1, random_state=0).fit(X, y)
    >>> ax = plot_lr_range_test(clf)
    >>> ax.get_xscale(), len(ax.get_lines()[0].get_xdata()) == len(clf.lr_range_test_["lr"])
    ('log', True)
    """
    if hasattr(estimator, "steps") and hasattr(estimator, "_final_estimator"):
        estimator = estimator._final_estimator
    curve = getattr(estimator, "lr_range_test_", None)
    if curve is None:
        raise ValueError(
            "This estimator has no range test to plot: fit it with lr='auto' (its "
            "lr_range_test_ is None otherwise)."
        )
    plt = _import_pyplot("plot_lr_range_test")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(curve["lr"], curve["loss"], color="C0", label="smoothed training loss")
    ax.axvline(estimator.lr_, color="C3", linestyle="--",
               label=f"chosen lr_ = {estimator.lr_:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return ax
