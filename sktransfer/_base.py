"""The scikit-learn side shared by the estimators: input checks, the ``fit`` recipe, predict.

The estimators are composition wrappers: a scikit-learn estimator with flat hyperparameters
that builds its network with :func:`sktransfer._network.build_network` and trains it through a
skorch net (:mod:`sktransfer._training`) in ``fit``, keeping both as ``module_`` and ``net_``.
Nothing here knows about individual architectures (:mod:`sktransfer.backbones`) or how a model
is saved (:mod:`sktransfer.persistence` reads what each estimator declares in ``_persisted``).
"""

from __future__ import annotations

import copy
import numbers
import os
import warnings

import numpy as np
import sklearn
import torch
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.utils.validation import check_is_fitted
from skorch.helper import predefined_split
from torch import nn

from . import caching
from ._compat import HasMethods, Interval, StrOptions, check_feature_names, get_feature_names
from ._data import ArrayDataset, ArraySource, check_input, check_same_input, make_source
from ._freezing import n_frozen_stages
from ._network import (
    batchnorm_policy,
    build_network,
    frozen_prefix_is_exact,
    input_kind_of,
    load_fitted_state,
    native_input_size,
)
from ._runtime import (
    batched_forward,
    check_finite_output,
    preserved_global_state,
    resolve_device,
    seed_from,
)
from ._training import (
    TrainingConfig,
    amp_context,
    check_precision,
    history_rows,
    inference_precision,
    make_accelerator,
    make_skorch_net,
    precision_key,
    release_training_state,
    run_training,
    training_callbacks,
)
from .augment import make_augmenter
from .images import is_image_list

__all__ = ["BackboneEstimatorMixin", "TransferEstimatorMixin"]


# ---------------------------------------------------------------------------------------------
# What every estimator built on a backbone shares
# ---------------------------------------------------------------------------------------------

_BACKBONE_CONSTRAINTS = {
    "backbone": [str, callable],
    "weights": [str, os.PathLike, None],
    "input_size": [Interval(numbers.Integral, 1, None, closed="left"), None],
    "image_shape": [tuple, list, None],
    "grayscale": [StrOptions({"repeat", "adapt"})],
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "cache": ["boolean", str, os.PathLike, HasMethods(["cache"])],
    "device": [str],
    "precision": [StrOptions({"float32", "bfloat16", "float16"})],
}


class BackboneEstimatorMixin:
    """Input checks, network building and pickling for every estimator built on a backbone.

    Subclasses say how their network is frozen (:meth:`_network_options`), how many outputs a
    fitted network has (:meth:`_n_outputs_fitted`) and, in ``_persisted``, which fitted
    attributes make up the fitted state (name -> kind, read by :mod:`sktransfer.persistence`).
    """

    _persisted = {
        "input_spec_": "input_spec",
        "n_frozen_stages_": "count",
        "stage_names_": "names",
        "n_features_out_": "positive",
        "n_features_in_": "positive",
        "device_": "str",
        "backbone_name_": "str",
        "weights_": "optional_str",
        "feature_names_in_": "feature_names",
    }

    def _network_options(self):
        """Keyword arguments of :func:`build_network` that the hyperparameters set."""
        raise NotImplementedError

    def _n_outputs_fitted(self):
        raise NotImplementedError

    @classmethod
    def _check_persisted(cls, attrs):
        """Check that fitted attributes read from a file agree with each other."""
        if attrs["n_frozen_stages_"] > len(attrs["stage_names_"]):
            raise ValueError("n_frozen_stages_ exceeds the number of stages")

    # -- input ------------------------------------------------------------------------------

    def _validate_fit_input(self, X, *, on_bad_image="raise"):
        """``(X, spec, feature_names)``: X checked and described; nothing is set yet."""
        kind = input_kind_of(self.backbone)
        image_list = kind == "image" and is_image_list(X)
        image_size = native_input_size(self.backbone, self.input_size) if image_list else None
        names = None if image_list else get_feature_names(X)
        X, spec = check_input(X, input_kind=kind, image_shape=self.image_shape, estimator=self,
                              image_size=image_size, on_bad_image=on_bad_image)
        return X, spec, names

    def _set_input_attrs(self, X, spec, feature_names):
        self.input_spec_ = spec
        self.n_features_in_ = int(np.prod(X.shape[1:]))
        if feature_names is not None:
            self.feature_names_in_ = feature_names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def _validate_predict_input(self, X):
        if not is_image_list(X):
            check_feature_names(self, X, reset=False)
        return check_same_input(X, self.input_spec_, image_shape=self.image_shape,
                                estimator=self, resize=self.input_size is not None)

    def _memory(self):
        """The folder (or ``joblib.Memory``) that ``cache`` names, else ``None``."""
        return None if isinstance(self.cache, (bool, np.bool_)) else self.cache

    # -- the network ------------------------------------------------------------------------

    def _build_network(self, spec, n_outputs, sample, *, weights, n_frozen=None):
        """The one builder (:func:`build_network`) with this estimator's settings."""
        return build_network(
            self.backbone, weights=weights, spec=spec, n_outputs=n_outputs, sample=sample,
            n_frozen=n_frozen, grayscale=self.grayscale, input_size=self.input_size,
            **self._network_options(),
        )

    def _restore_module(self, module_state, device=None):
        """Rebuild the fitted architecture (nothing downloaded) and load ``module_state``
        strictly; sets ``module_`` (and ``device_``, CPU where CUDA is unavailable)."""
        spec = self.input_spec_
        sample = torch.zeros((2, *spec.sample_shape), dtype=_torch_dtype(spec.dtype))
        with preserved_global_state():
            built = self._build_network(spec, self._n_outputs_fitted(), sample, weights=None,
                                        n_frozen=self.n_frozen_stages_)
        net = built.net
        load_fitted_state(net, module_state, stage_names=getattr(self, "stage_names_", None))
        device = _available_device(getattr(self, "device_", "cpu") if device is None else device)
        self.device_ = device
        self.module_ = net.to(device).eval()
        return self.module_

    # -- pickling ---------------------------------------------------------------------------

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
        _check_pickled_version(self, state)
        module_state = state.pop("_module_state", None)
        self.__dict__.update(state)
        if module_state is not None:
            self._restore_module(module_state)


def _check_pickled_version(est, state):
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


def _available_device(device):
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(
            f"This model was fitted on {device!r} but CUDA is not available here; it is loaded "
            "on the CPU instead (device_ is now 'cpu').",
            UserWarning,
            stacklevel=4,
        )
        return "cpu"
    return str(device)


def _torch_dtype(name):
    return torch.from_numpy(np.zeros(1, dtype=np.dtype(name))).dtype


# ---------------------------------------------------------------------------------------------
# Fine-tuning estimators
# ---------------------------------------------------------------------------------------------

_FINE_TUNING_CONSTRAINTS = {
    **_BACKBONE_CONSTRAINTS,
    "freeze_depth": [
        StrOptions({"all"}),
        Interval(numbers.Integral, None, None, closed="neither"),
    ],
    "lr": [Interval(numbers.Real, 0, None, closed="neither")],
    "momentum": [Interval(numbers.Real, 0, 1, closed="left")],
    "optimizer": [StrOptions({"sgd", "adamw"})],
    "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
    "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
    "augment": [StrOptions({"light"}), callable, None],
    "batchnorm": [
        StrOptions({"trained", "all", "checkpoint"}),
        Interval(numbers.Real, 0, 1, closed="both"),
    ],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
    "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
    "tol": [Interval(numbers.Real, 0, None, closed="left")],
    "compile": ["boolean"],
    "accelerator": [StrOptions({"auto"}), dict, None],
    "num_workers": [Interval(numbers.Integral, 0, None, closed="left")],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "callbacks": [list, None],
    "warm_start": ["boolean"],
}


class TransferEstimatorMixin(BackboneEstimatorMixin):
    """Fit/predict machinery shared by :class:`TransferClassifier` and
    :class:`TransferRegressor`. Subclasses define ``_encode_y`` (checked targets and the fitted
    attributes they give), ``_n_outputs``, ``_criterion`` (the loss for encoded targets; for
    ``None`` the plain loss of a loaded model) and the public prediction methods."""

    _parameter_constraints = dict(_FINE_TUNING_CONSTRAINTS)
    _persisted = {
        **BackboneEstimatorMixin._persisted,
        "history_": "history",
        "n_iter_": "count",
        "cache_key_": "cache_key",
        "interrupted_": "bool",
    }
    _is_classifier = False

    def _network_options(self):
        return {"freeze_depth": self.freeze_depth, "batchnorm": self.batchnorm,
                "fast_depthwise": not self.compile}

    # -- fit ----------------------------------------------------------------------------------

    def _fit(self, X, y):
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        X, spec, feature_names = self._validate_fit_input(X)
        y_enc, y_attrs = self._encode_y(y, n_samples=X.shape[0])
        criterion = self._criterion(y_enc, y_attrs)
        device = resolve_device(self.device)
        check_precision(self.precision, device)
        seed = seed_from(self.random_state)
        # inference_mode(False): a fit called inside torch.inference_mode() still trains
        with preserved_global_state(device), torch.inference_mode(False):
            accelerator = None
            if self.accelerator is not None:
                accelerator = make_accelerator(self.accelerator, self.precision, device)
                device = str(accelerator.device)
            torch.manual_seed(seed)
            fitted = self._train(X, y_enc, spec, criterion, TrainingConfig(
                lr=self.lr, max_epochs=self.max_epochs, batch_size=self.batch_size, seed=seed,
                device=device, optimizer=self.optimizer, momentum=self.momentum,
                weight_decay=self.weight_decay, precision=self.precision,
                num_workers=self.num_workers, compile=self.compile, verbose=self.verbose,
                accelerator=accelerator, patience=self.n_iter_no_change, tol=self.tol,
                callbacks=self.callbacks or [],
            ))
        # Only now, with training finished, does the estimator change: an error above leaves
        # a previous fit intact.
        for key, value in {**y_attrs, **fitted}.items():
            setattr(self, key, value)
        self.device_ = device
        self._set_input_attrs(X, spec, feature_names)
        return self

    def _train(self, X, y, spec, criterion, config):
        src = make_source(X, spec)
        sample = src.batch(np.arange(min(len(src), 2)))
        net, info, warm = self._start_network(spec, y, sample)
        net.to(config.device)
        k = info["n_frozen_stages_"]
        train_idx, valid_idx = self._split(y, config.seed)
        drop_last = self._check_batchnorm_batches(net, k, len(train_idx))
        augmenter = make_augmenter(self.augment, spec)
        if augmenter is not None:
            augmenter.check(sample)
        cached = self.cache is not False and not warm and augmenter is None and (
            frozen_prefix_is_exact(net, k))
        inputs, cache_key = src, None
        if cached:
            inputs, cache_key = self._cached_prefix(net, k, src, spec, info, config)
        train_ds = ArrayDataset(inputs, y, transform=augmenter)
        train_split = None
        if valid_idx is not None:
            train_ds = ArrayDataset(inputs.take(train_idx), y[train_idx], transform=augmenter)
            train_split = predefined_split(ArrayDataset(inputs.take(valid_idx), y[valid_idx]))
        callbacks = training_callbacks(config, sample, validate=valid_idx is not None,
                                       accuracy=self._is_classifier)
        skorch_net = make_skorch_net(net, criterion, config, callbacks=callbacks,
                                     train_split=train_split, drop_last=drop_last)
        try:
            interrupted = run_training(skorch_net, train_ds, batch_size=self.batch_size)
        finally:
            net.start = 0
        net.eval()
        release_training_state(skorch_net, config.device)
        return {
            **info,
            "net_": skorch_net,
            "module_": net,
            "stage_names_": list(net.stages._modules),
            "history_": history_rows(skorch_net.history),
            "n_iter_": len(skorch_net.history),
            "cache_key_": cache_key,
            "interrupted_": interrupted,
        }

    def _start_network(self, spec, y, sample):
        """``(net, attrs, warm)``: a fresh network from the pretrained weights, or
        (``warm_start``) a copy of the fitted one; the fitted attributes that describe it."""
        n_outputs = self._n_outputs(y)
        if not (self.warm_start and hasattr(self, "module_")):
            built = self._build_network(spec, n_outputs, sample, weights=self._starting_weights())
            return built.net, {
                "backbone_name_": built.backbone_name, "weights_": built.weights,
                "n_frozen_stages_": built.n_frozen, "n_features_out_": built.n_features,
            }, False
        if self.input_spec_.sample_shape != spec.sample_shape:
            raise ValueError(
                "warm_start=True needs X of the per-sample shape seen before: "
                f"{self.input_spec_.sample_shape}, got {spec.sample_shape}."
            )
        net = copy.deepcopy(self.module_)
        if n_outputs != net.head.out_features:
            raise ValueError("warm_start=True needs the same number of outputs as before.")
        k = n_frozen_stages(self.freeze_depth, list(self.stage_names_))
        net.refreeze(k, **_refreeze_options(self.batchnorm))
        return net, {"backbone_name_": self.backbone_name_, "weights_": self.weights_,
                     "n_frozen_stages_": k, "n_features_out_": self.n_features_out_}, True

    def _starting_weights(self):
        """What a fresh network starts from: ``weights`` (a semi-supervised classifier fit
        gives the stages pretrained in its stage one instead)."""
        return self.weights

    def _split(self, y, seed):
        """Training and validation indices (``None`` for validation without early stopping)."""
        if not self.early_stopping:
            return np.arange(len(y)), None
        return self._validation_split(y, seed)

    def _check_batchnorm_batches(self, net, k, n_train):
        """Refuse to train BatchNorm on one sample; say whether the last batch must be
        dropped (it would hold a single sample)."""
        bn = nn.modules.batchnorm._BatchNorm
        trains_bn = any(isinstance(m, bn) for s in list(net.stages)[k:] for m in s.modules())
        trains_bn = trains_bn or (net.train_bn and any(
            isinstance(m, bn) for m in net.stages.modules()))
        if trains_bn and n_train == 1:
            raise ValueError(
                "Cannot train BatchNorm layers on 1 sample: fit needs at least 2 training "
                "samples (or freeze the stages with BatchNorm, e.g. freeze_depth='all')."
            )
        return trains_bn and n_train % self.batch_size == 1

    def _cached_prefix(self, net, k, src, spec, info, config):
        """Train the later stages on stored outputs of the frozen stages, when they fit the
        cache budget: ``(source, cache_key)``, else ``(src, None)``."""
        cache_key = precision_key(caching.prefix_key(
            backbone=self.backbone, backbone_name=info["backbone_name_"],
            weights=info["weights_"], spec=spec, k=k,
            seed=config.seed if self.weights is None else None,
            input_size=self.input_size, grayscale=self.grayscale,
        ), self.precision)
        with amp_context(config.device, self.precision):  # the prefix runs as it would uncached
            acts = caching.prefix_activations(
                net, k, src, key=cache_key, device=config.device,
                batch_size=self._infer_batch_size(), memory=self._memory(),
            )
        if acts is None:
            return src, None
        net.start = k
        return ArraySource(acts), cache_key

    def _wrap_in_skorch(self, module):
        """A skorch net around an already trained module (after unpickling or loading)."""
        config = TrainingConfig(lr=self.lr, max_epochs=self.max_epochs,
                                batch_size=self.batch_size, seed=0, device=self.device_,
                                optimizer=self.optimizer, momentum=self.momentum,
                                weight_decay=self.weight_decay, precision=self.precision,
                                num_workers=self.num_workers, compile=self.compile)
        skorch_net = make_skorch_net(module, self._criterion(None, None), config)
        skorch_net.initialize()
        for row in self.history_:
            skorch_net.history.new_epoch()
            for key, value in row.items():
                skorch_net.history.record(key, value)
        return skorch_net

    def _restore_module(self, module_state, device=None):
        module = super()._restore_module(module_state, device=device)
        self.net_ = self._wrap_in_skorch(module)
        return module

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
                    stacklevel=5,
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

    def _forward(self, X):
        """Raw network outputs (logits or scaled regression outputs) for X, as a numpy array."""
        check_is_fitted(self, "module_")
        X = self._validate_predict_input(X)
        net = self.module_
        net.eval()
        # compile=True: the module skorch compiled (it shares the parameters of module_)
        fwd = getattr(getattr(self, "net_", None), "module_", net) if self.compile else net
        precision = inference_precision(self.precision, self.device_)
        pad = self.input_spec_.kind == "vector"
        batch_size = self._infer_batch_size()
        with preserved_global_state(self.device_), amp_context(self.device_, precision):
            k = self.n_frozen_stages_
            src = make_source(X, self.input_spec_)
            if self.cache is not False and self.cache_key_ is not None and k > 0:
                acts = caching.prefix_activations(
                    net, k, src, key=self.cache_key_, device=self.device_,
                    batch_size=batch_size, memory=self._memory(),
                )
                if acts is not None:
                    return check_finite_output(batched_forward(
                        fwd, ArraySource(acts), self.device_, batch_size, start=k, pad=pad))
            return check_finite_output(batched_forward(
                fwd, src, self.device_, batch_size, start=0, pad=pad,
                num_workers=self.num_workers))

    # -- tags -----------------------------------------------------------------------------------

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


def _refreeze_options(batchnorm):
    train_bn, bn_momentum = batchnorm_policy(batchnorm)
    return {"train_bn": train_bn, "bn_momentum": bn_momentum}
