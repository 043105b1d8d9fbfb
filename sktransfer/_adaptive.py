"""The defaults that adapt to the data at hand: what ``freeze_depth="auto"``,
``head_init="auto"`` and ``max_epochs="auto"`` become in ``fit``. Layer 3.

The rule, measured across data sizes in ``benchmarks/bench_data_size.py``:

- Below :data:`PROBE_BELOW` labels per class, the model is the linear probe on the frozen
  pretrained features (every stage frozen, the head fitted by logistic or ridge regression on
  the cached features, no epoch): a few optimizer steps on a handful of images move the
  backbone away from features that are often already right, and a held-out fifth of fewer
  than 4 images per class cannot tell where fine-tuning would help.
- From there on, the second half of the stages (:data:`FROZEN_SHARE`) is fine-tuned, starting
  from the probe's head (LP-FT, Kumar et al. 2022), for a budget counted in optimizer steps
  (:data:`STEP_BUDGET`), not epochs: a schedule of a dozen steps on 50 images is no
  fine-tuning, and 12 epochs of 10,000 images is more than the stages need. The epochs are kept
  between :data:`MIN_EPOCHS` and :data:`MAX_EPOCHS`. :data:`SELECT_FRACTION` of the rows are
  held out, and the fine-tuned network is kept only if it scores better there, by
  :data:`MIN_GAIN_ROWS` rows at least, than the probe fitted on the other rows (as P>M>F
  fine-tunes only when that beats no fine-tuning); otherwise the model is the probe, refitted on
  every row. Fine-tuning helps most where the images are far from the pretraining photos
  (grayscale products, digits), and hurts where the frozen features already separate the
  classes.

For a regressor, "labels per class" is taken as a tenth of the rows
(:data:`ROWS_PER_REGRESSION_CLASS`). Only parameters left at ``"auto"`` follow the rule; a
value the user sets is always obeyed. What was chosen is in the fitted attributes
``freeze_depth_``, ``head_init_`` and ``max_epochs_``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

__all__ = ["Resolved", "fine_tuned_score", "fine_tuning_frozen", "fine_tuning_wins",
           "labels_per_class", "probe_score", "resolve_auto", "validation_split"]

#: Labels per class under which the linear probe is the model.
PROBE_BELOW = 20
#: Optimizer steps of fine-tuning, and the bounds on the epochs they make.
STEP_BUDGET = 160
MIN_EPOCHS, MAX_EPOCHS = 3, 12
#: A regressor's rows that count as one class's labels.
ROWS_PER_REGRESSION_CLASS = 10
#: Share of the rows held out to compare the fine-tuned model with the probe.
SELECT_FRACTION = 0.2
#: Held-out rows by which fine-tuning must beat the probe (a classifier; a regressor: the
#: same share of the probe's squared error): one row's difference on a small held-out set is
#: noise (with 20 faces held out, fine-tuning that won by one image lost on the test set).
MIN_GAIN_ROWS = 2
#: Share of the stages, from the input, that fine-tuning keeps frozen.
FROZEN_SHARE = 0.5


def fine_tuning_frozen(n_stages):
    """Stages that fine-tuning chosen by the rule keeps frozen: the first half, rounded down
    (EfficientNet-Lite0: 4 of 9).

    Examples
    --------
    >>> from sktransfer._adaptive import fine_tuning_frozen
    >>> fine_tuning_frozen(9), fine_tuning_frozen(3)
    (4, 1)
    """
    return int(n_stages * FROZEN_SHARE)


@dataclass(frozen=True)
class Resolved:
    """The values a fit runs with, and why (for ``verbose``)."""

    freeze_depth: object
    head_init: str
    max_epochs: int
    reason: str
    select: bool = False  # compare the fine-tuned model with the probe on held-out rows


def labels_per_class(y, *, classifier):
    """Median number of training rows per class (a regressor: a tenth of the rows).

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer._adaptive import labels_per_class
    >>> labels_per_class(np.array([0, 0, 1, 1, 1, 2]), classifier=True)
    2.0
    >>> labels_per_class(np.zeros((50, 1)), classifier=False)
    5.0
    """
    if classifier:
        counts = np.bincount(np.asarray(y, dtype=np.int64))
        return float(np.median(counts[counts > 0]))
    return len(y) / ROWS_PER_REGRESSION_CLASS


def resolve_auto(*, freeze_depth, head_init, max_epochs, per_class, n_train, batch_size):
    """Resolve the ``"auto"`` values among ``freeze_depth``, ``head_init`` and
    ``max_epochs``; the others are returned as given.

    Examples
    --------
    >>> from sktransfer._adaptive import resolve_auto
    >>> r = resolve_auto(freeze_depth="auto", head_init="auto", max_epochs="auto",
    ...                  per_class=5, n_train=50, batch_size=32)
    >>> r.freeze_depth, r.head_init, r.max_epochs
    ('all', 'linear_probe', 0)
    >>> r = resolve_auto(freeze_depth="auto", head_init="auto", max_epochs="auto",
    ...                  per_class=50, n_train=500, batch_size=32)
    >>> r.freeze_depth, r.head_init, r.max_epochs, r.select
    ('auto', 'linear_probe', 10, True)
    >>> resolve_auto(freeze_depth=-1, head_init="random", max_epochs=4, per_class=5,
    ...              n_train=50, batch_size=32).freeze_depth
    -1
    """
    probe = per_class < PROBE_BELOW
    reasons = []
    select = freeze_depth == "auto" and not probe
    if freeze_depth == "auto":
        # "auto" left for the network: the first half of its stages frozen
        freeze_depth = "all" if probe else "auto"
        reasons.append(
            f"freeze_depth='auto' -> "
            f"{repr('all') if probe else 'the first half of the stages frozen'} "
            f"({per_class:g} labels per class; the linear probe below {PROBE_BELOW}, else "
            "fine-tuning if it beats the probe on held-out rows)")
    if head_init == "auto":
        head_init = "linear_probe"
        reasons.append("head_init='auto' -> 'linear_probe'")
    if max_epochs == "auto":
        if freeze_depth == "all" and head_init == "linear_probe":
            max_epochs = 0  # the probe is the model: no epoch runs
        else:
            steps = max(1, math.ceil(n_train / batch_size))
            max_epochs = int(np.clip(math.ceil(STEP_BUDGET / steps), MIN_EPOCHS, MAX_EPOCHS))
        reasons.append(f"max_epochs='auto' -> {max_epochs} ({n_train} training rows, "
                       f"batch {batch_size}, about {STEP_BUDGET} steps)")
    select = select and head_init == "linear_probe"
    return Resolved(freeze_depth, head_init, int(max_epochs), "; ".join(reasons), select)


def probe_score(head, features, y, *, classifier):
    """Held-out score of the linear probe that ``head`` holds: accuracy (classifier) or minus
    the mean squared error of the scaled targets (regressor), as :func:`fine_tuned_score`."""
    with torch.no_grad():
        out = head(torch.as_tensor(features, dtype=head.weight.dtype)).numpy()
    if classifier:
        return float(np.mean(out.argmax(1) == y))
    return -float(np.mean((out - np.asarray(y).reshape(out.shape)) ** 2))


def fine_tuning_wins(scores, n_valid, *, classifier):
    """Whether the fine-tuned network beat the probe on ``n_valid`` held-out rows by more
    than noise: by :data:`MIN_GAIN_ROWS` rows of accuracy (a regressor: that share of the
    probe's mean squared error).

    Examples
    --------
    >>> from sktransfer._adaptive import fine_tuning_wins
    >>> fine_tuning_wins({"linear_probe": 0.95, "fine_tuned": 1.0}, 20, classifier=True)
    False
    >>> fine_tuning_wins({"linear_probe": 0.77, "fine_tuned": 0.83}, 100, classifier=True)
    True
    """
    gain = scores["fine_tuned"] - scores["linear_probe"]
    if classifier:
        return gain >= MIN_GAIN_ROWS / n_valid - 1e-9
    return gain > MIN_GAIN_ROWS / n_valid * abs(scores["linear_probe"])


def fine_tuned_score(history, *, classifier, early_stopping):
    """Held-out score of the fine-tuned model: of the epoch early stopping restored (the
    lowest validation loss), else of the last epoch."""
    rows = [row for row in history if "valid_loss" in row]
    if not rows:
        return -np.inf
    row = min(rows, key=lambda r: r["valid_loss"]) if early_stopping else rows[-1]
    return float(row["valid_acc"]) if classifier else -float(row["valid_loss"])


def validation_split(y, fraction, seed, *, stratified):
    """Sorted training and validation indices for early stopping (stratified by class for a
    classifier where every class has 2 samples and the validation set room for each)."""
    idx = np.arange(len(y))
    stratify = None
    if stratified:
        counts = np.bincount(y)
        n_valid = int(np.ceil(fraction * len(y)))
        if counts[counts > 0].min() >= 2 and n_valid >= len(counts[counts > 0]):
            stratify = y
        else:
            warnings.warn(
                "early_stopping: a class has fewer than 2 samples (or the validation set is "
                "smaller than the number of classes), so the validation split is not "
                "stratified.",
                UserWarning,
                stacklevel=5,
            )
    try:
        tr, va = train_test_split(
            idx, test_size=fraction, random_state=seed, stratify=stratify
        )
    except ValueError as exc:
        raise ValueError(
            f"early_stopping needs a validation split of {fraction} of "
            f"{len(y)} samples: {exc} Use more data or early_stopping=False."
        ) from exc
    if len(tr) == 0 or len(va) == 0:
        raise ValueError(
            f"early_stopping: validation_fraction={fraction} of {len(y)} "
            "samples leaves an empty training or validation set."
        )
    return np.sort(tr), np.sort(va)
