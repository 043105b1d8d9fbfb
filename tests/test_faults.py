"""Training faults: divergence, Ctrl-C, out of memory, failing grid-search candidates, and
early stopping."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import FitFailedWarning, NotFittedError
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback

from sktransfer import TransferClassifier, TransferRegressor
from sktransfer._network import TransferNet

TINY = dict(weights=None, random_state=0, device="cpu")


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.rand(60, 8, 8, 3).astype(np.float32)
    y = np.array([0, 1] * 30)
    X[y == 1, :4] += 0.5
    return X, y


def _cnn(**params):
    # a depth and a head that train whatever the data size ("auto" may pick the probe)
    trained = {"max_epochs": 2, "freeze_depth": 1, "head_init": "random"}
    return TransferClassifier("test_cnn", **{**TINY, **trained, **params})


# ---------------------------------------------------------------------------------------------
# Non-finite loss
# ---------------------------------------------------------------------------------------------

DIVERGED = r"(?s)NaN or infinite|became (nan|inf).*epoch \d+.*batch \d+"


def test_divergence_stops_with_floating_point_error_and_leaves_the_estimator_unfitted(data):
    X, y = data
    clf = _cnn(lr=1e6, max_epochs=5, freeze_depth=0)
    with pytest.raises(FloatingPointError, match=r"epoch \d+.*batch \d+") as info:
        clf.fit(X, y)
    assert "lr" in str(info.value)
    with pytest.raises(NotFittedError, match="instance is not fitted yet"):
        clf.predict_proba(X)


def test_divergence_keeps_the_previous_fit(data):
    X, y = data
    clf = _cnn(freeze_depth=0).fit(X, y)
    before = clf.predict_proba(X)
    clf.set_params(lr=1e6, max_epochs=5)
    with pytest.raises(FloatingPointError, match=r"epoch \d+.*batch \d+"):
        clf.fit(X, y)
    after = clf.predict_proba(X)
    assert np.array_equal(after, before)
    assert np.isfinite(after).all()


def test_regressor_divergence_stops_with_floating_point_error(data):
    X, _ = data
    y = np.random.RandomState(0).randn(len(X))
    reg = TransferRegressor("test_mlp", **TINY, lr=1e6, max_epochs=5, freeze_depth=0,
                            head_init="random")
    with pytest.raises(FloatingPointError, match=r"epoch \d+.*batch \d+"):
        reg.fit(X.reshape(len(X), -1), y)
    assert not hasattr(reg, "module_")


def test_regressor_with_huge_targets_predicts_finite_values(data):
    X, _ = data
    Xf = X.reshape(len(X), -1)
    y = np.random.RandomState(0).randn(len(X)) * 1e300
    reg = TransferRegressor("test_mlp", **TINY, max_epochs=2).fit(Xf, y)
    pred = reg.predict(Xf)
    assert np.isfinite(pred).all()
    assert np.abs(pred).max() < 10 * np.abs(y).max()


def test_never_nan_probabilities_from_inputs_that_overflow(data):
    X, y = data
    Xf = X.reshape(len(X), -1)
    clf = TransferClassifier("test_mlp", **TINY, max_epochs=1).fit(Xf, y)
    huge = np.full((3, Xf.shape[1]), 1e300)  # finite in float64, infinite in float32
    with pytest.raises(ValueError, match="NaN or infinite for 3 sample"):
        clf.predict_proba(huge)


# ---------------------------------------------------------------------------------------------
# KeyboardInterrupt
# ---------------------------------------------------------------------------------------------


class _InterruptAt(Callback):
    """Raises KeyboardInterrupt in epoch ``epoch`` (1-based), at its second batch."""

    def __init__(self, epoch=3):
        self.epoch = epoch

    def on_batch_end(self, net, training=None, **kwargs):
        if training and len(net.history) == self.epoch and len(net.history[-1]["batches"]) >= 2:
            raise KeyboardInterrupt


def test_keyboard_interrupt_keeps_the_last_completed_epoch(data):
    X, y = data
    # a constant rate: with a schedule, the rate of epoch 2 depends on max_epochs
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        clf = _cnn(max_epochs=6, batch_size=16, lr_schedule="constant",
                   callbacks=[_InterruptAt(3)]).fit(X, y)
    assert clf.n_iter_ == 2
    assert [row["epoch"] for row in clf.history_] == [1, 2]
    reference = _cnn(max_epochs=2, batch_size=16, lr_schedule="constant").fit(X, y)
    assert np.array_equal(clf.predict_proba(X), reference.predict_proba(X))


def test_keyboard_interrupt_in_the_first_epoch_leaves_the_estimator_unchanged(data):
    X, y = data
    clf = _cnn(batch_size=16).fit(X, y)
    before = clf.predict_proba(X)
    clf.set_params(callbacks=[_InterruptAt(1)], random_state=1)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        with pytest.raises(KeyboardInterrupt, match="estimator is unchanged"):
            clf.fit(X, y)
    assert np.array_equal(clf.predict_proba(X), before)


# ---------------------------------------------------------------------------------------------
# Out of memory
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def oom_above_batch_4():
    """Every training forward pass of more than 4 samples runs out of memory."""

    def hook(module, inputs):
        if isinstance(module, TransferNet) and module.training and len(inputs[0]) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield
    handle.remove()


def test_out_of_memory_propagates_and_a_smaller_batch_size_works(data, request):
    X, y = data
    clf = _cnn(batch_size=16).fit(X, y)
    before = clf.predict_proba(X)
    request.getfixturevalue("oom_above_batch_4")
    clf.set_params(random_state=1)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="Tried to allocate"):
        clf.fit(X, y)
    assert np.array_equal(clf.predict_proba(X), before)
    clf.set_params(batch_size=4, max_epochs=1)
    clf.fit(X, y)
    assert [b["train_batch_size"] for b in clf.net_.history[-1]["batches"]] == [4] * 15
    assert not np.array_equal(clf.predict_proba(X), before)


# ---------------------------------------------------------------------------------------------
# GridSearchCV
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:One or more of the test scores are non-finite")
def test_grid_search_reports_a_failing_candidate_and_honours_error_score(data):
    X, y = data
    grid = GridSearchCV(
        _cnn(max_epochs=5, freeze_depth=0),
        {"lr": [0.01, 1e6]},
        cv=2,
        error_score=np.nan,
    )
    with pytest.warns(FitFailedWarning, match=r"FloatingPointError.*(NaN or infinite|became)"):
        grid.fit(X, y)
    scores = grid.cv_results_["mean_test_score"]
    assert np.isfinite(scores[0]) and np.isnan(scores[1])
    assert grid.best_params_ == {"lr": 0.01}
    grid.set_params(error_score="raise", param_grid={"lr": [1e6]})
    with pytest.raises(FloatingPointError, match=r"epoch \d+"):
        grid.fit(X, y)


# ---------------------------------------------------------------------------------------------
# Early stopping
# ---------------------------------------------------------------------------------------------


class _Record(Callback):
    """Records, after each epoch, the validation loss, the probabilities on ``X`` and the
    validation split (class attributes: skorch nets get copies of the callback)."""

    epochs = []
    splits = []

    def __init__(self, X=None):
        self.X = X

    def on_epoch_begin(self, net, dataset_valid=None, **kwargs):
        if len(net.history) == 1:
            _Record.splits.append(np.asarray(dataset_valid.y).copy())

    def on_epoch_end(self, net, **kwargs):
        if self.X is None:
            return
        module = net.module_
        module.eval()
        with torch.no_grad():
            logits = module(torch.as_tensor(self.X), start=0)
        module.train()
        _Record.epochs.append(
            (net.history[-1, "valid_loss"], torch.softmax(logits.double(), 1).numpy())
        )


@pytest.fixture
def record():
    _Record.epochs.clear()
    _Record.splits.clear()
    return _Record


def test_early_stopping_stops_and_restores_the_best_epoch(record):
    rng = np.random.RandomState(0)
    X = rng.rand(60, 8, 8, 3).astype(np.float32)
    y = rng.randint(0, 2, 60)  # noise: the validation loss soon stops improving
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = _cnn(
            early_stopping=True,
            validation_fraction=0.3,
            n_iter_no_change=2,
            max_epochs=30,
            lr=0.5,
            callbacks=[record(X)],
        ).fit(X, y)
    assert not [w for w in caught if "interrupted" in str(w.message)]
    assert len(clf.history_) == clf.n_iter_
    losses = [row["valid_loss"] for row in clf.history_]
    best = int(np.argmin(losses))
    # stopped n_iter_no_change epochs after the best one, long before max_epochs
    assert clf.n_iter_ == best + 1 + 2 < 30
    assert record.epochs[best][0] == losses[best]
    np.testing.assert_allclose(clf.predict_proba(X), record.epochs[best][1], atol=1e-6, rtol=0)
    assert not np.allclose(clf.predict_proba(X), record.epochs[-1][1], atol=1e-4)


class _Accuracy(Callback):
    """Recomputes, after each epoch, the accuracy on the validation set by skorch's own
    evaluation steps (a class attribute: the estimator copies its callbacks)."""

    accuracies = []

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        correct = n = 0
        for batch in net.get_iterator(dataset_valid, training=False):
            y_pred = net.evaluation_step(batch, training=False)
            correct += int((y_pred.argmax(1).cpu() == batch[1]).sum())
            n += len(batch[1])
        _Accuracy.accuracies.append(correct / n)


def test_early_stopping_history_has_per_epoch_losses_and_accuracy(data):
    X, y = data
    _Accuracy.accuracies.clear()
    clf = _cnn(early_stopping=True, max_epochs=3, n_iter_no_change=5, lr=0.3,  # it learns:
               callbacks=[_Accuracy()]).fit(X, y)  # the accuracy differs from epoch to epoch
    assert len(clf.history_) == 3
    for row in clf.history_:
        assert {"train_loss", "valid_loss", "valid_acc"} <= set(row)
    assert [row["valid_acc"] for row in clf.history_] == _Accuracy.accuracies


def test_early_stopping_split_is_stratified_and_seeded(record):
    rng = np.random.RandomState(0)
    X = rng.rand(60, 6, 6, 3).astype(np.float32)
    y = np.array([0] * 40 + [1] * 20)
    for seed in (0, 0, 1):
        _cnn(
            early_stopping=True,
            validation_fraction=0.3,
            max_epochs=1,
            random_state=seed,
            callbacks=[record()],
        ).fit(X, y)
    first, again, other = record.splits
    assert np.bincount(first).tolist() == [12, 6]  # 2:1, as in y
    assert np.array_equal(first, again)
    assert np.bincount(other).tolist() == [12, 6]


def test_early_stopping_split_is_reproducible_in_its_rows():
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.array([0, 1] * 10)

    rows = []

    class Rows(Callback):
        def on_epoch_begin(self, net, dataset_valid=None, **kwargs):
            rows.append(np.asarray(dataset_valid.source.X[:, 0]).tolist())

    for seed in (0, 0, 5):
        TransferClassifier(
            "test_mlp", **{**TINY, "random_state": seed}, max_epochs=1, freeze_depth=0,
            early_stopping=True, validation_fraction=0.5, callbacks=[Rows()],
        ).fit(X, y)
    assert rows[0] == rows[1]
    assert rows[0] != rows[2]


def test_early_stopping_with_a_class_of_one_sample_warns_and_falls_back(data):
    X, _ = data
    y = np.array([0] * 30 + [1] * 29 + [2])
    with pytest.warns(UserWarning, match="fewer than 2 samples.*not stratified"):
        clf = _cnn(early_stopping=True, max_epochs=1, validation_fraction=0.2).fit(X, y)
    assert clf.classes_.tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------------------------
# BatchNorm statistics that diverge while the training loss looks finite
# ---------------------------------------------------------------------------------------------


class _CorruptRunningStats(Callback):
    """Drives the running statistics of one stage's BatchNorm layer to finite but extreme
    values after each batch: every weight and buffer stays finite and the training loss (on
    batch statistics) too; only an eval-mode forward overflows."""

    def __init__(self, stage):
        self.stage = stage

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            bn = [m for m in getattr(net.module_.stages, self.stage).modules()
                  if isinstance(m, torch.nn.BatchNorm2d)][0]
            bn.running_mean.fill_(-3e38)
            bn.running_var.fill_(1e-5)


@pytest.mark.parametrize("freeze_depth, batchnorm, stage", [
    (0, "trained", "stem"), (1, "trained", "block1"), (2, "trained", "block2"),
    (2, "all", "stem"),  # batchnorm="all": the frozen stages' statistics change too
])
def test_diverged_batchnorm_statistics_stop_training(data, freeze_depth, batchnorm, stage):
    X, y = data
    clf = _cnn(freeze_depth=freeze_depth, batchnorm=batchnorm,
               callbacks=[("poison", _CorruptRunningStats(stage))])
    with pytest.raises(FloatingPointError, match="eval-mode output became NaN or infinite"):
        clf.fit(X, y)


@pytest.fixture
def eval_check_starts(monkeypatch):
    """The ``start`` of every eval-mode forward that the training guard runs."""
    starts = []
    forward = TransferNet.forward

    def spy(self, x, start=None):
        if not self.training and start is not None:  # predict passes no start
            starts.append(start)
        return forward(self, x, start)

    monkeypatch.setattr(TransferNet, "forward", spy)
    return starts


@pytest.mark.parametrize("freeze_depth", [1, 2])
def test_the_eval_mode_check_runs_only_the_stages_that_can_change(data, freeze_depth,
                                                                 eval_check_starts):
    X, y = data
    _cnn(freeze_depth=freeze_depth, max_epochs=2).fit(X, y)
    assert set(eval_check_starts) == {freeze_depth}  # where BatchNorm layers start to train


def test_nothing_to_check_in_eval_mode_when_no_batchnorm_statistics_change(data,
                                                                         eval_check_starts):
    X, y = data
    _cnn(freeze_depth="all", max_epochs=2).fit(X, y)
    assert eval_check_starts == []


@pytest.mark.parametrize(
    "tensors, finite",
    [
        ([torch.ones(3), torch.zeros(2, 2)], True),
        ([torch.ones(3), torch.tensor([1.0, float("nan")])], False),
        ([torch.tensor([float("inf"), 1.0])], False),
        ([torch.tensor([float("inf"), -float("inf")])], False),  # sums to NaN
        ([torch.full((4,), 3e38)], True),  # finite entries whose float32 sum overflows
        ([torch.full((4,), 6e4, dtype=torch.float16)], True),
        ([torch.tensor([1.0, float("nan")], dtype=torch.bfloat16)], False),
        ([torch.full((2,), 1e300, dtype=torch.float64)], True),
        ([], True),
    ],
)
def test_the_weight_check_tells_non_finite_from_large_finite_values(tensors, finite):
    from sktransfer._training import _all_finite

    assert _all_finite(tensors) is finite
