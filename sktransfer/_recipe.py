"""The linear-probe head start of fine-tuning (LP-FT, Kumar et al., ICLR 2022). Layer 3.

Before fine-tuning, the new head is set to a linear model fitted on the frozen pretrained
features of the training images: multinomial logistic regression for a classifier, ridge
regression for a regressor. Fine-tuning then starts from a head that already fits, so its first
large gradients do not reach the pretrained stages and distort their features. The features
come from the activation cache (:mod:`sktransfer.caching`): computed once per image and process,
and shared with :class:`~sktransfer.TransferFeatures` on the same images.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge

__all__ = ["PROBE_ABSENT_PROBA", "PROBE_C", "PROBE_ALPHA", "fit_probe_head"]

#: Inverse L2 strength of the probe's logistic regression, and the ridge penalty (per sample).
PROBE_C = 1.0
PROBE_ALPHA = 0.01
#: Largest probability the probe head gives, on a training image, to a class that has no
#: training image (one held out for early stopping, say).
PROBE_ABSENT_PROBA = 1e-3


def fit_probe_head(head, features, y, *, classifier, class_weight=None):
    """Set ``head`` (an ``nn.Linear``) to a linear model fitted on ``features`` and ``y``.

    Parameters
    ----------
    head : torch.nn.Linear
        The new head, ``n_outputs`` outputs.
    features : ndarray of shape (n_samples, n_features)
        Backbone features of the training images.
    y : ndarray
        Encoded targets: class indices ``0..n_outputs-1`` (classifier), or standardised
        targets of shape ``(n_samples, n_outputs)`` (regressor).
    classifier : bool
        Logistic regression (True) or ridge regression (False).
    class_weight : ndarray of shape (n_outputs,), default=None
        Per-class weights, as in the fit.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sktransfer._recipe import fit_probe_head
    >>> rng = np.random.RandomState(0)
    >>> F = rng.randn(40, 3); y = (F[:, 0] > 0).astype(int)
    >>> head = torch.nn.Linear(3, 2)
    >>> fit_probe_head(head, F, y, classifier=True)
    >>> float((head(torch.tensor(F, dtype=torch.float32)).argmax(1).numpy() == y).mean())
    1.0
    """
    features = np.asarray(features, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if classifier:
            weights = None if class_weight is None else dict(enumerate(class_weight))
            model = LogisticRegression(C=PROBE_C, max_iter=500, class_weight=weights)
            model.fit(features, y)
            coef, intercept = model.coef_, model.intercept_
            if coef.shape[0] == 1:  # binary: one logit difference, split over two outputs
                coef = np.vstack([-coef / 2, coef / 2])
                intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
            coef, intercept = _with_absent_classes(coef, intercept, model.classes_,
                                                   head.out_features, features)
        else:
            model = Ridge(alpha=PROBE_ALPHA * len(features)).fit(features, y)
            coef = np.atleast_2d(model.coef_)
            intercept = np.atleast_1d(model.intercept_)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(coef, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(intercept, dtype=head.bias.dtype))


def _with_absent_classes(coef, intercept, classes, n_outputs, features):
    """The probe's coefficients and intercepts over all ``n_outputs`` classes.

    A class without training rows gets no weights and the intercept that gives it at most
    :data:`PROBE_ABSENT_PROBA` on every training row: unlikely, yet a finite logit, so the
    smoothed loss (which spreads ``label_smoothing / n_classes`` of every target on it) starts at
    a normal size instead of ``label_smoothing / n_classes`` times the logit gap.
    """
    full_coef = np.zeros((n_outputs, features.shape[1]))
    full_intercept = np.zeros(n_outputs)
    full_coef[classes] = coef
    full_intercept[classes] = intercept
    absent = np.setdiff1d(np.arange(n_outputs), classes)
    if len(absent):
        logits = features @ coef.T + intercept
        top = logits.max(axis=1)
        log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        full_intercept[absent] = log_norm.min() + np.log(PROBE_ABSENT_PROBA)
    return full_coef, full_intercept
