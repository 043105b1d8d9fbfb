"""Shared estimator logic: validation, seeding, device, building and training the skorch net.

The estimators are composition wrappers: a scikit-learn estimator with flat hyperparameters
that builds a skorch ``NeuralNet`` in ``fit`` and keeps it as ``net_``. Nothing here knows about
individual architectures; that is :mod:`sktransfer.backbones`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import numbers
import os
import random
import warnings

import numpy as np
import sklearn
import torch
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, ProgressBar
from skorch.dataset import unpack_data
from skorch.helper import predefined_split
from skorch.hf import AccelerateMixin
from torch import nn
from torch.nn.utils import get_total_norm

from . import caching
from ._compat import HasMethods, Interval, StrOptions
from ._data import (
    ArrayDataset,
    ArraySource,
    Preprocess,
    check_input,
    check_same_input,
    collate_batch,
    make_source,
)
from ._depthwise import use_fast_depthwise
from ._freezing import n_frozen_stages
from ._network import TransferNet, dry_run, frozen_prefix_is_exact
from .augment import make_augmenter
from .backbones import get_backbone
from .images import is_image_list, take_rows

__all__ = ["TransferEstimatorMixin"]


# ---------------------------------------------------------------------------------------------
# Global state hygiene
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def preserved_global_state(device=None):
    """Leave torch, numpy and ``random`` RNG states (and torch's thread count) as found."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    devices = []
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        devices = [torch.device(device)]
    threads = torch.get_num_threads()
    grad = torch.is_grad_enabled()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            torch.set_grad_enabled(grad)


def resolve_device(device):
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a device torch understands; use 'auto', 'cpu', 'cuda' "
            "or 'cuda:N'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; use "
            "device='auto' or 'cpu'."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} was requested but MPS is not available.")
    return str(dev)


def _seed_from(random_state):
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    return int(random_state)


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


def _make_accelerator(spec, precision, device):
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
# skorch pieces
# ---------------------------------------------------------------------------------------------


class TrainingInterrupted(UserWarning):
    """Warned when ``fit`` is stopped by KeyboardInterrupt."""


class _TransferSkorchNet(NeuralNet):
    """skorch ``NeuralNet`` that optimises only trainable parameters, survives Ctrl-C and runs
    its forward passes under autocast to ``precision`` (float16 with a gradient scaler)."""

    def __init__(self, *args, precision="float32", **kwargs):
        super().__init__(*args, **kwargs)
        self.precision = precision

    def initialize(self):
        super().initialize()
        self._mode_set = None
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

    def train_step_single(self, batch, **fit_params):
        if self.precision == "float32":
            return super().train_step_single(batch, **fit_params)
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        with amp_context(self.device, self.precision):
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        scaler = getattr(self, "grad_scaler_", None)
        (loss if scaler is None else scaler.scale(loss)).backward()
        return {"loss": loss, "y_pred": y_pred}

    def _step_optimizer(self, step_fn):
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
            snap = getattr(self, "_last_epoch_state", None)
            if snap is not None:
                self.module_.load_state_dict(snap)
            # drop the partial epoch from the history
            if len(self.history) and "train_loss" not in self.history[-1]:
                self.history.pop()
            warnings.warn(
                f"Training interrupted by user after {len(self.history)} complete epoch(s); "
                "the model of the last completed epoch is kept.",
                TrainingInterrupted,
                stacklevel=2,
            )
            raise _Interrupted from None


class _AcceleratedSkorchNet(AccelerateMixin, _TransferSkorchNet):
    """:class:`_TransferSkorchNet` trained through Hugging Face accelerate (multi-GPU, mixed
    precision); the model is unwrapped again after training."""


class _Interrupted(Exception):
    pass


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
        net._last_epoch_state = {
            k: v.detach().clone() for k, v in net.module_.state_dict().items()
        }


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


# ---------------------------------------------------------------------------------------------
# The mixin
# ---------------------------------------------------------------------------------------------

_COMMON_CONSTRAINTS = {
    "backbone": [str, callable],
    "weights": [str, os.PathLike, None],
    "freeze_depth": [
        StrOptions({"all"}),
        Interval(numbers.Integral, None, None, closed="neither"),
    ],
    "lr": [Interval(numbers.Real, 0, None, closed="neither")],
    "momentum": [Interval(numbers.Real, 0, 1, closed="left")],
    "optimizer": [StrOptions({"sgd", "adamw"})],
    "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
    "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "input_size": [Interval(numbers.Integral, 1, None, closed="left"), None],
    "input_shape": [tuple, list, None],
    "grayscale": [StrOptions({"repeat", "adapt"})],
    "augment": [StrOptions({"light"}), callable, None],
    "on_bad_image": [StrOptions({"raise", "skip"})],
    "train_bn": ["boolean"],
    "bn_momentum": [Interval(numbers.Real, 0, 1, closed="both"), None],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
    "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
    "tol": [Interval(numbers.Real, 0, None, closed="left")],
    "cache": ["boolean"],
    "memory": [None, str, HasMethods(["cache"])],
    "device": [str],
    "precision": [StrOptions({"float32", "bfloat16", "float16"})],
    "compile": ["boolean"],
    "accelerator": [StrOptions({"auto"}), dict, None],
    "num_workers": [Interval(numbers.Integral, 0, None, closed="left")],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "callbacks": [list, None],
    "warm_start": ["boolean"],
}


class TransferEstimatorMixin:
    """Fit/predict machinery shared by :class:`TransferClassifier` and
    :class:`TransferRegressor`. Subclasses define ``_encode_y``, ``_criterion`` and the public
    prediction methods."""

    _parameter_constraints = dict(_COMMON_CONSTRAINTS)

    # -- hooks for subclasses -------------------------------------------------------------
    _is_classifier = False

    def _n_outputs(self):
        raise NotImplementedError

    # -- building ---------------------------------------------------------------------------

    def _build_network(self, spec, n_outputs, sample, *, weights, n_frozen=None):
        """Resolve the backbone and assemble the ``TransferNet``.

        Returns ``(net, backbone, n_frozen, n_features)``.
        """
        if weights is None:
            bb = get_backbone(self.backbone, weights=weights)  # random init: draws from RNG
        else:
            # Building a pretrained backbone draws random numbers (layers initialise before
            # the weights are loaded), or none at all when it comes from the process's store
            # of built backbones: either way the new head must see the same generator state.
            with torch.random.fork_rng(devices=[]):
                bb = get_backbone(self.backbone, weights=weights)
        k = n_frozen_stages(self.freeze_depth, bb.stage_names) if n_frozen is None else n_frozen
        if bb.input_kind != spec["kind"]:
            raise ValueError(f"Backbone {bb.name!r} takes {bb.input_kind} input.")
        pre = bb.preprocessing
        in_channels = pre.in_channels
        if (
            bb.input_kind == "image"
            and self.grayscale == "adapt"
            and spec.get("channels") in (1, 2)
            and in_channels == 3
        ):
            _adapt_stem_to_gray(bb.stages)
            in_channels = 1
        size = self.input_size
        if size is None and bb.name.startswith(("vit_",)) and pre.input_size:
            size = pre.input_size
        preprocess = Preprocess(
            spec,
            in_channels=in_channels,
            size=size,
            mean=pre.mean,
            std=pre.std,
            channels_last=self._channels_last(bb),
        )
        try:
            feats = dry_run(nn.Sequential(preprocess, *bb.stages.values()), sample)
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, IndexError, ValueError) as exc:
            raise ValueError(
                f"Backbone {bb.name!r} cannot process inputs of per-sample shape "
                f"{tuple(sample.shape[1:])} (after preprocessing: {exc}). Check the image size "
                "(set input_size=...), the channel layout, or input_shape."
            ) from exc
        if feats.dim() != 2:
            feats = feats.flatten(1)
            bb.stages[bb.stage_names[-1]] = nn.Sequential(
                bb.stages[bb.stage_names[-1]], nn.Flatten(1)
            )
        nf = int(feats.shape[1])
        head = nn.Linear(nf, n_outputs)
        net = TransferNet(
            preprocess,
            bb.stages,
            head,
            n_frozen=k,
            train_bn=self.train_bn,
            bn_momentum=self.bn_momentum,
        )
        # Depthwise layers on small maps get a faster weight gradient on CPU (no other change).
        # Not under torch.compile: its graph breaks there tripled the compile time of Lite0.
        if not getattr(self, "compile", False):
            use_fast_depthwise(net.stages)
        return net, bb, k, nf

    def _channels_last(self, bb):
        return bb.input_kind == "image" and any(
            isinstance(m, nn.Conv2d) for s in bb.stages.values() for m in s.modules()
        )

    # -- fit ----------------------------------------------------------------------------------

    def _check_y_present(self, y):
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )

    def _fit(self, X, y):
        self._check_y_present(y)
        input_kind = self._input_kind()
        image_size = (
            self._image_size() if input_kind == "image" and is_image_list(X) else None
        )
        X, spec = check_input(
            X, input_kind=input_kind, input_shape=self.input_shape, estimator=self,
            image_size=image_size, on_bad_image=getattr(self, "on_bad_image", "raise"),
        )
        # images skipped as unreadable (on_bad_image="skip") take their targets with them
        y = take_rows(y, getattr(X, "kept", None), getattr(X, "n_given", None))
        y_enc, y_meta = self._encode_y(y, n_samples=X.shape[0])
        device = resolve_device(self.device)
        check_precision(self.precision, device)
        seed = _seed_from(self.random_state)
        # inference_mode(False): a fit called inside torch.inference_mode() still trains
        with preserved_global_state(device), torch.inference_mode(False):
            accelerator = None
            if self.accelerator is not None:
                accelerator = _make_accelerator(self.accelerator, self.precision, device)
                device = str(accelerator.device)
            torch.manual_seed(seed)
            fitted = self._train(X, y_enc, spec, device, seed, accelerator=accelerator)
        # Only now, with training finished, does the estimator change: an error above leaves
        # a previous fit intact.
        for key, value in y_meta.items():
            setattr(self, key, value)
        for key, value in fitted.items():
            setattr(self, key, value)
        self.device_ = device
        self.input_spec_ = dict(spec)
        self.n_features_in_ = int(np.prod(X.shape[1:]))
        return self

    def _image_size(self):
        """Side that image files and PIL images are decoded to: ``input_size``, else the
        backbone's native input size."""
        if self.input_size is not None:
            return int(self.input_size)
        if isinstance(self.backbone, str):
            from .backbones import _REGISTRY

            entry = _REGISTRY.get(self.backbone)
            pre = entry.preprocessing if entry is not None else None
            name = self.backbone
        else:
            pre, name = None, getattr(self.backbone, "__name__", repr(self.backbone))
        if pre is None:
            pre = get_backbone(self.backbone, weights=None).preprocessing
        if pre.input_size is None:
            raise ValueError(
                f"Backbone {name!r} has no native input size, so image files and PIL images "
                "cannot be decoded to one: pass input_size=... (e.g. input_size=224)."
            )
        return int(pre.input_size)

    def _input_kind(self):
        if isinstance(self.backbone, str):
            from .backbones import _REGISTRY

            entry = _REGISTRY.get(self.backbone)
            return entry.input_kind if entry is not None else "image"
        return get_backbone(self.backbone, weights=None).input_kind

    def _train(self, X, y, spec, device, seed, accelerator=None):
        src = make_source(X, spec)
        n = len(src)
        sample = src.batch(np.arange(min(n, 2)))
        warm = self.warm_start and hasattr(self, "module_")
        if warm:
            net = copy.deepcopy(self.module_)
            old_spec = self.input_spec_
            if tuple(old_spec["sample_shape"]) != tuple(spec["sample_shape"]):
                raise ValueError(
                    "warm_start=True needs X of the per-sample shape seen before: "
                    f"{tuple(old_spec['sample_shape'])}, got {tuple(spec['sample_shape'])}."
                )
            k = n_frozen_stages(self.freeze_depth, list(self.stage_names_))
            net.refreeze(k, train_bn=self.train_bn, bn_momentum=self.bn_momentum)
            backbone_name, nf, weights_desc = self.backbone_name_, self.n_features_out_, \
                self.weights_
            if self._n_outputs_of(y) != net.head.out_features:
                raise ValueError("warm_start=True needs the same number of outputs as before.")
        else:
            net, bb, k, nf = self._build_network(
                spec, self._n_outputs_of(y), sample, weights=self.weights
            )
            backbone_name, weights_desc = bb.name, bb.weights
        net.to(device)

        # training/validation split
        valid_idx = None
        train_idx = np.arange(n)
        if self.early_stopping:
            train_idx, valid_idx = self._validation_split(y, seed)
        n_train = len(train_idx)
        has_trainable_bn = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            for s in list(net.stages)[k:]
            for m in s.modules()
        ) or (self.train_bn and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.stages.modules()))
        if has_trainable_bn and n_train == 1:
            raise ValueError(
                "Cannot train BatchNorm layers on 1 sample: fit needs at least 2 training "
                "samples (or freeze the stages with BatchNorm, e.g. freeze_depth='all')."
            )
        drop_last = has_trainable_bn and n_train % self.batch_size == 1

        # frozen-prefix cache: train the later stages on stored activations
        # Augmentation changes the input of the frozen stages every epoch: no cache then.
        augmenter = make_augmenter(getattr(self, "augment", None), spec)
        if augmenter is not None:
            augmenter.check(sample)
        use_cache = (
            self.cache and not warm and augmenter is None and frozen_prefix_is_exact(net, k)
        )
        cache_key = None
        if use_cache:
            cache_key = precision_key(caching.prefix_key(
                self, backbone_name, weights_desc, spec, k, seed if self.weights is None else None
            ), self.precision)
            with amp_context(device, self.precision):  # the prefix runs as it would uncached
                Xt = caching.prefix_activations(
                    net, k, src, key=cache_key, device=device,
                    batch_size=self._infer_batch_size(), memory=self.memory,
                )
        if use_cache and Xt is not None:
            net.start = k
            Xt = ArraySource(Xt)
        else:
            Xt, cache_key = src, None
        if valid_idx is not None:
            train_ds = ArrayDataset(Xt.take(train_idx), y[train_idx], transform=augmenter)
        else:
            train_ds = ArrayDataset(Xt, y, transform=augmenter)
        callbacks = [("guard", _Guard(sample))]
        train_split = None
        if valid_idx is not None:
            train_split = predefined_split(ArrayDataset(Xt.take(valid_idx), y[valid_idx]))
            if self._is_classifier:
                callbacks.append(("valid_acc", _ValidAccuracy()))
            callbacks.append(
                (
                    "early_stopping",
                    _EarlyStopping(
                        monitor="valid_loss",
                        patience=self.n_iter_no_change,
                        threshold=self.tol,
                        threshold_mode="abs",
                        load_best=True,
                        sink=lambda *a, **k: None,
                    ),
                )
            )
        if self.verbose and int(self.verbose) >= 2:
            callbacks.append(("progress", ProgressBar()))
        for i, cb in enumerate(self.callbacks or []):
            callbacks.append(cb if isinstance(cb, tuple) else (f"user_{i}", copy.deepcopy(cb)))

        skorch_net = self._make_skorch_net(
            net, y, device, seed, callbacks=callbacks, train_split=train_split,
            drop_last=drop_last, accelerator=accelerator,
        )
        interrupted = False
        try:
            skorch_net.fit(train_ds, None)
        except _Interrupted:
            interrupted = True
        except ValueError as exc:
            if "Expected more than 1 value per channel" not in str(exc):
                raise
            raise ValueError(
                "A BatchNorm layer got a training batch of 1 sample with 1 value per channel "
                f"(batch_size={self.batch_size}, images too small to keep a spatial extent); "
                "BatchNorm cannot train on 1 sample. Use batch_size >= 2, larger images "
                "(input_size=...), or freeze the stages with BatchNorm (freeze_depth=...)."
            ) from None
        finally:
            net.start = 0
        if interrupted and len(skorch_net.history) == 0:
            raise KeyboardInterrupt(
                "Training interrupted by user before the first epoch completed; the estimator "
                "is unchanged."
            )
        net.eval()
        _release_training_state(skorch_net, device)
        return {
            "net_": skorch_net,
            "module_": net,
            "backbone_name_": backbone_name,
            "weights_": weights_desc,
            "stage_names_": list(net.stages._modules),
            "n_frozen_stages_": k,
            "n_features_out_": nf,
            "history_": _history_rows(skorch_net.history),
            "n_iter_": len(skorch_net.history),
            "cache_key_": cache_key,
            "interrupted_": interrupted,
        }

    def _make_skorch_net(self, net, y, device, seed, *, callbacks=(), train_split=None,
                         drop_last=False, accelerator=None):
        generator = torch.Generator().manual_seed(seed)
        optimizer_kwargs = {"weight_decay": self.weight_decay}
        if self.optimizer == "sgd":
            optimizer = torch.optim.SGD
            optimizer_kwargs["momentum"] = self.momentum
        else:
            optimizer = torch.optim.AdamW
            optimizer_kwargs["betas"] = (self.momentum, 0.999)
        # DataLoader workers (decoding, augmentation) are seeded by torch from a draw of
        # ``generator``, itself seeded from random_state: fits stay reproducible.
        num_workers = int(getattr(self, "num_workers", 0) or 0)
        cls, extra = _TransferSkorchNet, {"device": device, "precision": self.precision}
        if accelerator is not None:
            # accelerate places the model and batches and runs the mixed precision itself
            cls, extra = _AcceleratedSkorchNet, {"accelerator": accelerator, "device": None}
            # the epoch table from the main process only, and only with verbose
            extra["callbacks__print_log__sink"] = accelerator.print if self.verbose else print
        return cls(
            module=net,
            criterion=self._criterion(y),
            optimizer=optimizer,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            iterator_train__shuffle=True,
            iterator_train__generator=generator,
            iterator_train__collate_fn=collate_batch,
            iterator_train__drop_last=drop_last,
            iterator_valid__collate_fn=collate_batch,
            iterator_train__num_workers=num_workers,
            iterator_valid__num_workers=num_workers,
            train_split=train_split,
            callbacks=list(callbacks),
            verbose=int(self.verbose) if self.verbose else 0,
            compile=bool(getattr(self, "compile", False)),
            **extra,
            **{f"optimizer__{k_}": v for k_, v in optimizer_kwargs.items()},
        )

    def _wrap_in_skorch(self, module):
        """A skorch net around an already trained module (after unpickling or loading)."""
        skorch_net = self._make_skorch_net(module, None, self.device_, 0)
        skorch_net.initialize()
        for row in self.history_:
            skorch_net.history.new_epoch()
            for key, value in row.items():
                skorch_net.history.record(key, value)
        return skorch_net

    def _n_outputs_of(self, y):
        return self._n_outputs(y)

    def _validation_split(self, y, seed):
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(y))
        stratify = None
        if self._is_classifier:
            counts = np.bincount(y)
            n_valid = int(np.ceil(self.validation_fraction * len(y)))
            if counts[counts > 0].min() >= 2 and n_valid >= len(counts[counts > 0]):
                stratify = y
            else:
                warnings.warn(
                    "early_stopping: a class has fewer than 2 samples (or the validation set is "
                    "smaller than the number of classes), so the validation split is not "
                    "stratified.",
                    UserWarning,
                    stacklevel=4,
                )
        try:
            tr, va = train_test_split(
                idx, test_size=self.validation_fraction, random_state=seed, stratify=stratify
            )
        except ValueError as exc:
            raise ValueError(
                f"early_stopping needs a validation split of {self.validation_fraction} of "
                f"{len(y)} samples: {exc} Use more data or early_stopping=False."
            ) from exc
        if len(tr) == 0 or len(va) == 0:
            raise ValueError(
                f"early_stopping: validation_fraction={self.validation_fraction} of {len(y)} "
                "samples leaves an empty training or validation set."
            )
        return np.sort(tr), np.sort(va)

    def _infer_batch_size(self):
        return max(int(self.batch_size), 64)

    # -- predict ------------------------------------------------------------------------------

    def _check_fitted(self):
        check_is_fitted(self, "module_")

    def _forward(self, X):
        """Raw network outputs (logits or scaled regression outputs) for X, as a numpy array."""
        self._check_fitted()
        X = check_same_input(
            X,
            self.input_spec_,
            input_kind=self.input_spec_["kind"],
            input_shape=self.input_shape,
            estimator=self,
            resize=self.input_size is not None,
        )
        net = self.module_
        net.eval()
        # compile=True: the module skorch compiled (it shares the parameters of module_)
        fwd = getattr(getattr(self, "net_", None), "module_", net) if self.compile else net
        precision = inference_precision(self.precision, self.device_)
        with preserved_global_state(self.device_), amp_context(self.device_, precision):
            k = self.n_frozen_stages_
            src = make_source(X, self.input_spec_)
            if self.cache and self.cache_key_ is not None and k > 0:
                acts = caching.prefix_activations(
                    net, k, src, key=self.cache_key_, device=self.device_,
                    batch_size=self._infer_batch_size(), memory=self.memory,
                )
                if acts is not None:
                    return _finite(_batched_forward(fwd, ArraySource(acts), self.device_,
                                                    self._infer_batch_size(), start=k,
                                                    pad=self.input_spec_["kind"] == "vector"))
            return _finite(
                _batched_forward(fwd, src, self.device_, self._infer_batch_size(), start=0,
                                 pad=self.input_spec_["kind"] == "vector",
                                 num_workers=int(getattr(self, "num_workers", 0) or 0))
            )

    # -- persistence ---------------------------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        if "module_" in state:
            module = state.pop("module_")
            state.pop("net_", None)
            state["_module_state"] = {
                k: v.detach().cpu().numpy() for k, v in module.state_dict().items()
            }
        # scikit-learn stamps only its own estimators; unpickling compares this stamp.
        state["_sklearn_version"] = sklearn.__version__
        return state

    def __setstate__(self, state):
        check_pickled_version(self, state)
        module_state = state.pop("_module_state", None)
        self.__dict__.update(state)
        if module_state is not None:
            from .persistence import rebuild_module

            self.module_ = rebuild_module(self, module_state)
            self.net_ = self._wrap_in_skorch(self.module_)

    # -- tags -----------------------------------------------------------------------------------

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


def check_pickled_version(est, state):
    """Pop the scikit-learn version stamp from a pickled ``state``; warn as scikit-learn does
    (``InconsistentVersionWarning``) when it differs from the running version."""
    pickled = state.pop("_sklearn_version", None)
    if pickled is not None and pickled != sklearn.__version__:
        warnings.warn(
            InconsistentVersionWarning(
                estimator_name=type(est).__name__,
                current_sklearn_version=sklearn.__version__,
                original_sklearn_version=pickled,
            ),
            stacklevel=3,
        )


def _release_training_state(skorch_net, device):
    """Drop what only training needed, so that a fitted estimator holds one copy of the
    model on the device: the last epoch's snapshot and the optimizer's state (every ``fit``,
    ``warm_start`` included, starts a new optimizer)."""
    skorch_net._last_epoch_state = None
    skorch_net.module_.zero_grad(set_to_none=True)
    for name in skorch_net._optimizers:
        getattr(skorch_net, name + "_").state.clear()
    accelerator = getattr(skorch_net, "accelerator", None)
    if accelerator is not None:
        accelerator.free_memory()  # its references to the prepared model and optimizer
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _history_rows(history):
    keep = ("epoch", "train_loss", "valid_loss", "valid_acc", "dur")
    return [{k: row[k] for k in keep if k in row} for row in history]


def _batched_forward(net, source, device, batch_size, start=0, num_workers=0, pad=False):
    """Outputs for every sample of ``source``, in batches of ``batch_size``.

    With ``pad=True`` every batch is zero-padded to ``batch_size`` rows, so each sample goes
    through exactly the same matrix kernels whatever the size of the request: predictions are
    then bitwise invariant to batch size and row order (used for cheap vector backbones).
    """
    outs = []
    n = len(source)
    chunks = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    batches = (source.batch(idx) for idx in chunks)
    if num_workers and not isinstance(source, ArraySource):
        # decode (files) in parallel workers, in order
        batches = (xb for xb, _ in torch.utils.data.DataLoader(
            ArrayDataset(source), batch_sampler=chunks, num_workers=num_workers,
            collate_fn=collate_batch,
        ))
    with torch.inference_mode():
        for xb in batches:
            m = len(xb)
            if pad and m < batch_size:
                xb = torch.cat([xb, xb.new_zeros((batch_size - m, *xb.shape[1:]))])
            out = net(xb.to(device, non_blocking=True), start=start)[:m]
            outs.append(out.float().cpu())
    return torch.cat(outs).numpy()


def _finite(out):
    """``out``, checked: a NaN or infinite network output is an error, never a prediction."""
    bad = ~np.isfinite(out).reshape(len(out), -1).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"The network's output is NaN or infinite for {len(rows)} sample(s) (rows "
            f"{rows[:5].tolist()}{' ...' if len(rows) > 5 else ''}): their values overflow "
            "float32 inside the network or lie far outside the range seen in fit. Check X "
            "for extreme values."
        )
    return out


def _adapt_stem_to_gray(stages):
    """Replace the first 3-channel convolution by a 1-channel one with summed RGB weights."""
    for stage in stages.values():
        for parent in stage.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                    new = copy.deepcopy(child)
                    new.in_channels = 1
                    new.weight = nn.Parameter(child.weight.detach().sum(1, keepdim=True))
                    setattr(parent, name, new)
                    return
    raise ValueError(
        "grayscale='adapt' needs a 3-channel input convolution in the backbone; none was "
        "found. Use grayscale='repeat'."
    )

