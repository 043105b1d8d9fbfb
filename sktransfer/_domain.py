"""What unlabeled rows in ``fit`` are for: the one door of ``unlabeled=``.

scikit-learn's and skada's convention: rows of y labelled -1 (a classifier) or NaN (a
regressor) are unlabeled; an optional ``sample_domain`` (positive: a source domain, negative:
a target domain) marks the domains explicitly, and the rows of a target domain count as
unlabeled whatever their y holds. ``unlabeled=`` says what those rows are for:

* ``"contrastive"``, ``"autoencoder"`` or a pretrainer: stage one, self-supervised pretraining
  on every row (:mod:`sktransfer._semi_supervised`), then fine-tuning on the labeled rows;
* ``"adabn"``, ``"coral"``, ``"mcc"``, ``"dann"``: unsupervised domain adaptation: the
  labeled rows train the model while the unlabeled ones, the target domain, are pulled
  towards them (:mod:`sktransfer._adaptation_training`).
"""

from __future__ import annotations

import numpy as np

from ._adaptation_training import ADAPTATION_METHODS
from ._compat import num_samples
from ._semi_supervised import fit_semi_supervised

__all__ = ["ADAPTATION", "check_sample_domain", "fit_with_unlabeled", "unlabeled_mask"]

ADAPTATION = frozenset(ADAPTATION_METHODS)


def _as_array(y):
    y = np.asarray(y) if not hasattr(y, "to_numpy") else y.to_numpy()
    if y.ndim == 2 and y.shape[1] == 1 and y.dtype.kind != "f":
        y = y.ravel()
    return y


def check_sample_domain(sample_domain, n):
    """``sample_domain`` as an integer array of ``n`` values, none 0 (skada's convention)."""
    sd = np.asarray(sample_domain)
    if sd.ndim != 1 or len(sd) != n:
        raise ValueError(
            f"sample_domain must hold one domain per row of X ({n}), got shape {sd.shape}. "
            "Pass an integer per row: positive for a source domain, negative for a target "
            "domain (skada's convention), or leave it out and mark the target rows' y with "
            "-1 (NaN for a regressor)."
        )
    if sd.dtype.kind not in "iu" or np.any(sd == 0):
        raise ValueError(
            "sample_domain must hold non-zero integers: positive for a source domain, "
            f"negative for a target domain; got dtype {sd.dtype}"
            + (" and zeros." if sd.dtype.kind in "iu" else ".")
        )
    return sd


def unlabeled_mask(y, n, *, classifier, sample_domain=None):
    """The unlabeled rows of y (-1, or NaN for a regressor), and the rows of negative
    ``sample_domain``. Refuses NaN labels for a classifier, saying what to do."""
    y = _as_array(y)
    if classifier and y.dtype.kind in "fc" and np.isnan(y).any():
        raise ValueError(
            f"Input y contains NaN or infinity (NaN in {int(np.isnan(y).sum())} row(s)): a "
            "classifier marks unlabeled rows with -1 (NaN is a regressor's marker). Replace "
            "NaN by -1 (and give y an integer or string type), or drop those rows."
        )
    if classifier:
        mask = _minus_one(y)
    else:
        y2 = y.astype(np.float64, copy=False) if y.dtype.kind in "iufb" else None
        mask = (np.zeros(len(y), bool) if y2 is None
                else np.isnan(y2.reshape(len(y2), -1)).any(1))
    if sample_domain is not None:
        mask = mask | (check_sample_domain(sample_domain, n) < 0)
    return mask


def _minus_one(y):
    if y.dtype.kind in "iu":
        return y == -1
    if y.dtype.kind == "f":
        return y == -1.0
    if y.dtype.kind == "O":
        return np.array([isinstance(v, (int, float, np.integer, np.floating))
                         and not isinstance(v, bool) and v == -1 for v in y], dtype=bool)
    return np.zeros(len(y), dtype=bool)


def _check_target_images(X, target):
    """Target images given as a list must have the source images' shape (and channels)."""
    if not isinstance(X, (list, tuple)) or not len(X) or isinstance(X[0], (str, bytes)):
        return
    shapes = [getattr(x, "shape", None) or np.shape(x) for x in X]
    if any(isinstance(s, tuple) is False for s in shapes):
        return
    src = {tuple(s) for s, t in zip(shapes, target) if not t}
    tgt = {tuple(s) for s, t in zip(shapes, target) if t}
    if src and tgt and src != tgt:
        raise ValueError(
            f"The unlabeled target images have shape {sorted(tgt)[0]} and the labeled source "
            f"images {sorted(src)[0]}: the network takes one image shape and channel count. "
            "Resize the target images to the source's size and give them the same number of "
            "channels (e.g. np.repeat(gray[..., None], 3, axis=-1)) before passing both in one "
            "X."
        )


def fit_with_unlabeled(est, X, y, sample_domain=None):
    """``est.fit(X, y, sample_domain=...)``: the rows marked unlabeled go where
    ``est.unlabeled`` says."""
    if y is None:
        return est._fit(X, y)
    n = num_samples(X)
    if len(_as_array(y)) != n:
        return est._fit(X, y)  # which says what is wrong with y
    mask = unlabeled_mask(y, n, classifier=est._is_classifier, sample_domain=sample_domain)
    method = est.unlabeled
    if method is None:
        if sample_domain is not None and mask.any():
            raise ValueError(
                f"sample_domain marks {int(mask.sum())} row(s) as a target domain, but "
                "unlabeled=None trains on labeled rows only. Set unlabeled='coral', 'mcc' or "
                "'dann' to adapt to the target rows (or 'contrastive' to pretrain on them)."
            )
        return est._fit(X, y)
    if not isinstance(method, str) or method not in ADAPTATION:
        return fit_semi_supervised(est, X, y, unlabeled=mask)
    _check_adaptation_rows(est, mask)
    _check_target_images(X, mask)
    return est._fit(X, y, target=mask)


def _check_adaptation_rows(est, mask):
    marker = "-1" if est._is_classifier else "NaN"
    if not mask.any():
        raise ValueError(
            f"unlabeled={est.unlabeled!r} adapts the model to unlabeled target rows, and there "
            f"are none: the target set is empty. Add the target images to X with y = {marker} "
            "(or sample_domain < 0), or set unlabeled=None to train on the labeled rows alone."
        )
    if mask.all():
        raise ValueError(
            f"Every row is unlabeled: unlabeled={est.unlabeled!r} trains on labeled source rows "
            "while adapting to the unlabeled target rows, and there are no labeled rows. Add "
            "labeled source images to X, or pretrain alone with "
            "sktransfer.pretraining.ContrastivePretrainer."
        )
    if est.freeze_depth == "all":
        raise ValueError(
            f"unlabeled={est.unlabeled!r} adapts the backbone's features, and "
            "freeze_depth='all' freezes all of them. Train some stages (freeze_depth=-3, or "
            "'auto')."
        )
    if est.accelerator is not None:
        raise ValueError(
            f"unlabeled={est.unlabeled!r} does not train through accelerate; use "
            "accelerator=None."
        )
