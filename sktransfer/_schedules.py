"""The training recipe's moving parts: learning-rate schedules, per-stage learning rates, L2-SP
anchors.

Layer 2: PyTorch and skorch only. A schedule is a function of the step (0 .. ``total - 1``)
giving a factor of the base learning rate and, for one-cycle, the momentum; :class:`LRSchedule`
is the skorch callback that applies it to every parameter group before each training batch,
setting each group's ``lr`` directly (``base lr x factor x the group's lr_scale``).
"""

from __future__ import annotations

import math

from skorch.callbacks import Callback

__all__ = [
    "LRSchedule",
    "SCHEDULES",
    "lr_factor",
    "momentum_at",
    "stage_param_groups",
]

SCHEDULES = ("constant", "cosine", "onecycle")

#: cosine: share of the steps spent warming up linearly from 0 to the base rate.
WARMUP = 0.1
#: one-cycle (fastai's fit_one_cycle): share of the steps rising from lr/DIV to lr, and the
#: final rate lr/DIV_FINAL; momentum falls from its value to MOMENTUM_LOW times it and back.
PCT_START, DIV, DIV_FINAL, MOMENTUM_LOW = 0.25, 25.0, 1e5, 0.85 / 0.95


def _cos(start, end, pos):
    """Cosine interpolation from ``start`` (pos 0) to ``end`` (pos 1), as fastai's SchedCos."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def lr_factor(schedule, step, total):
    """Factor of the base learning rate at ``step`` of ``total`` training steps.

    Examples
    --------
    >>> from sktransfer._schedules import lr_factor
    >>> [round(lr_factor("cosine", s, 20), 3) for s in (0, 1, 2, 11, 19)]
    [0.5, 1.0, 0.993, 0.459, 0.007]
    >>> [round(lr_factor("onecycle", s, 100), 3) for s in (0, 25, 99)]
    [0.04, 1.0, 0.0]
    """
    if schedule == "constant" or total <= 1:
        return 1.0
    if schedule == "cosine":
        warm = max(1, round(WARMUP * total))
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm + 1) / (total - warm + 1)))
    if schedule == "onecycle":
        pos = step / (total - 1)
        if pos < PCT_START:
            return _cos(1 / DIV, 1.0, pos / PCT_START)
        return _cos(1.0, 1 / DIV_FINAL, (pos - PCT_START) / (1 - PCT_START))
    raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}.")


def momentum_at(schedule, momentum, step, total):
    """The momentum at ``step``: constant, except in one-cycle where it falls as the learning
    rate rises (fastai's moms=(0.95, 0.85, 0.95) for ``momentum=0.95``).

    Examples
    --------
    >>> from sktransfer._schedules import momentum_at
    >>> [round(momentum_at("onecycle", 0.95, s, 101), 3) for s in (0, 25, 100)]
    [0.95, 0.85, 0.95]
    """
    if schedule != "onecycle" or total <= 1:
        return momentum
    low = momentum * MOMENTUM_LOW
    pos = step / (total - 1)
    if pos < PCT_START:
        return _cos(momentum, low, pos / PCT_START)
    return _cos(low, momentum, (pos - PCT_START) / (1 - PCT_START))


class LRSchedule(Callback):
    """Sets every parameter group's learning rate (and momentum) before each training batch.

    The schedule spans ``schedule_epochs`` epochs of the training set (``None``: the fit's
    ``max_epochs``) and the fit begins at its epoch ``start_epoch``, so that a fit resumed
    after ``start_epoch`` epochs continues the schedule of an uninterrupted one; early stopping
    may end it sooner. Each fit (``warm_start`` included) starts it anew.
    """

    def __init__(self, schedule, lr, momentum, *, drop_last=False, schedule_epochs=None,
                 start_epoch=0):
        self.schedule = schedule
        self.lr = lr
        self.momentum = momentum
        self.drop_last = drop_last
        self.schedule_epochs = schedule_epochs
        self.start_epoch = start_epoch

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        n, bs = len(X), net.batch_size
        per_epoch = n // bs if self.drop_last else math.ceil(n / bs)
        epochs = net.max_epochs if self.schedule_epochs is None else self.schedule_epochs
        self.total_ = max(1, per_epoch * epochs)
        self.step_ = per_epoch * self.start_epoch
        self.lrs_ = []

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if not training:
            return
        factor = lr_factor(self.schedule, self.step_, self.total_)
        momentum = momentum_at(self.schedule, self.momentum, self.step_, self.total_)
        for name in net._optimizers:
            for group in getattr(net, name + "_").param_groups:
                group["lr"] = self.lr * factor * group.get("lr_scale", 1.0)
                if "betas" in group:
                    group["betas"] = (momentum, group["betas"][1])
                elif "momentum" in group:
                    group["momentum"] = momentum
        self.lrs_.append(self.lr * factor)
        self.step_ += 1


def stage_param_groups(module, lr, *, layer_decay=1.0, head_weight_decay=None):
    """skorch ``optimizer__param_groups`` for a :class:`~sktransfer._network.TransferNet`.

    The head trains at ``lr``; the trainable stages, counting back from the head, at
    ``lr x layer_decay ** i`` (``i`` = 1 for the last stage), as timm's layer decay over
    sktransfer's stages. ``head_weight_decay`` (L2-SP) gives the head its weight decay and
    the stages none.

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer._schedules import stage_param_groups
    >>> net = nn.Module()
    >>> net.stages = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> net.head = nn.Linear(2, 1)
    >>> [(p, g["lr"]) for p, g in stage_param_groups(net, 0.1, layer_decay=0.5)]
    [('stages.0.*', 0.025), ('stages.1.*', 0.05), ('head.*', 0.1)]
    """
    names = list(module.stages._modules)
    trainable = [n for n in names
                 if any(p.requires_grad for p in module.stages._modules[n].parameters())]
    groups = []
    for depth, name in enumerate(reversed(trainable), start=1):
        scale = float(layer_decay) ** depth
        group = {"lr": lr * scale, "lr_scale": scale}
        if head_weight_decay is not None:
            group["weight_decay"] = 0.0
        groups.append((f"stages.{name}.*", group))
    head = {"lr": lr, "lr_scale": 1.0}
    if head_weight_decay is not None:
        head["weight_decay"] = float(head_weight_decay)
    return groups[::-1] + [("head.*", head)]


def trained_backbone_anchors(module):
    """``(parameter, detached copy)`` for every trainable parameter of the stages: the
    starting weights that L2-SP (Li et al. 2018) pulls the fine-tuned ones towards."""
    return [(p, p.detach().clone()) for p in module.stages.parameters() if p.requires_grad]
