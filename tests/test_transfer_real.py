"""Real transfer with the real offline EfficientNet-Lite0 ImageNet weights on real images."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

from sktransfer import TransferClassifier
from sktransfer.datasets import load_textures


@pytest.fixture(scope="module")
def textures():
    X, y = load_textures(patch_size=64, return_X_y=True)
    rng = np.random.RandomState(0)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        train += list(idx[:12])
        test += list(idx[12:40])
    return X[train], y[train], X[test], y[test]


def test_pretrained_fine_tuning_beats_random_init_on_real_textures(textures):
    X_tr, y_tr, X_te, y_te = textures
    params = dict(input_size=48, max_epochs=4, batch_size=12, lr=0.01, random_state=0)
    pre = TransferClassifier("efficientnet_lite0", weights="DEFAULT", freeze_depth=-2, **params)
    rnd = TransferClassifier("efficientnet_lite0", weights=None, freeze_depth=-2, **params)
    acc_pre = pre.fit(X_tr, y_tr).score(X_te, y_te)
    acc_rnd = rnd.fit(X_tr, y_tr).score(X_te, y_te)
    assert acc_pre >= 0.8
    assert acc_pre >= acc_rnd + 0.2
    assert pre.weights_.startswith("DEFAULT")


def test_gridsearch_over_freeze_depth_lr_momentum_with_real_weights(textures):
    X_tr, y_tr, _, _ = textures
    search = GridSearchCV(
        TransferClassifier("efficientnet_lite0", input_size=32, max_epochs=2, batch_size=12,
                           random_state=0),
        {"freeze_depth": ["all", -1], "lr": [0.01, 0.001], "momentum": [0.9, 0.0]},
        cv=2,
    )
    search.fit(X_tr, y_tr)
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (8,)
    assert np.all(np.isfinite(scores))
    assert search.best_score_ > 1 / 3 + 0.2  # well above chance on 3 classes
