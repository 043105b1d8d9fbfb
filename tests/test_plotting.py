import sys

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sktransfer import TransferClassifier, TransferRegressor
from sktransfer.plotting import plot_learning_curves

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HISTORY = [
    {"epoch": 1, "train_loss": 1.5, "valid_loss": 1.2, "valid_acc": 0.4, "dur": 0.1},
    {"epoch": 2, "train_loss": 0.9, "valid_loss": 1.0, "valid_acc": 0.6, "dur": 0.1},
    {"epoch": 3, "train_loss": 0.5, "valid_loss": 1.1, "valid_acc": 0.7, "dur": 0.1},
]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_losses_and_accuracy_match_history():
    ax = plot_learning_curves(HISTORY)
    lines = _lines(ax)
    assert set(lines) == {"train loss", "valid loss"}
    np.testing.assert_array_equal(lines["train loss"].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(lines["train loss"].get_ydata(), [1.5, 0.9, 0.5])
    np.testing.assert_array_equal(lines["valid loss"].get_ydata(), [1.2, 1.0, 1.1])
    (acc,) = ax.right_ax.get_lines()
    assert acc.get_label() == "valid accuracy"
    np.testing.assert_array_equal(acc.get_ydata(), [0.4, 0.6, 0.7])
    assert ax.right_ax.get_ylim()[0] == 0
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == [
        "train loss",
        "valid accuracy",
        "valid loss",
    ]


def test_train_loss_only_draws_no_accuracy_axis():
    history = [{"epoch": i, "train_loss": 1.0 / i} for i in (1, 2)]
    ax = plot_learning_curves(history)
    assert list(_lines(ax)) == ["train loss"]
    assert not hasattr(ax, "right_ax")
    assert ax.figure.axes == [ax]


def test_draws_on_given_axes():
    fig, (left, right) = plt.subplots(1, 2)
    assert plot_learning_curves(HISTORY, ax=right) is right
    assert left.get_lines() == []


def test_fitted_classifier_history_is_plotted(tiny_images):
    X, y = tiny_images
    clf = TransferClassifier(
        "test_cnn", weights=None, max_epochs=3, early_stopping=True, freeze_depth=1,
        validation_fraction=0.25, n_iter_no_change=10, random_state=0,
    ).fit(X, y)
    ax = plot_learning_curves(clf)
    lines = _lines(ax)
    expected = [row["train_loss"] for row in clf.history_]
    np.testing.assert_allclose(lines["train loss"].get_ydata(), expected)
    np.testing.assert_allclose(
        lines["valid loss"].get_ydata(), [row["valid_loss"] for row in clf.history_]
    )
    np.testing.assert_allclose(
        ax.right_ax.get_lines()[0].get_ydata(), [row["valid_acc"] for row in clf.history_]
    )
    # a pipeline ending in the estimator and the skorch net give the same curves
    pipe = make_pipeline(FunctionTransformer(), clf)
    for other in (pipe, clf.net_):
        np.testing.assert_allclose(
            _lines(plot_learning_curves(other))["train loss"].get_ydata(), expected
        )


def test_fitted_regressor_has_no_accuracy(tiny_vectors):
    X, _ = tiny_vectors
    reg = TransferRegressor("test_mlp", weights=None, max_epochs=2, random_state=0,
                            freeze_depth=0)
    ax = plot_learning_curves(reg.fit(X, X[:, 0]))
    np.testing.assert_allclose(
        _lines(ax)["train loss"].get_ydata(), [row["train_loss"] for row in reg.history_]
    )
    assert not hasattr(ax, "right_ax")


def test_unfitted_estimator_raises():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        plot_learning_curves(TransferClassifier("test_cnn", weights=None))


@pytest.mark.parametrize(
    "history, error, match",
    [
        ([], ValueError, "history is empty"),
        ([{"epoch": 1, "dur": 0.1}], ValueError, "no 'train_loss'"),
        ([1.0, 2.0], TypeError, "list of dicts"),
        ("history", TypeError, "must be a fitted"),
    ],
)
def test_bad_history_raises(history, error, match):
    with pytest.raises(error, match=match):
        plot_learning_curves(history)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'sktransfer\[plot\]'"):
        plot_learning_curves(HISTORY)
