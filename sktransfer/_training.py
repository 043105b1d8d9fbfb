"""Training through skorch: the NeuralNet subclass, its callbacks and the precision helpers.

Layer 2 of the package: it knows PyTorch, skorch and the networks of :mod:`sktransfer._network`,
never scikit-learn estimators. The estimators (:mod:`sktransfer._base`) describe a fit with a
:class:`TrainingConfig` and hand it, with the network and the data, to :func:`make_skorch_net`
and :func:`run_training`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, ProgressBar
from skorch.dataset import unpack_data
from skorch.hf import AccelerateMixin
from torch import nn
from torch.nn.utils import get_total_norm

from ._data import collate_batch
from ._schedules import StepSchedule, stage_param_groups, trained_backbone_anchors

__all__ = [
    "TrainingConfig",
    "TrainingInterrupted",
    "amp_context",
    "check_precision",
    "history_rows",
    "inference_precision",
    "make_accelerator",
    "make_skorch_net",
    "precision_key",
    "release_training_state",
    "run_training",
]


# ---------------------------------------------------------------------------------------------
# Precision and accelerate
# ---------------------------------------------------------------------------------------------

_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def check_precision(precision, device):
    """Refuse a ``precision`` the device cannot train or run in."""
    if precision == "float16" and torch.device(device).type != "cuda":
        raise ValueError(
            f"precision='float16' needs a CUDA device (it trains with a gradient scaler), but "
            f"the device is {device!r}. Use precision='bfloat16' on the CPU, or 'float32'."
        )


def amp_context(device, precision):
    """``torch.autocast`` to ``precision`` on ``device``; no-op for ``"float32"``."""
    if precision in (None, "float32") or device is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_AMP_DTYPES[precision])


def precision_key(key, precision):
    """Activation-cache key of a prefix run under ``precision`` autocast (float32 rows are
    stored either way, but their values differ by the rounding of the reduced precision)."""
    if key is None or precision in (None, "float32"):
        return key
    return hashlib.sha256(f"{key}-{precision}".encode()).hexdigest()[:32]


def inference_precision(precision, device):
    """The precision predictions run in: float16 autocast only on CUDA (a model trained in
    float16 and loaded on a CPU predicts in float32)."""
    precision = precision or "float32"
    if precision == "float16" and torch.device(device).type != "cuda":
        return "float32"
    return precision


def make_accelerator(spec, precision, device):
    """A Hugging Face ``Accelerator`` for ``accelerator=spec`` (``"auto"`` or a dict of its
    keyword arguments); mixed precision follows ``precision``."""
    try:
        from accelerate import Accelerator
    except ImportError as exc:
        raise ImportError(
            "accelerator=... needs Hugging Face accelerate: pip install 'sktransfer[accelerate]'."
        ) from exc
    kwargs = {} if spec == "auto" else dict(spec)
    if "mixed_precision" in kwargs:
        raise ValueError(
            "Set the precision with precision='bfloat16' or 'float16', not with "
            "accelerator={'mixed_precision': ...}."
        )
    kwargs["mixed_precision"] = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[
        precision
    ]
    if torch.device(device).type == "cpu":
        kwargs.setdefault("cpu", True)
    try:
        return Accelerator(**kwargs)
    except ValueError as exc:
        raise ValueError(
            f"Hugging Face accelerate could not be set up with {kwargs}: {exc} Its mixed "
            "precision is fixed per process, so fits with different precision= and an "
            "accelerator need separate processes."
        ) from exc

# ---------------------------------------------------------------------------------------------
# The skorch net
# ---------------------------------------------------------------------------------------------

class TrainingInterrupted(UserWarning):
    """Warned when ``fit`` is stopped by KeyboardInterrupt."""


class _TransferSkorchNet(NeuralNet):
    """skorch ``NeuralNet`` that optimises only trainable parameters, survives Ctrl-C and runs
    its forward passes under autocast to ``precision`` (float16 with a gradient scaler)."""

    def __init__(self, *args, precision="float32", l2_sp=0.0, layer_decay=1.0,
                 head_weight_decay=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.precision = precision
        self.l2_sp = l2_sp
        self.layer_decay = layer_decay
        self.head_weight_decay = head_weight_decay

    def initialize(self):
        super().initialize()
        self._mode_set = None
        self._anchors = None
        self.grad_scaler_ = None
        if self.precision == "float16":
            self.grad_scaler_ = torch.amp.GradScaler(torch.device(self.device).type)
        return self

    def _set_training(self, training=True):
        # skorch calls this before every batch. Switching each module of a large backbone (and
        # putting the frozen stages back in eval mode) costs more than a step on cached
        # activations, so it is done only when the mode changes.
        mode_set = getattr(self, "_mode_set", None)  # accelerate's initialize skips ours
        if mode_set is training and self.module_.training is training:
            return
        super()._set_training(training)
        self._mode_set = training

    def get_params_for_optimizer(self, prefix, named_parameters):
        """The optimizer's parameter groups, one per trainable stage and one for the head,
        built from the parameter objects (:func:`~sktransfer._schedules.stage_param_groups`):
        per-stage rates and L2-SP's head-only weight decay hold under ``torch.compile`` and
        accelerate, which rename the parameters."""
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        module = getattr(self.module_, "_orig_mod", self.module_)
        if prefix == "optimizer" and hasattr(module, "stages") and hasattr(module, "head"):
            args = (stage_param_groups(module, kwargs.get("lr", self.lr),
                                       layer_decay=self.layer_decay,
                                       head_weight_decay=self.head_weight_decay),)
        return args, kwargs

    def train_step_single(self, batch, **fit_params):
        # The one mixed-precision path: the forward pass under autocast, the backward pass
        # through the gradient scaler (float16) or accelerate, whichever trains the net.
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        with self._autocast():
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        self._backward(loss)
        return {"loss": loss, "y_pred": y_pred}

    def _autocast(self):
        return amp_context(self.device, self.precision)

    def _backward(self, loss):
        scaler = getattr(self, "grad_scaler_", None)
        (loss if scaler is None else scaler.scale(loss)).backward()

    def _with_l2_sp(self, step_fn):
        """``step_fn`` (which computes the gradients of a batch), then L2-SP's gradient added
        once per optimizer step: not per micro-batch under gradient accumulation."""
        if not self.l2_sp:
            return step_fn

        def step_and_pull():
            loss = step_fn()
            accelerator = getattr(self, "accelerator", None)
            if accelerator is None or accelerator.sync_gradients:
                self._add_l2_sp_gradient()
            return loss

        return step_and_pull

    def _add_l2_sp_gradient(self):
        """L2-SP: add the gradient of ``l2_sp / 2 x ||w - w0||^2`` to each trained stage's
        gradient, in place (the same update as adding the penalty to the loss, without
        building its graph every batch)."""
        if getattr(self, "_anchors", None) is None:
            # the weights this fit starts from (the pretrained ones): taken at its first step
            self._anchors = trained_backbone_anchors(self.module_)
        # gradients scaled for float16 (ours, or accelerate's) get the term scaled alike
        scaler = getattr(self, "grad_scaler_", None) or getattr(
            getattr(self, "accelerator", None), "scaler", None)
        scale = self.l2_sp * (1.0 if scaler is None else float(scaler.get_scale()))
        with torch.no_grad():
            for param, anchor in self._anchors:
                if param.grad is not None:
                    param.grad.add_(param - anchor, alpha=scale)

    def _step_optimizer(self, step_fn):
        step_fn = self._with_l2_sp(step_fn)
        scaler = getattr(self, "grad_scaler_", None)
        if scaler is None:
            return super()._step_optimizer(step_fn)
        # GradScaler takes no closure: compute the gradients, then step through the scaler
        step_fn()
        for name in self._optimizers:
            scaler.step(getattr(self, name + "_"))
        scaler.update()

    def evaluation_step(self, batch, training=False):
        with amp_context(self.device, self.precision):
            out = super().evaluation_step(batch, training=training)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    def get_all_learnable_params(self):
        for name, param in self.module_.named_parameters():
            if param.requires_grad:
                yield name, param

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        self.interrupted_ = False
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except _StopEarly:
            raise  # skorch ends training and restores the best epoch in on_train_end
        except KeyboardInterrupt:
            self.interrupted_ = True
            restore_snapshot(getattr(self, "_last_epoch_state", None))
            # drop the partial epoch from the history
            if len(self.history) and "train_loss" not in self.history[-1]:
                self.history.pop()
            warnings.warn(
                f"Training interrupted by user after {len(self.history)} complete epoch(s); "
                "the model of the last completed epoch is kept.",
                TrainingInterrupted,
                stacklevel=2,
            )
            # skorch's partial_fit swallows it and calls every callback's on_train_end
            raise


class _AcceleratedSkorchNet(AccelerateMixin, _TransferSkorchNet):
    """:class:`_TransferSkorchNet` trained through Hugging Face accelerate (multi-GPU, mixed
    precision); the model is unwrapped again after training."""

    # ours, not AccelerateMixin's (first in the MRO): the one mixed-precision path, whose
    # autocast and backward pass are accelerate's here
    train_step_single = _TransferSkorchNet.train_step_single

    def _autocast(self):
        return self.accelerator.autocast()  # mixed precision as make_accelerator set it

    def _backward(self, loss):
        self.accelerator.backward(loss)

    def _zero_grad_optimizer(self, set_to_none=None):
        # skorch zeroes before each batch's backward pass, and accelerate's optimizer does so
        # on the batch that ends an accumulation: the earlier batches' gradients would be
        # lost. They are zeroed after each optimizer step instead (_step_optimizer).
        return None

    def _step_optimizer(self, step_fn):
        AccelerateMixin._step_optimizer(self, self._with_l2_sp(step_fn))
        if self.accelerator.sync_gradients:
            for name in self._optimizers:
                getattr(self, name + "_").zero_grad()


class _StopEarly(KeyboardInterrupt):
    """Early stopping's way of ending training, told apart from a user's Ctrl-C."""


class _EarlyStopping(EarlyStopping):
    """skorch's ``EarlyStopping``, stopping with :class:`_StopEarly`."""

    def on_epoch_end(self, net, **kwargs):
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt:
            raise _StopEarly from None

    def on_train_end(self, net, **kwargs):
        super().on_train_end(net, **kwargs)
        # the best weights are now the model's: keep no second copy on the device
        self.best_model_weights_ = None


class _Guard(Callback):
    """Stops at the first non-finite loss or weight and snapshots each completed epoch.

    ``probe`` (a raw input batch) is run in eval mode after each epoch: BatchNorm running
    statistics can diverge while the training loss, computed on batch statistics, looks finite.
    Only the stages from the first one whose BatchNorm statistics change need to run: the
    probe's output of the stages before it is computed once, and with no BatchNorm statistics
    changing at all (``freeze_depth="all"``, say) there is nothing to probe.
    """

    def __init__(self, probe=None):
        self.probe = probe

    def on_train_begin(self, net, **kwargs):
        self._batch = 0
        self._watched = None
        net._last_epoch_state = None
        self._probe_input, self._probe_start = None, 0
        if self.probe is not None:
            self._prepare_probe(net.module_)

    def _prepare_probe(self, module):
        stages = list(getattr(module, "stages", []))
        if not stages:
            self._probe_input = self.probe  # not a TransferNet (accelerate's wrapper, say)
            return
        was = module.training
        module.train()  # the modes training uses: frozen stages stay in eval
        try:
            updating = [
                i for i, stage in enumerate(stages)
                if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                       and m.track_running_stats for m in stage.modules())
            ]
            head_updating = any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                for m in module.head.modules()
            )
        finally:
            module.train(was)
        if not updating and not head_updating:
            return  # eval mode then computes what training computes: checked per batch
        start = updating[0] if updating else len(stages)
        self._probe_start = start
        if start == 0:
            self._probe_input = self.probe
            return
        device = next(module.parameters()).device
        module.eval()
        try:
            with torch.no_grad():
                self._probe_input = module.prefix(self.probe.to(device), start)
        finally:
            module.train(was)

    def on_epoch_begin(self, net, **kwargs):
        self._batch = 0

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if not training:
            return
        self._batch += 1
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not np.isfinite(value):
            raise FloatingPointError(
                f"Training loss became {value} at epoch {len(net.history)}, batch "
                f"{self._batch}; stopped before the weights were corrupted further. Lower lr "
                f"(now {net.lr}), or check X and y for extreme values."
            )
        if self._watched is None:
            # the same tensors, updated in place, for the whole fit: found once
            self._watched = _trained_tensors(net.module_)
        if not _all_finite(self._watched):
            raise FloatingPointError(
                f"The weights became NaN or infinite after the optimizer step at epoch "
                f"{len(net.history)}, batch {self._batch}; training stopped. Lower lr (now "
                f"{net.lr}), or check X and y for extreme values."
            )

    def on_epoch_end(self, net, **kwargs):
        if self._probe_input is not None:
            module = net.module_
            was = module.training
            module.eval()
            try:
                with torch.no_grad():
                    device = net.device or next(module.parameters()).device  # accelerate
                    out = module(self._probe_input.to(device), start=self._probe_start)
            finally:
                module.train(was)
            if not bool(torch.isfinite(out).all()):
                raise FloatingPointError(
                    f"The network's eval-mode output became NaN or infinite at the end of "
                    f"epoch {len(net.history)} (batch {self._batch}); training stopped. Lower "
                    f"lr (now {net.lr}), or check X and y for extreme values."
                )
        if self._watched is None:
            self._watched = _trained_tensors(net.module_)
        net._last_epoch_state = snapshot(self._watched)


def snapshot(tensors):
    """``(tensor, copy on the CPU)`` for each of ``tensors``: what a Ctrl-C restores. Only the
    tensors training changes are copied, and off the device, so a snapshot never doubles the
    model's device memory."""
    return [(t, t.detach().to("cpu", copy=True)) for t in tensors]


def restore_snapshot(snap):
    """Copy a :func:`snapshot` back into its tensors, in place."""
    if snap is None:
        return
    with torch.no_grad():
        for tensor, saved in snap:
            tensor.copy_(saved)


def _trained_tensors(module):
    """The floating-point tensors that a training step changes: the trainable parameters and
    the buffers of modules in training mode (BatchNorm statistics). Frozen stages are left out,
    so that checking them after each step costs what the trained part does."""
    tensors = [p for p in module.parameters() if p.requires_grad]
    tensors += [b for m in module.modules() if m.training for b in m.buffers(recurse=False)]
    return [t.detach() for t in tensors if t.is_floating_point() and t.numel()]


def _all_finite(tensors):
    if not tensors:
        return True
    # A sum is NaN or infinite as soon as one entry is, and costs a tenth of a max-norm; a
    # non-finite sum of finite entries (overflow) is told apart by the exact max-norm.
    sums = torch.stack([t.sum(dtype=torch.float32) for t in tensors])
    if bool(torch.isfinite(sums).all()):
        return True
    return bool(torch.isfinite(get_total_norm(tensors, float("inf"))))


class _ValidAccuracy(Callback):
    """Validation accuracy from the predictions skorch already computed."""

    def on_epoch_begin(self, net, **kwargs):
        self._correct = 0
        self._n = 0

    def on_batch_end(self, net, batch=None, training=None, y_pred=None, **kwargs):
        if training or y_pred is None:
            return
        yb = batch[1].to(y_pred.device)
        self._correct += int((y_pred.argmax(1) == yb).sum())
        self._n += len(yb)

    def on_epoch_end(self, net, **kwargs):
        if self._n:
            net.history.record("valid_acc", self._correct / self._n)


def release_training_state(skorch_net, device):
    """Drop what only training needed, so that a fitted estimator holds one copy of the
    model on the device: the last epoch's snapshot and the optimizer's state (every ``fit``,
    ``warm_start`` included, starts a new optimizer)."""
    skorch_net._last_epoch_state = None
    skorch_net._anchors = None  # L2-SP's copy of the starting weights
    skorch_net.module_.zero_grad(set_to_none=True)
    for name in skorch_net._optimizers:
        getattr(skorch_net, name + "_").state.clear()
    accelerator = getattr(skorch_net, "accelerator", None)
    if accelerator is not None:
        accelerator.free_memory()  # its references to the prepared model and optimizer
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def history_rows(history):
    keep = ("epoch", "train_loss", "valid_loss", "valid_acc", "dur")
    return [{k: row[k] for k in keep if k in row} for row in history]



# ---------------------------------------------------------------------------------------------
# A fit, described and run
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainingConfig:
    """Everything about a training run that is not the network or the data."""

    lr: float
    max_epochs: int
    batch_size: int
    seed: int
    device: str
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    precision: str = "float32"
    num_workers: int = 0
    compile: bool = False
    verbose: int = 0
    accelerator: object = None
    patience: int = 5
    tol: float = 1e-4
    callbacks: list = field(default_factory=list)
    lr_schedule: str = "constant"
    layer_decay: float = 1.0
    l2_sp: float = 0.0
    schedule_epochs: int | None = None
    start_epoch: int = 0


def training_callbacks(config, probe, *, validate=False, stop_early=True, accuracy=False,
                       drop_last=False):
    """The callbacks of a fit: the learning-rate schedule, the guard, on a validation split
    (``validate``) early stopping (``stop_early``) and validation accuracy (``accuracy``), a
    progress bar (``verbose >= 2``), the user's own."""
    callbacks = []
    if config.lr_schedule != "constant":
        callbacks.append(("lr_schedule", StepSchedule(
            config.lr_schedule, config.momentum, drop_last=drop_last,
            schedule_epochs=config.schedule_epochs, start_epoch=config.start_epoch)))
    callbacks.append(("guard", _Guard(probe)))
    if validate:
        if accuracy:
            callbacks.append(("valid_acc", _ValidAccuracy()))
    if validate and stop_early:
        callbacks.append(("early_stopping", _EarlyStopping(
            monitor="valid_loss", patience=config.patience, threshold=config.tol,
            threshold_mode="abs", load_best=True, sink=lambda *a, **k: None,
        )))
    if config.verbose and int(config.verbose) >= 2:
        callbacks.append(("progress", ProgressBar()))
    for i, cb in enumerate(config.callbacks or []):
        callbacks.append(cb if isinstance(cb, tuple) else (f"user_{i}", copy.deepcopy(cb)))
    return callbacks


def make_skorch_net(module, criterion, config, *, callbacks=(), train_split=None,
                    drop_last=False, net_class=None, net_kwargs=None):
    """The skorch net that trains ``module`` as ``config`` says (``net_class``: a subclass of
    the training net, given ``net_kwargs``, for a fit with a loop of its own)."""
    optimizer_kwargs = {"weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD
        optimizer_kwargs["momentum"] = config.momentum
    else:
        optimizer = torch.optim.AdamW
        optimizer_kwargs["betas"] = (config.momentum, 0.999)
    # DataLoader workers (decoding, augmentation) are seeded by torch from a draw of the
    # generator, itself seeded from random_state: fits stay reproducible.
    generator = torch.Generator().manual_seed(config.seed)
    # the head at lr, earlier stages at lr x layer_decay**depth; with L2-SP the stages are
    # pulled towards their starting weights and weight decay applies to the head only
    groups = {"l2_sp": config.l2_sp, "layer_decay": config.layer_decay,
              "head_weight_decay": config.weight_decay if config.l2_sp else None}
    cls, extra = _TransferSkorchNet, {"device": config.device, "precision": config.precision,
                                      **groups}
    if config.accelerator is not None:
        # accelerate places the model and batches and runs the mixed precision itself
        cls, extra = _AcceleratedSkorchNet, {"accelerator": config.accelerator, "device": None,
                                             **groups}
        # the epoch table from the main process only, and only with verbose
        extra["callbacks__print_log__sink"] = (
            config.accelerator.print if config.verbose else print
        )
    if net_class is not None:
        cls, extra = net_class, {**extra, **(net_kwargs or {})}
    return cls(
        module=module,
        criterion=criterion,
        optimizer=optimizer,
        lr=config.lr,
        max_epochs=config.max_epochs,
        batch_size=config.batch_size,
        iterator_train__shuffle=True,
        iterator_train__generator=generator,
        iterator_train__collate_fn=collate_batch,
        iterator_train__drop_last=drop_last,
        iterator_valid__collate_fn=collate_batch,
        iterator_train__num_workers=config.num_workers,
        iterator_valid__num_workers=config.num_workers,
        train_split=train_split,
        callbacks=list(callbacks),
        verbose=int(config.verbose) if config.verbose else 0,
        compile=bool(config.compile),
        **extra,
        **{f"optimizer__{k}": v for k, v in optimizer_kwargs.items()},
    )


def run_training(skorch_net, dataset, *, batch_size):
    """``skorch_net.fit(dataset)``; returns whether Ctrl-C ended it (after an epoch).

    A Ctrl-C before the first epoch completed, and BatchNorm's error on a batch of one sample,
    become errors that say what to do.
    """
    try:
        skorch_net.fit(dataset, None)
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        raise ValueError(
            "A BatchNorm layer got a training batch of 1 sample with 1 value per channel "
            f"(batch_size={batch_size}, images too small to keep a spatial extent); "
            "BatchNorm cannot train on 1 sample. Use batch_size >= 2, larger images "
            "(input_size=...), or freeze the stages with BatchNorm (freeze_depth=...)."
        ) from None
    interrupted = bool(getattr(skorch_net, "interrupted_", False))
    if interrupted and len(skorch_net.history) == 0:
        raise KeyboardInterrupt(
            "Training interrupted by user before the first epoch completed; the estimator "
            "is unchanged."
        )
    return interrupted
