"""Unsupervised domain adaptation in the training loop: the losses and the skorch net.

Layer 2 of the package. The source rows train the head as in any fit; each training batch of
source rows is joined by as many unlabeled target rows (cycling through them in a seeded
order), and an adaptation loss on the backbone's pooled features (or on the logits, for MCC)
pulls the two domains together. The trained stages see each domain's rows on their own, so
that BatchNorm normalises each domain with its own batch statistics; at the end of the fit
their running statistics are recomputed on the target rows (AdaBN, Li et al. 2016), since the
model predicts the target domain.

* ``"adabn"``: that recalibration alone; the target rows join no training batch.
* ``"coral"``: Deep CORAL (Sun & Saenko 2016), the distance between the feature covariances.
* ``"mcc"``: Minimum Class Confusion (Jin et al. 2020), on the target rows' predictions.
* ``"dann"``: domain-adversarial training (Ganin et al. 2016): a discriminator tells the
  domains apart through a gradient reversal layer whose coefficient ramps up from 0 as
  ``2 / (1 + exp(-10 p)) - 1`` over the fit's progress ``p``.

Target rows carry the marker -1 (integer targets) or NaN (float targets) in the batch's y.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skorch.dataset import unpack_data
from skorch.utils import to_tensor
from torch import nn

from ._freezing import _BN
from ._training import _TransferSkorchNet

__all__ = [
    "ADAPTATION_METHODS",
    "AdaptationSkorchNet",
    "DomainDiscriminator",
    "adaptation_net_options",
    "coral_loss",
    "dann_ramp",
    "labeled_rows",
    "mark_unlabeled",
    "mcc_loss",
]

#: what each method needs of the targets: class predictions (MCC) or none
ADAPTATION_METHODS = {"adabn": "any", "coral": "any", "mcc": "classification", "dann": "any"}


def coral_loss(source, target):
    """Deep CORAL: ``||C_s - C_t||_F^2 / (4 d^2)`` between the feature covariances.

    Parameters
    ----------
    source, target : torch.Tensor of shape (n, d)
        Features of source and target rows (each at least 2 rows).

    Returns
    -------
    loss : torch.Tensor
        A scalar, 0 for identical covariances.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    >>> float(coral_loss(x, x + 5.0)) < 1e-12  # a shift leaves the covariance alone
    True
    """
    source, target = source.float(), target.float()
    d = source.shape[1]
    cov_s = torch.cov(source.T).reshape(d, d)
    cov_t = torch.cov(target.T).reshape(d, d)
    return ((cov_s - cov_t) ** 2).sum() / (4 * d * d)


def mcc_loss(logits, temperature=2.5):
    """Minimum Class Confusion of predictions ``logits`` (Jin et al. 2020).

    The class-correlation matrix of the temperature-scaled probabilities, each row weighted by
    its certainty, normalised per class; the loss is the mean off-diagonal mass (0 when each
    row is sure of one class and the classes never co-occur).

    Parameters
    ----------
    logits : torch.Tensor of shape (n, n_classes)
        The network's outputs for target rows.
    temperature : float, default=2.5
        Probability rescaling (the paper's value).

    Returns
    -------
    loss : torch.Tensor
        A scalar in [0, 1].

    Examples
    --------
    >>> import torch
    >>> float(mcc_loss(torch.eye(3) * 100.0))  # confident and distinct: no confusion
    0.0
    """
    n, k = logits.shape
    proba = torch.softmax(logits.float() / temperature, dim=1)
    entropy = -(proba * torch.log(proba + 1e-5)).sum(1)
    w = 1 + torch.exp(-entropy)
    w = n * w / w.sum()
    confusion = (proba * w[:, None]).T @ proba
    confusion = confusion / confusion.sum(1, keepdim=True)
    return (confusion.sum() - torch.trace(confusion)) / k


def dann_ramp(progress):
    """DANN's coefficient schedule ``2 / (1 + exp(-10 p)) - 1`` for progress ``p`` in [0, 1].

    Examples
    --------
    >>> dann_ramp(0.0), round(dann_ramp(1.0), 4)
    (0.0, 0.9999)
    """
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


class DomainDiscriminator(nn.Module):
    """DANN's domain classifier: two hidden layers of ``hidden`` units with ReLU and dropout,
    one output logit (target vs source) trained with binary cross-entropy: a single logit
    with a sigmoid, never a softmax over one output (which is constant and learns nothing)."""

    def __init__(self, n_features, hidden=256):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(hidden, 1),
        )

    def forward(self, features, coeff=1.0):
        return self.layers(_GradientReversal.apply(features, coeff)).squeeze(1)


class _Joined:
    """The training iterator of an adapted fit (skorch iterates it once per epoch)."""

    def __init__(self, loader, net):
        self.loader, self.net = loader, net

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield self.net.join_target_rows(batch)


def unlabeled_rows(y):
    """The rows of a batch's targets that carry the unlabeled marker (-1 or NaN)."""
    if y.is_floating_point():
        return torch.isnan(y.reshape(len(y), -1)).any(1)
    return y < 0


class AdaptationSkorchNet(_TransferSkorchNet):
    """The training net of a fit with unlabeled target rows.

    Parameters
    ----------
    target : torch.utils.data.Dataset
        The target rows (``__getitems__`` gives ``(X, y)`` batches; y is ignored).
    method : {"adabn", "coral", "mcc", "dann"}
        The adaptation loss (``"adabn"``: none, the target rows join no batch and only set
        the BatchNorm statistics at the end).
    weight : float
        Its strength: the loss is ``supervised + weight x adaptation`` (for DANN, ``weight``
        scales the reversed gradient, times the ramp).
    total_steps : int
        Optimizer steps of the whole fit (the DANN ramp's progress).
    marker : float
        The y value of target rows in a joined batch (-1, or NaN for regression).
    """

    def __init__(self, *args, target=None, method="coral", weight=1.0, total_steps=1,
                 marker=-1, **kwargs):
        super().__init__(*args, **kwargs)
        self.target = target
        self.method = method
        self.weight = weight
        self.total_steps = total_steps
        self.marker = marker

    def initialize(self):
        super().initialize()
        self.steps_ = 0
        self._target_order, self._target_pos = None, 0
        self._target_rng = torch.Generator().manual_seed(
            int(torch.randint(0, 2**31 - 1, (1,)).item()))
        return self

    def initialize_module(self):
        super().initialize_module()
        if self.method == "dann":
            n = self.module_.head.in_features
            self.discriminator_ = DomainDiscriminator(n).to(self.device or "cpu")
        else:
            self.discriminator_ = None
        return self

    def get_params_for_optimizer(self, prefix, named_parameters):
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        disc = getattr(self, "discriminator_", None)
        if prefix == "optimizer" and disc is not None:
            groups = list(args[0])
            groups.append({"params": list(disc.parameters()), "name": "discriminator",
                           "lr": kwargs.get("lr", self.lr)})
            args = (groups,)
        return args, kwargs

    def _set_training(self, training=True):
        super()._set_training(training)
        if getattr(self, "discriminator_", None) is not None:
            self.discriminator_.train(training)

    # -- batches: each source batch joined by as many target rows -----------------------------

    def get_iterator(self, dataset, training=False):
        iterator = super().get_iterator(dataset, training=training)
        if not training or self.target is None or self.method == "adabn":
            return iterator
        return _Joined(iterator, self)

    def join_target_rows(self, batch):
        """A source batch ``(X, y)`` and as many target rows, their y set to the marker."""
        Xs, ys = unpack_data(batch)
        Xt = self.target.__getitems__(self._next_target_rows(len(Xs)))[0]
        marker = torch.full((len(Xt), *ys.shape[1:]), self.marker, dtype=ys.dtype)
        return torch.cat([Xs, Xt.to(Xs.dtype)]), torch.cat([ys, marker])

    def _next_target_rows(self, n):
        """The next ``n`` target rows of a seeded order, reshuffled after each pass."""
        rows = []
        while len(rows) < n:
            if self._target_order is None or self._target_pos >= len(self._target_order):
                self._target_order = torch.randperm(len(self.target),
                                                    generator=self._target_rng).numpy()
                self._target_pos = 0
            take = self._target_order[self._target_pos:self._target_pos + n - len(rows)]
            self._target_pos += len(take)
            rows.extend(take.tolist())
        return np.asarray(rows)

    # -- the step -----------------------------------------------------------------------------

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        Xi, yi = to_tensor(Xi, self.device), to_tensor(yi, self.device)
        tgt = unlabeled_rows(yi)
        module = self.module_
        with self._autocast():
            features = self._domain_features(Xi, tgt)
            y_pred = module.head(features)
            loss = self.get_loss(y_pred[~tgt], yi[~tgt], X=Xi, training=True)
            adapt = self._adaptation_loss(features, y_pred, tgt)
            loss = loss + adapt
        self._backward(loss)
        self.steps_ += 1
        self.history.record_batch("adapt_loss", float(adapt.detach()))
        return {"loss": loss, "y_pred": y_pred[~tgt]}

    def _domain_features(self, X, tgt):
        """The backbone's features of a joined batch, each domain through the trained stages
        on its own, so that BatchNorm normalises each with its own batch statistics (as the
        source rows are normalised in a fit without target rows)."""
        module = self.module_
        n_t = int(tgt.sum())
        if n_t < 2 or len(tgt) - n_t < 2:
            return module.features(X, module.start)
        order = torch.cat([torch.nonzero(~tgt)[:, 0], torch.nonzero(tgt)[:, 0]])
        both = torch.cat([module.features(X[~tgt], module.start),
                          module.features(X[tgt], module.start)])
        return both[torch.argsort(order)]

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        super().partial_fit(X, y, classes=classes, **fit_params)
        # the stage the target rows start from (after the cached frozen stages, if cached)
        self.target_start_ = self.module_.start
        self.recalibrate_batchnorm()
        return self

    def recalibrate_batchnorm(self, batch_size=64):
        """AdaBN (Li et al. 2016): the running statistics of the BatchNorm layers of the
        trained stages, recomputed on the target rows, since the model predicts the target
        domain. The frozen stages keep their pretrained statistics."""
        module, n = self.module_, len(self.target) if self.target is not None else 0
        start = getattr(self, "target_start_", module.start)
        layers = [m for stage in list(module.stages)[module.n_frozen:] for m in stage.modules()
                  if isinstance(m, _BN)]
        if not layers or n < 2:
            return
        momenta = [m.momentum for m in layers]
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the target rows
        was_training = module.training
        module.train()
        # no batch of one row: BatchNorm cannot normalise it
        bounds = list(range(0, n, batch_size)) + [n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
            del bounds[-2]
        with torch.no_grad(), self._autocast():
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                Xt = self.target.__getitems__(np.arange(lo, hi))[0]
                module.features(to_tensor(Xt, self.device), start)
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        module.train(was_training)

    def _adaptation_loss(self, features, y_pred, tgt):
        # "adabn": the target rows join no batch, so there is never an adaptation loss
        if int(tgt.sum()) < 2 or int((~tgt).sum()) < 2:
            return features.sum() * 0.0
        if self.method == "coral":
            return self.weight * coral_loss(features[~tgt], features[tgt])
        if self.method == "mcc":
            return self.weight * mcc_loss(y_pred[tgt])
        coeff = self.weight * dann_ramp(self.steps_ / max(1, self.total_steps))
        logits = self.discriminator_(features.float(), coeff)
        return nn.functional.binary_cross_entropy_with_logits(logits, tgt.float())


def labeled_rows(y):
    """Indices of the rows of encoded targets that do not carry the unlabeled marker."""
    if y.dtype.kind == "f":
        return np.flatnonzero(~np.isnan(y.reshape(len(y), -1)).any(1))
    return np.flatnonzero(y >= 0)


def mark_unlabeled(y_enc, target):
    """Encoded targets of the labeled rows spread over all rows, the ``target`` rows set to
    the marker: -1 (class indices) or NaN (float targets)."""
    shape = (len(target), *y_enc.shape[1:])
    full = np.full(shape, np.nan if y_enc.dtype.kind == "f" else -1, dtype=y_enc.dtype)
    full[~target] = y_enc
    return full


def adaptation_net_options(target, *, method, weight, classifier, n_train, config, drop_last):
    """The keyword arguments of :func:`~sktransfer._training.make_skorch_net` for a fit that
    adapts to the ``target`` dataset with ``method`` at strength ``weight`` (``classifier``:
    the targets are class indices, marked -1 when unlabeled, else floats marked NaN)."""
    steps = n_train // config.batch_size if drop_last else math.ceil(n_train / config.batch_size)
    return {"net_class": AdaptationSkorchNet, "net_kwargs": {
        "target": target, "method": method, "weight": float(weight),
        "total_steps": max(1, steps) * config.max_epochs,
        "marker": -1 if classifier else float("nan")}}
