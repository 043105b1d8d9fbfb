"""The defaults that adapt to the data size: freeze_depth, head_init and max_epochs left at
"auto" are resolved in fit (sktransfer._adaptive), visibly, reproducibly, never overriding a
value the user set, and clones and searches still see "auto"."""

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

import sktransfer
from sktransfer import TransferClassifier, TransferRegressor
from sktransfer._adaptive import (
    MAX_EPOCHS,
    MIN_GAIN_ROWS,
    PROBE_BELOW,
    SELECT_FRACTION,
    STEP_BUDGET,
    resolve_auto,
)


def _images(per_class, n_classes=2, seed=0):
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    X = rng.rand(len(y), 16, 16, 3).astype(np.float32) * 0.5
    X[y == 1, :8] += 0.5
    return X, y


def _clf(**kw):
    return TransferClassifier("test_cnn", weights=None, random_state=0, **kw)


def test_few_labels_per_class_make_the_model_the_linear_probe():
    X, y = _images(PROBE_BELOW - 1)
    clf = _clf().fit(X, y)
    assert (clf.freeze_depth_, clf.head_init_, clf.max_epochs_) == ("all", "linear_probe", 0)
    assert clf.n_frozen_stages_ == 3 and clf.n_iter_ == 0 and clf.history_ == []


@pytest.mark.parametrize("winner", ["fine_tuned", "linear_probe"])
def test_enough_labels_per_class_fine_tune_and_keep_it_only_if_it_beats_the_probe(
        winner, monkeypatch):
    from sktransfer import _base

    # the probe's held-out score, made to lose or win
    monkeypatch.setattr(_base, "probe_score", lambda *a, **k: -np.inf if winner ==
                        "fine_tuned" else np.inf)
    X, y = _images(PROBE_BELOW)
    clf = _clf(batch_size=8).fit(X, y)
    assert clf.head_init_ == "linear_probe"
    n_train = len(y) - int(np.ceil(SELECT_FRACTION * len(y)))  # rows held out to compare
    steps = int(np.ceil(n_train / 8))
    assert clf.max_epochs_ == min(MAX_EPOCHS, int(np.ceil(STEP_BUDGET / steps)))
    assert set(clf.selection_scores_) == {"linear_probe", "fine_tuned"}
    if winner == "fine_tuned":
        # test_cnn has 3 stages: the first half (one, rounded down) frozen
        assert clf.freeze_depth_ == 1 and clf.n_frozen_stages_ == 1
        assert clf.n_iter_ == clf.max_epochs_
    else:
        # the pretrained network back, every stage frozen, the probe refitted on every row
        assert clf.freeze_depth_ == "all" and clf.n_frozen_stages_ == 3 and clf.n_iter_ == 0
        probe = _clf(freeze_depth="all").fit(X, y)
        np.testing.assert_allclose(clf.predict_proba(X), probe.predict_proba(X), atol=1e-6)


def test_the_choice_follows_the_held_out_scores():
    X, y = _images(PROBE_BELOW)
    clf = _clf(batch_size=8).fit(X, y)
    scores = clf.selection_scores_
    n_valid = int(np.ceil(SELECT_FRACTION * len(y)))
    won = scores["fine_tuned"] - scores["linear_probe"] >= MIN_GAIN_ROWS / n_valid - 1e-9
    assert clf.freeze_depth_ == (1 if won else "all")
    assert clf.n_iter_ == (clf.max_epochs_ if won else 0)


def test_a_value_the_user_sets_is_always_obeyed():
    X, y = _images(5)
    clf = _clf(freeze_depth=1, head_init="random", max_epochs=2).fit(X, y)
    assert (clf.freeze_depth_, clf.head_init_, clf.max_epochs_) == (1, "random", 2)
    assert clf.n_frozen_stages_ == 1 and clf.n_iter_ == 2
    # one set, the others still adapt: a depth to train makes the epochs a budget
    partly = _clf(freeze_depth=2, batch_size=8).fit(X, y)
    assert partly.freeze_depth_ == 2 and partly.head_init_ == "linear_probe"
    assert partly.max_epochs_ == MAX_EPOCHS and partly.n_iter_ == MAX_EPOCHS
    assert partly.selection_scores_ is None  # a depth the user set is not second-guessed


def test_the_resolved_values_are_the_same_on_every_run_and_clones_see_auto():
    X, y = _images(PROBE_BELOW)
    first = _clf(batch_size=8).fit(X, y)
    second = clone(first).fit(X, y)
    for attr in ("freeze_depth_", "head_init_", "max_epochs_", "n_frozen_stages_"):
        assert getattr(first, attr) == getattr(second, attr)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    params = first.get_params()
    assert (params["freeze_depth"], params["head_init"], params["max_epochs"]) == ("auto",) * 3
    assert clone(first).get_params()["max_epochs"] == "auto"


def test_grid_searches_see_auto_and_refit_resolves_it():
    X, y = _images(12)
    search = GridSearchCV(_clf(batch_size=8), {"lr": [0.01, 0.05]}, cv=2).fit(X, y)
    assert search.best_estimator_.get_params()["freeze_depth"] == "auto"
    assert all(p == {"lr": lr} for p, lr in zip(search.cv_results_["params"], [0.01, 0.05]))
    assert search.best_estimator_.freeze_depth_ == "all"  # 12 labels per class


def test_verbose_says_what_auto_became(capsys):
    X, y = _images(5)
    _clf(verbose=1).fit(X, y)
    out = capsys.readouterr().out
    assert "freeze_depth='auto' -> 'all' (5 labels per class" in out
    assert "head_init='auto' -> 'linear_probe'" in out and "max_epochs='auto' -> 0" in out


def test_regressor_counts_a_tenth_of_its_rows_as_labels_per_class():
    X, _ = _images(PROBE_BELOW * 5)  # as many "labels per class" as PROBE_BELOW
    y = X[:, :8].mean(axis=(1, 2, 3))
    small = TransferRegressor("test_cnn", weights=None, random_state=0).fit(X[:40], y[:40])
    assert small.freeze_depth_ == "all" and small.n_iter_ == 0  # 4 "labels per class"
    assert small.selection_scores_ is None
    large = TransferRegressor("test_cnn", weights=None, random_state=0,
                              batch_size=32).fit(X, y)
    assert set(large.selection_scores_) == {"linear_probe", "fine_tuned"}  # it compared


def test_augmentation_left_unused_by_the_probe_is_said(tiny_images):
    X, y = _images(5)
    with pytest.warns(UserWarning, match="augment='flip' was not used: freeze_depth='auto'"):
        _clf(augment="flip").fit(X, y)


def test_the_resolved_values_survive_the_safe_format_and_old_files_load(tmp_path):
    X, y = _images(5)
    clf = _clf().fit(X, y)
    folder = tmp_path / "m.skt"
    sktransfer.save(clf, folder)
    loaded = sktransfer.load(folder)
    assert (loaded.freeze_depth_, loaded.head_init_, loaded.max_epochs_) == ("all",
                                                                             "linear_probe", 0)
    # a model saved before these attributes existed
    config = json.loads((folder / "config.json").read_text())
    for attr in ("freeze_depth_", "head_init_", "max_epochs_"):
        del config["fitted"][attr]
    (folder / "config.json").write_text(json.dumps(config))
    old = sktransfer.load(folder)
    assert old.freeze_depth_ is None and old.max_epochs_ is None
    np.testing.assert_array_equal(old.predict_proba(X), clf.predict_proba(X))


def test_the_rule_itself():
    kw = dict(freeze_depth="auto", head_init="auto", max_epochs="auto", batch_size=32)
    assert resolve_auto(per_class=PROBE_BELOW - 0.5, n_train=10, **kw).freeze_depth == "all"
    r = resolve_auto(per_class=PROBE_BELOW, n_train=32 * 1000, **kw)
    assert r.freeze_depth == "auto" and r.select and r.max_epochs >= 1
    # a random head on frozen stages still trains
    r = resolve_auto(per_class=1, n_train=10, **{**kw, "head_init": "random"})
    assert r.freeze_depth == "all" and r.max_epochs > 0
