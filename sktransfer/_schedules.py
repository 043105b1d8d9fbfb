"""The training recipe's moving parts: learning-rate schedules, per-stage learning rates, L2-SP
anchors.

Layer 2: PyTorch and skorch only. The optimizer's parameter groups are built from the parameter
objects of the network's stages and head (:func:`stage_param_groups`), so they stay right when
``torch.compile`` or accelerate wrap the module and rename its parameters. Schedules are
``torch.optim.lr_scheduler`` policies (``LambdaLR`` for cosine with warm-up, ``OneCycleLR`` for
one-cycle) stepped after every training batch by skorch's ``LRScheduler``
(:class:`StepSchedule`), whose length is counted in the batches each process actually runs.
"""

from __future__ import annotations

import math
import warnings

import torch
from skorch.callbacks import LRScheduler

__all__ = [
    "SCHEDULES",
    "StepSchedule",
    "lr_factor",
    "stage_param_groups",
    "steps_per_epoch",
    "unwrap_module",
]

SCHEDULES = ("constant", "cosine", "onecycle")

#: cosine: share of the steps spent warming up linearly to the base rate (the first step
#: runs at ``1 / warm-up steps`` of it).
WARMUP = 0.1
#: one-cycle (fastai's fit_one_cycle): share of the steps rising from lr/DIV to lr, and the
#: final rate lr/DIV_FINAL; momentum falls from its value to MOMENTUM_LOW times it and back.
PCT_START, DIV, DIV_FINAL, MOMENTUM_LOW = 0.25, 25.0, 1e5, 0.85 / 0.95


def lr_factor(schedule, step, total):
    """Factor of the base learning rate at ``step`` of ``total`` training steps, for
    ``"constant"`` and ``"cosine"`` (one-cycle is torch's ``OneCycleLR``).

    Examples
    --------
    >>> from sktransfer._schedules import lr_factor
    >>> [round(lr_factor("cosine", s, 20), 3) for s in (0, 1, 2, 11, 19)]
    [0.5, 1.0, 0.993, 0.459, 0.007]
    """
    if schedule == "constant" or total <= 1:
        return 1.0
    if schedule == "cosine":
        warm = max(1, round(WARMUP * total))
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm + 1) / (total - warm + 1)))
    raise ValueError(f"lr_factor covers 'constant' and 'cosine', got {schedule!r}.")


def steps_per_epoch(n_samples, batch_size, *, drop_last=False, processes=1):
    """Training batches one process runs per epoch: the loader's batches, split over
    ``processes`` by accelerate (each process gets every ``processes``-th batch, the last ones
    padded to an even count)."""
    batches = n_samples // batch_size if drop_last else math.ceil(n_samples / batch_size)
    return max(1, math.ceil(batches / max(1, int(processes))))


def _policy(schedule, optimizer, total, momentum):
    """The ``torch.optim.lr_scheduler`` policy of ``schedule`` over ``total`` steps; each
    parameter group's current ``lr`` is its peak rate."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor("cosine", min(step, total - 1), total))
    if schedule == "onecycle":
        if total < 2:  # OneCycleLR needs two steps: one step runs at the peak rate
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=PCT_START, anneal_strategy="cos", div_factor=DIV,
            final_div_factor=DIV_FINAL / DIV, cycle_momentum=True,
            base_momentum=momentum * MOMENTUM_LOW, max_momentum=momentum,
        )
    raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}.")


class StepSchedule(LRScheduler):
    """skorch's ``LRScheduler``, stepped after every training batch, over the policy of
    ``schedule``; its length is counted when training begins, in the batches each process
    runs (accelerate splits the loader over its processes).

    The schedule spans ``schedule_epochs`` epochs (``None``: ``max_epochs``) of the training
    set and this fit begins at its epoch ``start_epoch``; early stopping may end it sooner.
    Each fit (``warm_start`` included) starts it anew unless ``start_epoch`` says otherwise.
    """

    def __init__(self, schedule, momentum, *, drop_last=False, schedule_epochs=None,
                 start_epoch=0):
        super().__init__(policy=_policy_class(schedule), step_every="batch", event_name=None)
        self.schedule = schedule
        self.momentum = momentum
        self.drop_last = drop_last
        self.schedule_epochs = schedule_epochs
        self.start_epoch = start_epoch

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        accelerator = getattr(net, "accelerator", None)
        processes = getattr(accelerator, "num_processes", 1) if accelerator else 1
        per_epoch = steps_per_epoch(len(X), net.batch_size, drop_last=self.drop_last,
                                    processes=processes)
        epochs = net.max_epochs if self.schedule_epochs is None else self.schedule_epochs
        self.total_steps_ = max(1, per_epoch * int(epochs))
        self.lr_scheduler_ = _policy(self.schedule, net.optimizer_, self.total_steps_,
                                     self.momentum)
        self.batch_idx_ = 0
        with warnings.catch_warnings():  # stepping before the optimizer, on purpose
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(min(per_epoch * int(self.start_epoch), self.total_steps_ - 1)):
                self.lr_scheduler_.step()
                self.batch_idx_ += 1

    def on_batch_end(self, net, training, **kwargs):
        # past the end (early stopping never gets there; a longer fit would) the last rate holds
        if training and self.batch_idx_ >= self.total_steps_ - 1:
            return
        super().on_batch_end(net, training, **kwargs)


def _policy_class(schedule):
    return (torch.optim.lr_scheduler.OneCycleLR if schedule == "onecycle"
            else torch.optim.lr_scheduler.LambdaLR)


def unwrap_module(module):
    """The network inside ``torch.compile``'s and accelerate's (DDP) wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None) or getattr(module, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


def stage_param_groups(module, lr, *, layer_decay=1.0, head_weight_decay=None):
    """The optimizer's parameter groups for a :class:`~sktransfer._network.TransferNet`, built
    from its parameter objects (names change under ``torch.compile`` and accelerate).

    The head trains at ``lr``; the trainable stages, counting back from the head, at
    ``lr x layer_decay ** i`` (``i`` = 1 for the last stage), as timm's layer decay over
    sktransfer's stages. ``head_weight_decay`` (L2-SP) gives the head its weight decay and
    the stages none. Every trainable parameter is in exactly one group, named after its stage.

    Raises
    ------
    RuntimeError
        If a trainable parameter is outside the stages and the head, or in two groups.

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer._schedules import stage_param_groups
    >>> net = nn.Module()
    >>> net.stages = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> net.head = nn.Linear(2, 1)
    >>> [(g["name"], g["lr"], len(g["params"])) for g in stage_param_groups(net, 0.1,
    ...                                                                      layer_decay=0.5)]
    [('stages.0', 0.025, 2), ('stages.1', 0.05, 2), ('head', 0.1, 2)]
    """
    module = unwrap_module(module)
    trainable = [(name, [p for p in stage.parameters() if p.requires_grad])
                 for name, stage in module.stages.named_children()]
    trainable = [(name, params) for name, params in trainable if params]
    groups = []
    for depth, (name, params) in enumerate(reversed(trainable), start=1):
        scale = float(layer_decay) ** depth
        group = {"name": f"stages.{name}", "params": params, "lr": lr * scale,
                 "lr_scale": scale}
        if head_weight_decay is not None:
            group["weight_decay"] = 0.0
        groups.append(group)
    head = {"name": "head", "params": [p for p in module.head.parameters() if p.requires_grad],
            "lr": lr, "lr_scale": 1.0}
    if head_weight_decay is not None:
        head["weight_decay"] = float(head_weight_decay)
    groups = [g for g in groups[::-1] + [head] if g["params"]]
    _check_partition(module, groups)
    return groups


def _check_partition(module, groups):
    grouped = [id(p) for g in groups for p in g["params"]]
    names = {id(p): n for n, p in module.named_parameters()}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    twice = {names.get(i, "?") for i in grouped if grouped.count(i) > 1}
    missing = sorted(names[i] for i in trainable - set(grouped))
    if twice or missing:
        raise RuntimeError(
            f"The optimizer's parameter groups must hold every trainable parameter exactly "
            f"once: {sorted(twice)} are in two groups, {missing[:5]} in none. The network "
            "must keep its trainable parameters in its stages and head."
        )


def trained_backbone_anchors(module):
    """``(parameter, detached copy)`` for every trainable parameter of the stages: the
    starting weights that L2-SP (Li et al. 2018) pulls the fine-tuned ones towards."""
    stages = unwrap_module(module).stages
    return [(p, p.detach().clone()) for p in stages.parameters() if p.requires_grad]
