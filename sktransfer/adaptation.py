"""Unsupervised domain adaptation: data helpers, losses and scorers that need no target labels.

The estimators adapt to unlabeled images of the domain to predict when ``unlabeled`` is
``"adabn"``, ``"coral"``, ``"mcc"`` or ``"dann"``: their rows are in X, labelled -1 (NaN for a
regressor), or marked by a negative ``sample_domain`` (skada's convention). This module holds
what goes around such a fit:

* :func:`merge_domains` puts labeled source images and unlabeled target images in one X, y and
  ``sample_domain``;
* :class:`PredictionEntropyScorer` and :class:`DeepEmbeddedValidationScorer` score a fitted
  model on a validation fold without reading the target rows' labels, so that
  ``GridSearchCV(scoring=...)`` can choose the method and its strength;
* :func:`coral_loss` and :func:`mcc_loss`, the losses the training uses.

Nothing here needs skada; skada's scorers and splitters accept these estimators too.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.metadata_routing import MetadataRequest

from ._adaptation_training import coral_loss, mcc_loss
from ._compat import num_samples, safe_indexing
from ._domain import check_sample_domain, unlabeled_mask
from ._embedding import _backbone_features

__all__ = [
    "DeepEmbeddedValidationScorer",
    "PredictionEntropyScorer",
    "coral_loss",
    "mcc_loss",
    "merge_domains",
    "target_rows",
]


def merge_domains(X_source, y_source, X_target, *, regression=False):
    """One ``X``, ``y`` and ``sample_domain`` from labeled source and unlabeled target data.

    Parameters
    ----------
    X_source : ndarray
        Labeled images (or vectors).
    y_source : array-like of shape (n_source,)
        Their labels (integers or strings for a classifier, floats for a regressor).
    X_target : ndarray
        Unlabeled images of the same shape.
    regression : bool, default=False
        Mark the target rows with NaN (a regressor) instead of -1.

    Returns
    -------
    X : ndarray
        Source rows, then target rows.
    y : ndarray
        ``y_source``, then -1 (or NaN) for each target row; string labels become objects.
    sample_domain : ndarray of int
        1 for the source rows, -1 for the target rows.

    Examples
    --------
    >>> import numpy as np
    >>> X, y, sd = merge_domains(np.zeros((2, 4)), [3, 5], np.ones((3, 4)))
    >>> y.tolist(), sd.tolist()
    ([3, 5, -1, -1, -1], [1, 1, -1, -1, -1])
    """
    X_source, X_target = np.asarray(X_source), np.asarray(X_target)
    if X_source.shape[1:] != X_target.shape[1:]:
        raise ValueError(
            f"The target images have shape {X_target.shape[1:]} and the source images "
            f"{X_source.shape[1:]}: resize them to one shape and channel count first."
        )
    y_source = np.asarray(y_source)
    n_t = len(X_target)
    if regression:
        tail = np.full((n_t, *y_source.shape[1:]), np.nan)
        y = np.concatenate([y_source.astype(np.float64), tail])
    elif y_source.dtype.kind in "iu":
        y = np.concatenate([y_source, np.full(n_t, -1, dtype=y_source.dtype)])
    else:
        y = np.concatenate([y_source.astype(object), np.full(n_t, -1, dtype=object)])
    sd = np.concatenate([np.ones(len(X_source), int), -np.ones(n_t, int)])
    return np.concatenate([X_source, X_target]), y, sd


def target_rows(y, sample_domain=None, *, classifier=True):
    """The rows of a validation fold that belong to the target domain: y -1 (NaN for a
    regressor), or ``sample_domain`` negative when it is given.

    Examples
    --------
    >>> target_rows([0, 1, -1, 2]).tolist()
    [False, False, True, False]
    >>> target_rows([0, 1, 1, 2], sample_domain=[1, 1, -2, -2]).tolist()
    [False, False, True, True]
    """
    y = np.asarray(y)
    if sample_domain is not None:
        return check_sample_domain(sample_domain, len(y)) < 0
    return unlabeled_mask(y, len(y), classifier=classifier)


class _DomainScorer:
    """A scorer ``scorer(estimator, X, y, sample_domain=None)`` that asks for
    ``sample_domain`` when scikit-learn's metadata routing is on (it works without it)."""

    def get_metadata_routing(self):
        """The metadata the scorer asks for: ``sample_domain``, when routing is on.

        Returns
        -------
        request : sklearn.utils.metadata_routing.MetadataRequest
            ``sample_domain`` requested for ``score``.

        Examples
        --------
        >>> PredictionEntropyScorer().get_metadata_routing().score.requests
        {'sample_domain': True}
        """
        request = MetadataRequest(owner=type(self).__name__)
        request.score.add_request(param="sample_domain", alias=True)
        return request

    def _split(self, estimator, X, y, sample_domain):
        classifier = hasattr(estimator, "predict_proba")
        tgt = target_rows(y, sample_domain, classifier=classifier)
        if len(tgt) != num_samples(X):
            raise ValueError(f"y has {len(tgt)} rows but X has {num_samples(X)}.")
        if not tgt.any():
            raise ValueError(
                f"{type(self).__name__} scores on the target rows (y -1, NaN for a regressor, "
                "or sample_domain < 0), and this validation fold has none. Put target rows in "
                "every fold (e.g. StratifiedKFold, which keeps the share of y == -1)."
            )
        return tgt

    def __repr__(self):
        return f"{type(self).__name__}()"


class PredictionEntropyScorer(_DomainScorer):
    """Minus the mean entropy of the predicted class probabilities on the target rows
    (Morerio et al. 2018): confident predictions on the target domain score higher.

    It reads only the target rows' images, never their labels. It rewards confidence, right or
    wrong, so it is best used to choose the strength of one method, not between methods that
    can collapse to confident wrong predictions.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> X = np.random.RandomState(0).rand(30, 16, 16, 3).astype(np.float32)
    >>> y = np.array([0, 1, 2] * 6 + [-1] * 12)
    >>> clf = TransferClassifier("test_cnn", weights=None, unlabeled="coral", freeze_depth=1,
    ...                          max_epochs=1, random_state=0).fit(X, y)
    >>> score = PredictionEntropyScorer()(clf, X, y)
    >>> bool(-np.log(3) <= score <= 0)
    True
    """

    def __call__(self, estimator, X, y, sample_domain=None):
        tgt = self._split(estimator, X, y, sample_domain)
        proba = np.clip(estimator.predict_proba(safe_indexing(X, np.flatnonzero(tgt))),
                        1e-12, 1.0)
        return float(np.mean(np.sum(proba * np.log(proba), axis=1)))


class DeepEmbeddedValidationScorer(_DomainScorer):
    """Minus the deep embedded validation risk (You et al., ICML 2019).

    The loss on the fold's labeled source rows, each weighted by how much it looks like the
    target domain in the fitted network's own features: a domain classifier (standardised
    logistic regression, ``domain_classifier``) tells the fold's source rows from its target
    rows, out of fold, and gives each source row the density ratio ``p(target | x) /
    p(source | x)`` (scaled by the rows per domain). The weighted mean loss gets the control
    variate of the paper, which lowers its variance. Higher is better, as scikit-learn's
    scorers. The target rows' labels are never read.

    Parameters
    ----------
    domain_classifier : classifier or None, default=None
        The domain classifier; ``None`` is standardisation and logistic regression.
    n_splits : int, default=3
        Folds of the out-of-fold domain probabilities.
    clip : float, default=50.0
        Largest density ratio a row can get.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> X = np.random.RandomState(0).rand(40, 16, 16, 3).astype(np.float32)
    >>> y = np.array([0, 1] * 10 + [-1] * 20)
    >>> clf = TransferClassifier("test_cnn", weights=None, unlabeled="coral", freeze_depth=1,
    ...                          max_epochs=1, random_state=0).fit(X, y)
    >>> bool(np.isfinite(DeepEmbeddedValidationScorer()(clf, X, y)))
    True
    """

    def __init__(self, domain_classifier=None, n_splits=3, clip=50.0):
        self.domain_classifier = domain_classifier
        self.n_splits = n_splits
        self.clip = clip

    def __call__(self, estimator, X, y, sample_domain=None):
        tgt = self._split(estimator, X, y, sample_domain)
        src = np.flatnonzero(~tgt)
        if len(src) < 2:
            raise ValueError("DeepEmbeddedValidationScorer needs labeled source rows in the "
                             f"validation fold; it has {len(src)}.")
        feats = _backbone_features(estimator, X, pretrained=False)
        weights = self._density_ratio(feats, tgt)[src]
        losses = _row_losses(estimator, safe_indexing(X, src), np.asarray(y, dtype=object)[src])
        weighted = weights * losses
        var = np.var(weights)
        eta = 0.0 if var == 0 else -np.cov(weighted, weights)[0, 1] / var
        return -float(np.mean(weighted) + eta * np.mean(weights) - eta)

    def _density_ratio(self, feats, tgt):
        clf = self.domain_classifier
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500)) \
            if clf is None else clone(clf)
        n_splits = int(min(self.n_splits, tgt.sum(), (~tgt).sum()))
        if n_splits < 2:
            return np.ones(len(tgt))
        p = cross_val_predict(clf, feats, tgt.astype(int), cv=n_splits,
                              method="predict_proba")[:, 1]
        p = np.clip(p, 1e-6, 1 - 1e-6)
        ratio = p / (1 - p) * (~tgt).sum() / tgt.sum()
        return np.minimum(ratio, self.clip)


def _row_losses(estimator, X, y):
    """Each row's loss: cross-entropy for a classifier, squared error for a regressor."""
    if hasattr(estimator, "predict_proba"):
        proba = estimator.predict_proba(X)
        index = {c: i for i, c in enumerate(estimator.classes_.tolist())}
        cols = np.array([index.get(v, -1) for v in y.tolist()])
        if (cols < 0).any():
            raise ValueError("The validation fold holds labels the model was not fitted on.")
        return -np.log(np.clip(proba[np.arange(len(cols)), cols], 1e-12, 1.0))
    pred = np.asarray(estimator.predict(X), dtype=np.float64).reshape(len(y), -1)
    truth = np.asarray(y.tolist(), dtype=np.float64).reshape(len(y), -1)
    return ((pred - truth) ** 2).mean(axis=1)
