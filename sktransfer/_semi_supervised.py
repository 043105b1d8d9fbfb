"""Semi-supervised fits of :class:`~sktransfer.TransferClassifier` (``unlabeled=...``).

scikit-learn's convention (:mod:`sklearn.semi_supervised`): rows labelled -1 are unlabeled.
Stage one pretrains the backbone self-supervised on every row
(:mod:`sktransfer.pretraining`); stage two fine-tunes the classifier on the labeled rows,
starting from the stages stage one trained.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.utils.validation import column_or_1d

from ._compat import num_samples, safe_indexing
from ._model_folder import saved_stages_of
from ._runtime import seed_from
from .pretraining import AutoencoderPretrainer, ContrastivePretrainer

__all__ = ["fit_semi_supervised", "refuse_unlabeled_marker"]


def fit_semi_supervised(clf, X, y, unlabeled=None):
    """Stage one (self-supervised pretraining on every row), then fine-tuning on the
    labeled rows, starting from the stages of stage one. ``unlabeled``: the unlabeled rows
    (default: those of y labelled -1)."""
    y = np.asarray(y) if not hasattr(y, "iloc") else y.to_numpy()
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    if y.ndim != 1 or len(y) != num_samples(X):
        return clf._fit(X, y)  # which says what is wrong with y
    unlabeled = _unlabeled_rows(y) if unlabeled is None else np.asarray(unlabeled, bool)
    labeled = np.flatnonzero(~unlabeled)
    if len(labeled) == 0:
        raise ValueError(
            f"Every row of y is -1 (unlabeled): unlabeled={clf.unlabeled!r} fine-tunes on "
            "the labeled rows after pretraining on all of them, and there are none. Label "
            "some rows, or pretrain alone with sktransfer.pretraining.ContrastivePretrainer."
        )
    if clf.warm_start and hasattr(clf, "module_"):  # continues the previous fit
        return clf._fit(safe_indexing(X, labeled), y[labeled])
    clf._encode_y(y[labeled], n_samples=len(labeled))  # label errors before stage one
    pretrainer = _stage_one_pretrainer(clf, seed_from(clf.random_state))
    pretrainer.fit(X)
    stage_one = saved_stages_of(
        pretrainer.module_.state_dict(), backbone_name=pretrainer.backbone_name_,
        stage_names=pretrainer.stage_names_,
        source=f"{type(pretrainer).__name__} on {len(y)} rows ({int(unlabeled.sum())} "
               "unlabeled)",
        origin=f"starting from {pretrainer.weights_ or 'random initialisation'}",
        grayscale=clf.grayscale,
    )
    return clf._fit(safe_indexing(X, labeled), y[labeled], weights=stage_one)


def _stage_one_pretrainer(clf, seed):
    """The pretrainer of stage one: this classifier's network settings, the method's
    hyperparameters."""
    network = {
        "backbone": clf.backbone, "weights": clf.weights, "input_size": clf.input_size,
        "image_shape": clf.image_shape, "grayscale": clf.grayscale,
        "device": clf.device,
    }
    if isinstance(clf.unlabeled, str):
        cls = {"contrastive": ContrastivePretrainer,
               "autoencoder": AutoencoderPretrainer}[clf.unlabeled]
        epochs = {} if clf.max_epochs == "auto" else {"max_epochs": clf.max_epochs}
        return cls(**network, **epochs, random_state=seed, verbose=clf.verbose)
    pretrainer = clone(clf.unlabeled).set_params(**network)
    if pretrainer.get_params().get("random_state") is None:
        pretrainer.set_params(random_state=seed)
    return pretrainer


def _integral_labels(y):
    """Whether y holds integers (of an integer dtype, or integral floats or Python numbers)."""
    if y.dtype.kind in "iu":
        return True
    if y.dtype.kind == "O":
        if not all(isinstance(v, (int, float, np.integer, np.floating))
                   and not isinstance(v, (bool, np.bool_)) for v in y):
            return False
        y = y.astype(float)
    return y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (y == np.round(y))))


def _unlabeled_rows(y):
    """Rows whose label is -1 (scikit-learn's marker of unlabeled samples) in integral y."""
    if not len(y) or not _integral_labels(y):
        return np.zeros(len(y), dtype=bool)
    return np.asarray(y == -1, dtype=bool)


def refuse_unlabeled_marker(y):
    """Integer (or integral float) y with -1 beside two or more other labels follows the
    semi-supervised convention; fitted without ``unlabeled``, -1 would silently become a class.
    (Binary {-1, 1} labels pass: -1 is then a class, as everywhere in scikit-learn.)"""
    marked = _unlabeled_rows(y)
    if not marked.any():
        return
    others = np.unique(y[~marked])
    if len(others) >= 2 or len(others) == 0:
        shown = ", ".join(str(v) for v in others[:5]) + (" ..." if len(others) > 5 else "")
        where = (f"in {int(marked.sum())} row(s) beside the labels {shown}" if len(others)
                 else f"in every row ({len(y)})")
        raise ValueError(
            f"y holds -1 {where}: scikit-learn marks unlabeled "
            "rows with -1 (sklearn.semi_supervised). To use them, say what they are for: "
            "unlabeled='coral', 'mcc' or 'dann' when they are images of another domain, the "
            "one to predict (domain adaptation); unlabeled='contrastive' (or 'autoencoder', "
            "or a pretrainer) to pretrain the backbone on every row, then fine-tune on the "
            "labeled ones. To ignore them, drop those rows. If -1 is a class of its own, give "
            "the labels another type (e.g. y.astype(str))."
        )
