"""The scikit-learn side shared by the estimators: input checks, the ``fit`` recipe, predict.

The estimators are composition wrappers: a scikit-learn estimator with flat hyperparameters
that builds its network with :func:`sktransfer._network.build_network` and trains it through a
skorch net (:mod:`sktransfer._training`) in ``fit``, keeping both as ``module_`` and ``net_``.
Nothing here knows about individual architectures (:mod:`sktransfer.backbones`) or how a model
is saved (:mod:`sktransfer.persistence` reads what each estimator declares in ``_persisted``).
"""

from __future__ import annotations

import copy
import dataclasses
import numbers
import warnings

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from skorch.helper import predefined_split
from torch import nn

from . import caching
from ._adaptation_training import adaptation_net_options, labeled_rows, mark_unlabeled
from ._adaptive import (
    PROBE_BELOW,
    SELECT_FRACTION,
    fine_tuned_score,
    fine_tuning_frozen,
    fine_tuning_wins,
    labels_per_class,
    probe_score,
    resolve_auto,
    validation_split,
)
from ._compat import Interval, StrOptions
from ._data import ArrayDataset, ArraySource, make_source
from ._estimator import _BACKBONE_CONSTRAINTS, BackboneEstimatorMixin
from ._freezing import n_frozen_stages
from ._lr_finder import lr_range_test
from ._network import (
    batchnorm_policy,
    frozen_prefix_is_exact,
)
from ._recipe import fit_probe_head
from ._runtime import (
    batched_features,
    batched_forward,
    check_finite_output,
    preserved_global_state,
    resolve_device,
    seed_from,
    seeded_global_state,
)
from ._schedules import SCHEDULES
from ._training import (
    TrainingConfig,
    amp_context,
    check_precision,
    history_rows,
    inference_precision,
    make_accelerator,
    make_skorch_net,
    release_training_state,
    run_training,
    training_callbacks,
)
from .augment import CachedFlips, make_augmenter

__all__ = ["BackboneEstimatorMixin", "TransferEstimatorMixin"]

# BackboneEstimatorMixin lives in _estimator; it is importable from here too.


# ---------------------------------------------------------------------------------------------
# Fine-tuning estimators
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _TrainingData:
    train: ArrayDataset
    valid: ArrayDataset | None
    train_idx: np.ndarray
    drop_last: bool
    cache_key: str | None
    probe: torch.Tensor  # a raw input batch, for the guard's eval-mode check
    target: ArrayDataset | None = None  # unlabeled target rows of domain adaptation

_FINE_TUNING_CONSTRAINTS = {
    **_BACKBONE_CONSTRAINTS,
    "freeze_depth": [
        StrOptions({"all", "auto"}),
        Interval(numbers.Integral, None, None, closed="neither"),
    ],
    "lr": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"auto"})],
    "lr_schedule": [StrOptions(set(SCHEDULES))],
    "layer_decay": [Interval(numbers.Real, 0, 1, closed="right")],
    "head_init": [StrOptions({"auto", "random", "linear_probe"})],
    "l2_sp": [Interval(numbers.Real, 0, None, closed="left")],
    "tta": ["boolean"],
    "momentum": [Interval(numbers.Real, 0, 1, closed="left")],
    "optimizer": [StrOptions({"sgd", "adamw"})],
    "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
    "max_epochs": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
    "augment": [StrOptions({"flip", "light"}), callable, None],
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
        "lr_": "optional_positive_real",
        "lr_range_test_": "range_test",
        "freeze_depth_": "freeze_depth",
        "head_init_": "optional_str",
        "max_epochs_": "optional_count",
        "selection_scores_": "scores",
    }
    #: fitted attributes added after the first saved models: absent from older files (None)
    _persisted_added = frozenset({"freeze_depth_", "head_init_", "max_epochs_",
                                  "selection_scores_"})
    _is_classifier = False

    def _network_options(self, freeze_depth=None):
        depth = self.freeze_depth if freeze_depth is None else freeze_depth
        return {"freeze_depth": depth, "batchnorm": self.batchnorm,
                "fast_depthwise": not self.compile}

    def _resolve_auto(self, y, adapting=False):
        """The ``"auto"`` hyperparameters resolved for training targets ``y``
        (:mod:`sktransfer._adaptive`); ``adapting`` (domain adaptation) never resolves to
        the linear probe, whose frozen features nothing could adapt."""
        n_train = len(y)
        if self.early_stopping:
            n_train -= int(np.ceil(self.validation_fraction * n_train))
        resolved = resolve_auto(
            freeze_depth=self.freeze_depth, head_init=self.head_init,
            max_epochs=self.max_epochs, batch_size=self.batch_size, n_train=max(1, n_train),
            per_class=max(labels_per_class(y, classifier=self._is_classifier),
                          PROBE_BELOW if adapting else 0),
        )
        if self.verbose and resolved.reason:
            print(resolved.reason)
        return resolved

    # -- resuming searches (sktransfer.model_selection) ---------------------------------------

    #: set by a resuming search on the estimator it clones (never a hyperparameter): the store
    #: in which its fits find the state they continue and leave their own
    _resume_store = None

    def __sklearn_clone__(self):
        clone = super().__sklearn_clone__()
        if self._resume_store is not None:
            clone._resume_store = self._resume_store
        return clone

    # -- fit ----------------------------------------------------------------------------------

    def _fit(self, X, y, *, weights=None, target=None):
        """Fit on X and y, from ``weights`` (default: the ``weights`` hyperparameter; a
        semi-supervised fit passes the stages its stage one pretrained). ``target``: the
        unlabeled rows a domain-adapted fit adapts to (:mod:`sktransfer._domain`)."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        X, spec, feature_names = self._validate_fit_input(X)
        if target is None:
            y_enc, y_attrs = self._encode_y(y, n_samples=X.shape[0])
        else:  # the labeled rows encoded; the target rows carry the marker (-1 or NaN)
            y_enc, y_attrs = self._encode_y(_labeled(y, target), n_samples=int((~target).sum()))
        criterion = self._criterion(y_enc, y_attrs)
        device = resolve_device(self.device)
        check_precision(self.precision, device)
        # a fit of a resuming search (sktransfer.model_selection) may continue a stored one
        resume = None if self._resume_store is None else (
            self._resume_store.resume_point(self, X, y_enc))
        seed = seed_from(self.random_state) if resume is None else resume.seed(self.random_state)
        auto = self._resolve_auto(y_enc, adapting=target is not None)
        # inference_mode(False): a fit called inside torch.inference_mode() still trains
        with seeded_global_state(seed, device), torch.inference_mode(False):
            accelerator = None
            if self.accelerator is not None:
                accelerator = make_accelerator(self.accelerator, self.precision, device)
                device = str(accelerator.device)
            y_fit = y_enc if target is None else mark_unlabeled(y_enc, target)
            config = TrainingConfig(
                lr=self.lr if self.lr != "auto" else 0.0, max_epochs=max(1, auto.max_epochs),
                batch_size=self.batch_size, seed=seed,
                device=device, optimizer=self.optimizer, momentum=self.momentum,
                weight_decay=self.weight_decay, precision=self.precision,
                num_workers=self.num_workers, compile=self.compile, verbose=self.verbose,
                accelerator=accelerator, patience=self.n_iter_no_change, tol=self.tol,
                callbacks=self.callbacks or [], lr_schedule=self.lr_schedule,
                layer_decay=self.layer_decay, l2_sp=self.l2_sp,
            )
            if resume is not None:  # only the epochs it lacks, on the search's schedule
                config = resume.configure(config)
            fitted = self._train(X, y_fit, spec, criterion, weights, auto, config)
        # Only now, with training finished, does the estimator change: an error above leaves
        # a previous fit intact.
        fitted.update(head_init_=auto.head_init, max_epochs_=auto.max_epochs)
        for key, value in {**y_attrs, **fitted}.items():
            setattr(self, key, value)
        self.device_ = device
        self._set_input_attrs(X, spec, feature_names)
        return self

    def _train(self, X, y, spec, criterion, weights, auto, config):
        """Build (or copy) the network, prepare the data, start the head, train: the fitted
        attributes, set by ``_fit`` only once everything succeeded. ``auto``: the resolved
        ``"auto"`` hyperparameters."""
        src = make_source(X, spec)
        sample = src.batch(np.arange(min(len(src), 2)))
        net, info, warm = self._start_network(spec, y, sample, weights, auto.freeze_depth)
        net.to(config.device)
        # compared with the probe only without target rows (the probe cannot adapt to them)
        select = (auto.select and not warm and len(labeled_rows(y)) == len(y)
                  and self._resume_store is None)  # a resuming search trains what it asks
        data = self._training_data(net, src, spec, y, info, config, warm=warm, sample=sample,
                                   select=select)
        fitted = {**info, "module_": net, "stage_names_": list(net.stages._modules),
                  "cache_key_": data.cache_key, "lr_range_test_": None,
                  "selection_scores_": None}
        if auto.head_init == "linear_probe" and not warm:
            probe = self._probe_head(net, src, spec, info, y, criterion, data.train_idx,
                                     config)
            if info["n_frozen_stages_"] == len(net.stages):
                # the whole backbone is frozen: the probe is the trained head, no epoch runs
                _warn_unused_augmentation(self.augment, self.freeze_depth)
                net.eval()
                return {**fitted, "net_": self._wrap_in_skorch(net, config, criterion, []),
                        "history_": [], "n_iter_": 0, "interrupted_": False, "lr_": None}
        if self.lr == "auto":
            test = lr_range_test(net, criterion, data.train, config, drop_last=data.drop_last)
            config = dataclasses.replace(config, lr=test["lr"])
            fitted["lr_range_test_"] = {"lr": test["lrs"], "loss": test["losses"]}
            if self.verbose:
                print(f"lr='auto': range test of {test['steps']} steps in "
                      f"{test['seconds']:.1f} s suggests lr={test['lr']:.3g}")
        # the pretrained network, its head the probe of the training rows: to compare and restore
        start = (_cpu_state(net), copy.deepcopy(net.head).cpu()) if select else None
        skorch_net, interrupted = self._run_skorch(net, criterion, config, data)
        history = history_rows(skorch_net.history)
        if select and not interrupted:
            kept = self._probe_or_fine_tuned(net, probe, start, history, y, data, criterion)
            fitted.update(kept)
            if kept.get("freeze_depth_") == "all":  # the probe held out better: it is the model
                return {**fitted, "net_": self._wrap_in_skorch(net, config, criterion, []),
                        "history_": [], "n_iter_": 0, "interrupted_": False, "lr_": None}
        return {**fitted, "net_": skorch_net, "history_": history,
                "n_iter_": len(skorch_net.history), "interrupted_": interrupted,
                "lr_": float(config.lr)}

    def _probe_or_fine_tuned(self, net, probe, start, history, y, data, criterion):
        """Keep the fine-tuned network only if it beats the linear probe on the held-out
        rows by more than noise (:func:`~sktransfer._adaptive.fine_tuning_wins`; P>M>F's rule
        with a margin); else restore the pretrained network and
        make the probe, refitted on every row, the model. The fitted attributes to update."""
        (features, key), (state, head) = probe, start
        valid_idx = np.setdiff1d(np.arange(len(y)), data.train_idx)
        scores = {
            "linear_probe": probe_score(head, features[valid_idx], y[valid_idx],
                                        classifier=self._is_classifier),
            "fine_tuned": fine_tuned_score(history, classifier=self._is_classifier,
                                           early_stopping=self.early_stopping),
        }
        if self.verbose:
            print(f"held-out {'accuracy' if self._is_classifier else '-MSE'} of "
                  f"{len(valid_idx)} rows: linear probe {scores['linear_probe']:.4g}, "
                  f"fine-tuned {scores['fine_tuned']:.4g}")
        if fine_tuning_wins(scores, len(valid_idx), classifier=self._is_classifier):
            return {"selection_scores_": scores}
        net.load_state_dict(state)
        fit_probe_head(net.head, features, y, classifier=self._is_classifier,
                       class_weight=getattr(criterion, "class_weights", None))
        net.refreeze(len(net.stages), **_refreeze_options(self.batchnorm))
        net.eval()
        return {"selection_scores_": scores, "freeze_depth_": "all",
                "n_frozen_stages_": len(net.stages), "cache_key_": key}

    def _training_data(self, net, src, spec, y, info, config, *, warm, sample, select=False):
        """The training (and validation) sets: cached outputs of the frozen stages where
        that is exact, augmented images where asked; rows held out for early stopping or for
        ``select`` (comparing the fine-tuned model with the probe)."""
        k = info["n_frozen_stages_"]
        train_idx, valid_idx = self._split(y, config.seed, select=select)
        drop_last = self._check_batchnorm_batches(net, k, len(train_idx))
        cachable = self.cache is not False and not warm and frozen_prefix_is_exact(net, k)
        if self.augment == "flip" and cachable:
            data = self._cached_flips(net, k, src, spec, y, info, config, train_idx, valid_idx)
            if data is not None:
                train, valid, key, plain = data
                return _TrainingData(train, valid, train_idx, drop_last, key, sample,
                                     _target_rows(plain, y, None))
        augmenter = make_augmenter(self.augment, spec)
        if augmenter is not None:
            with torch.random.fork_rng(devices=[]):  # the check draws nothing training sees
                augmenter.check(sample)
        inputs, cache_key = src, None
        if cachable and augmenter is None:
            inputs, cache_key = self._cached_prefix(net, k, src, spec, info, config)
        if valid_idx is None:
            train, valid = ArrayDataset(inputs, y, transform=augmenter), None
        else:
            train = ArrayDataset(inputs.take(train_idx), y[train_idx], transform=augmenter)
            valid = ArrayDataset(inputs.take(valid_idx), y[valid_idx])
        target = _target_rows(inputs, y, augmenter)
        if target is not None and valid_idx is None:
            train = ArrayDataset(inputs.take(train_idx), y[train_idx], transform=augmenter)
        return _TrainingData(train, valid, train_idx, drop_last, cache_key, sample, target)

    def _cached_flips(self, net, k, src, spec, y, info, config, train_idx, valid_idx):
        """``augment="flip"`` on cached outputs of the frozen stages for each image and its
        mirror image: ``(train, valid, cache_key, plain)``, or ``None`` over the cache
        budget."""
        if spec.kind != "image":
            make_augmenter(self.augment, spec)  # says that vectors cannot be flipped
        plain, key = self._cached_prefix(net, k, src, spec, info, config)
        flipped = None
        if key is not None:
            flipped, _ = self._cached_prefix(net, k, src, spec, info, config, flip=True)
        if key is None or flipped is None:
            net.start = 0
            return None
        train = CachedFlips(plain.X[train_idx], flipped.X[train_idx], y[train_idx])
        valid = None if valid_idx is None else ArrayDataset(plain.take(valid_idx), y[valid_idx])
        return train, valid, key, plain

    def _run_skorch(self, net, criterion, config, data):
        callbacks = training_callbacks(config, data.probe, validate=data.valid is not None,
                                       stop_early=self.early_stopping,
                                       accuracy=self._is_classifier, drop_last=data.drop_last)
        adapted = {} if data.target is None else adaptation_net_options(
            data.target, method=self.unlabeled, weight=self.unlabeled_weight,
            classifier=self._is_classifier, n_train=len(data.train), config=config,
            drop_last=data.drop_last)
        skorch_net = make_skorch_net(
            net, criterion, config, callbacks=callbacks, drop_last=data.drop_last,
            train_split=None if data.valid is None else predefined_split(data.valid),
            **adapted,
        )
        try:
            interrupted = run_training(skorch_net, data.train, batch_size=self.batch_size)
        finally:
            net.start = 0
        net.eval()
        release_training_state(skorch_net, config.device)
        return skorch_net, interrupted

    def _probe_head(self, net, src, spec, info, y, criterion, train_idx, config):
        """Linear-probe head start: the head set to a linear model fitted on the pretrained
        features of the training rows (computed once, through the activation cache)."""
        n, feats, key = len(net.stages), None, None
        with amp_context(config.device, self.precision):
            if self.cache is not False:
                key = self._prefix_key(info["backbone_name_"], info["weights_"], spec, n,
                                       config.seed if self.weights is None else None)
                feats = caching.prefix_activations(
                    net, n, src, key=key, device=config.device,
                    batch_size=self._infer_batch_size(), memory=self._memory(),
                )
            if feats is None:  # no cache, or over its budget
                key = None
                feats = torch.from_numpy(batched_features(net, src, config.device,
                                                          self._infer_batch_size()))
        every = feats.numpy()
        feats = every[train_idx]
        bad = ~np.isfinite(feats).all(axis=1)
        if bad.any():
            raise FloatingPointError(
                f"The pretrained features of {int(bad.sum())} training sample(s) (rows "
                f"{train_idx[bad][:5].tolist()}) are NaN or infinite, so the linear-probe head "
                "start cannot be fitted: X holds values that overflow float32 in the backbone. "
                "Check X for extreme values."
            )
        weights = getattr(criterion, "class_weights", None)
        fit_probe_head(net.head, feats, y[train_idx],
                       classifier=self._is_classifier, class_weight=weights)
        return every, key

    def _start_network(self, spec, y, sample, weights, freeze_depth):
        """``(net, attrs, warm)``: a fresh network from the pretrained weights, or
        (``warm_start``) a copy of the fitted one; the fitted attributes that describe it."""
        n_outputs = self._n_outputs(y)
        if not (self.warm_start and hasattr(self, "module_")):
            weights = self.weights if weights is None else weights
            auto = freeze_depth == "auto"  # fine-tuning chosen by the rule: its share frozen
            built = self._build_network(spec, n_outputs, sample, weights=weights,
                                        freeze_depth="all" if auto else freeze_depth)
            k = built.n_frozen
            if auto:
                k = fine_tuning_frozen(len(built.net.stages))
                built.net.refreeze(k, **_refreeze_options(self.batchnorm))
            return built.net, {
                "backbone_name_": built.backbone_name, "weights_": built.weights,
                "n_frozen_stages_": k, "n_features_out_": built.n_features,
                "freeze_depth_": k if auto else freeze_depth,
            }, False
        if self.input_spec_.sample_shape != spec.sample_shape:
            raise ValueError(
                "warm_start=True needs X of the per-sample shape seen before: "
                f"{self.input_spec_.sample_shape}, got {spec.sample_shape}."
            )
        net = copy.deepcopy(self.module_)
        if n_outputs != net.head.out_features:
            raise ValueError("warm_start=True needs the same number of outputs as before.")
        k = (fine_tuning_frozen(len(self.stage_names_)) if freeze_depth == "auto"
             else n_frozen_stages(freeze_depth, list(self.stage_names_)))
        net.refreeze(k, **_refreeze_options(self.batchnorm))
        return net, {"backbone_name_": self.backbone_name_, "weights_": self.weights_,
                     "n_frozen_stages_": k, "n_features_out_": self.n_features_out_,
                     "freeze_depth_": k if freeze_depth == "auto" else freeze_depth}, True

    def _split(self, y, seed, select=False):
        """Training and validation indices among the labeled rows (``None`` for validation
        without early stopping or ``select``)."""
        rows = labeled_rows(y)
        if not (self.early_stopping or select):
            return rows, None
        fraction = self.validation_fraction if self.early_stopping else SELECT_FRACTION
        train, valid = validation_split(y[rows], fraction, seed,
                                        stratified=self._is_classifier)
        return rows[train], rows[valid]

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

    def _cached_prefix(self, net, k, src, spec, info, config, flip=False):
        """Train the later stages on stored outputs of the frozen stages, when they fit the
        cache budget: ``(source, cache_key)``, else ``(src, None)``. ``flip``: of the images
        flipped left-right (stored under a key of their own)."""
        cache_key = self._prefix_key(info["backbone_name_"], info["weights_"], spec, k,
                                     config.seed if self.weights is None else None, flip=flip)
        with amp_context(config.device, self.precision):  # the prefix runs as it would uncached
            acts = caching.prefix_activations(
                net, k, src, key=cache_key, device=config.device,
                batch_size=self._infer_batch_size(), memory=self._memory(), flip=flip,
                share=True,
            )
        if acts is None:
            return src, None
        net.start = k
        return ArraySource(acts), cache_key

    def _wrap_in_skorch(self, module, config=None, criterion=None, history=None):
        """A skorch net around an already trained module (after unpickling or loading, or
        when no epoch was run)."""
        if config is None:
            epochs = self.max_epochs if self.max_epochs != "auto" else 1
            config = TrainingConfig(lr=self.lr_ or 0.0, max_epochs=epochs,
                                    batch_size=self.batch_size, seed=0, device=self.device_,
                                    optimizer=self.optimizer, momentum=self.momentum,
                                    weight_decay=self.weight_decay, precision=self.precision,
                                    num_workers=self.num_workers, compile=self.compile)
        if not config.lr:
            config = dataclasses.replace(config, lr=self._default_lr())
        criterion = self._criterion(None, None) if criterion is None else criterion
        skorch_net = make_skorch_net(module, criterion, config)
        skorch_net.initialize()
        for row in self.history_ if history is None else history:
            skorch_net.history.new_epoch()
            for key, value in row.items():
                skorch_net.history.record(key, value)
        return skorch_net

    def _restore_module(self, module_state, device=None):
        module = super()._restore_module(module_state, device=device)
        self.net_ = self._wrap_in_skorch(module)
        return module

    @staticmethod
    def _default_lr():
        return 0.01

    def _infer_batch_size(self):
        return max(int(self.batch_size), 64)

    # -- predict ------------------------------------------------------------------------------

    def _forward(self, X):
        """Raw network outputs (logits or scaled regression outputs) for X, as a numpy array
        of shape ``(n_views, n_samples, n_outputs)``: one view, or with ``tta=True`` two (the
        images as given and flipped left-right)."""
        check_is_fitted(self, "module_")
        X = self._validate_predict_input(X)
        if self.tta and self.input_spec_.kind != "image":
            raise ValueError("tta=True flips images; this model takes vectors. Use tta=False.")
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
            out = None
            if self.cache is not False and self.cache_key_ is not None and k > 0:
                acts = caching.prefix_activations(
                    net, k, src, key=self.cache_key_, device=self.device_,
                    batch_size=batch_size, memory=self._memory(),
                )
                if acts is not None:
                    out = batched_forward(fwd, ArraySource(acts), self.device_, batch_size,
                                          start=k, pad=pad)
            if out is None:
                out = batched_forward(fwd, src, self.device_, batch_size, start=0, pad=pad,
                                      num_workers=self.num_workers)
            views = [out]
            if self.tta:
                views.append(batched_forward(fwd, src, self.device_, batch_size, start=0,
                                             num_workers=self.num_workers, flip=True))
            return np.stack([check_finite_output(view) for view in views])

    # -- tags -----------------------------------------------------------------------------------

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


def _cpu_state(net):
    """A copy of ``net``'s state on the CPU (to restore the pretrained network)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def _labeled(y, target):
    """The rows of y outside ``target``."""
    y = np.asarray(y) if not hasattr(y, "to_numpy") else y.to_numpy()
    return y[~target]


def _target_rows(inputs, y, augmenter):
    """The unlabeled target rows of a domain-adapted fit as a dataset, or ``None``."""
    rows = np.setdiff1d(np.arange(len(y)), labeled_rows(y))
    if not len(rows):
        return None
    return ArrayDataset(inputs.take(rows), transform=augmenter)


def _warn_unused_augmentation(augment, freeze_depth):
    if augment is None:
        return
    chose = ("freeze_depth='auto' chose the linear probe for this little data"
             if freeze_depth == "auto" else "with freeze_depth='all' the head is the probe")
    warnings.warn(
        f"augment={augment!r} was not used: {chose}, fitted on the frozen features of the "
        "images as given, and no epoch ran. To train with augmentation, set freeze_depth "
        "to a number of stages (or head_init='random').",
        UserWarning, stacklevel=5,
    )


def _refreeze_options(batchnorm):
    train_bn, bn_momentum = batchnorm_policy(batchnorm)
    return {"train_bn": train_bn, "bn_momentum": bn_momentum}
