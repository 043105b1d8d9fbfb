"""Safe save/load of fitted estimators (no pickle), and rebuilding networks from plain arrays.

:func:`save` writes a folder holding two files:

``config.json``
    The format version; the sktransfer, torch and scikit-learn versions that wrote it; the
    estimator's class name; its hyperparameters (``get_params()``); its fitted attributes
    (``classes_`` with their dtype, ``input_spec_``, ``stage_names_``, ``n_frozen_stages_``,
    ``history_``, the regressor's target scaling, ``device_``...); the size and SHA-256 of the
    weights file. ``null`` in place of the fitted attributes for an unfitted estimator.
``weights.safetensors``
    The network's state dict (absent for an unfitted estimator).

:func:`load` reads nothing but JSON and safetensors, so a model folder from an untrusted source
cannot run code. It accepts only sktransfer's estimator classes and backbones named in the
registry, by torchvision, or as ``"timm:<name>"``; it checks the weights file's size and
SHA-256 before parsing it, rebuilds the architecture without downloading anything, and loads
the weights strictly (every key, every shape). Any mismatch is a ``ValueError``; no partially
loaded estimator is ever returned.

``pickle``/``joblib`` also work (the network travels as numpy arrays and is rebuilt on
unpickling), but unpickling runs code chosen by whoever wrote the file: use them only for
files you trust.

What is stored of a fitted estimator is what its class declares in ``_persisted`` (fitted
attribute -> kind); this module knows how to write and check each kind, never a class. The
folder format itself (writing, and reading with the size and hash checks) lives in
:mod:`sktransfer._model_folder`, which ``weights=<model folder>`` uses too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ._model_folder import (
    CONFIG_NAME,
    ConfigError,
    read_model_config,
    read_model_weights,
    write_model_folder,
)
from ._network import is_buildable_backbone
from ._runtime import resolve_device
from ._state_codec import KINDS, decode, encode_estimator
from .classifier import TransferClassifier
from .features import TransferFeatures
from .pretraining import AutoencoderPretrainer, ContrastivePretrainer
from .regressor import TransferRegressor

__all__ = ["load", "save"]

# The classes save() writes and load() rebuilds: each declares its fitted state in
# ``_persisted`` (attribute -> kind, see _KINDS) and checks it in ``_check_persisted``.
_ESTIMATORS = {cls.__name__: cls for cls in (TransferClassifier, TransferRegressor,
                                             TransferFeatures, ContrastivePretrainer,
                                             AutoencoderPretrainer)}


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------


def save(estimator, path):
    """Save an estimator to a folder, without pickle.

    The folder holds ``config.json`` (versions, class name, hyperparameters, fitted attributes,
    SHA-256 of the weights) and ``weights.safetensors`` (the network's state dict); see
    :mod:`sktransfer.persistence`. Loading it with :func:`load` runs no code from the folder.

    Parameters
    ----------
    estimator : TransferClassifier, TransferRegressor, TransferFeatures or a pretrainer
        Fitted or not (the pretrainers of :mod:`sktransfer.pretraining` too). Every
        hyperparameter must be a plain value (string, number, bool, ``None``, path, or a
        list/tuple/dict of those): a callable backbone, callback instances, a ``RandomState``
        or a ``joblib.Memory`` cannot be stored this way.
    path : str or path-like
        The folder; created if needed. Files of an earlier save there are replaced.

    Returns
    -------
    path : pathlib.Path
        The folder.

    Raises
    ------
    ValueError
        If a hyperparameter or fitted attribute cannot be represented, naming it.

    See Also
    --------
    load : Read the folder back.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import sktransfer
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(20, 4).astype(np.float32), np.array(["a", "b"] * 10)
    >>> clf = sktransfer.TransferClassifier(
    ...     "test_mlp", weights=None, max_epochs=1, random_state=0
    ... ).fit(X, y)
    >>> folder = tempfile.mkdtemp()
    >>> sorted(p.name for p in sktransfer.save(clf, folder).iterdir())
    ['config.json', 'weights.safetensors']
    >>> loaded = sktransfer.load(folder)
    >>> np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    True
    """
    name = type(estimator).__name__
    if _ESTIMATORS.get(name) is not type(estimator):
        raise ValueError(
            f"save() stores {sorted(_ESTIMATORS)} estimators, got {type(estimator).__name__}. "
            "Use pickle or joblib (trusted files only) for other objects."
        )
    return write_model_folder(path, *encode_estimator(estimator))


def load(path, *, device=None):
    """Load an estimator saved by :func:`save`, running no code from the folder.

    Parameters
    ----------
    path : str or path-like
        The folder written by :func:`save`.
    device : str, default=None
        Where to put the network: ``None`` for the device it was fitted on, ``"auto"``,
        ``"cpu"``, ``"cuda"``... Where CUDA is unavailable the model is loaded on the CPU,
        with a warning.

    Returns
    -------
    estimator : TransferClassifier, TransferRegressor, TransferFeatures or a pretrainer
        Predicts exactly as the saved one did.

    Raises
    ------
    ValueError
        If the folder is not an sktransfer model, names an estimator class or a backbone
        outside the allowed ones, or its weights are truncated, tampered with (SHA-256
        mismatch) or do not match the architecture key for key and shape for shape. Nothing
        is returned then.

    See Also
    --------
    save : Write the folder.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import sktransfer
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(20, 4).astype(np.float32), rng.rand(20)
    >>> reg = sktransfer.TransferRegressor(
    ...     "test_mlp", weights=None, max_epochs=1, random_state=0
    ... ).fit(X, y)
    >>> folder = sktransfer.save(reg, tempfile.mkdtemp())
    >>> np.array_equal(sktransfer.load(folder, device="cpu").predict(X), reg.predict(X))
    True
    """
    folder = Path(path)
    config = read_model_config(folder)
    try:
        return _load_checked(folder, config, device)
    except ConfigError as exc:
        raise ValueError(
            f"{str(folder / CONFIG_NAME)!r} is malformed or was tampered with: {exc}"
        ) from None


def _load_checked(folder, config, device):
    # 1. what to build: only our estimator classes and backbones, checked before building
    name = config.get("estimator")
    if not isinstance(name, str) or name not in _ESTIMATORS:
        raise ValueError(
            f"Refusing to load estimator class {name!r}: only {sorted(_ESTIMATORS)} can be "
            "loaded."
        )
    cls = _ESTIMATORS[name]
    est = _read_params(cls, config.get("params"))
    fitted = config.get("fitted")
    if fitted is None:
        return est
    attrs = _read_fitted(cls, fitted)  # 2. fitted attributes, each checked
    state = read_model_weights(folder, config.get("weights"))  # 3. size and hash, then parse
    # 4. the device, then the architecture (weights=None: nothing downloaded), strictly
    target = attrs["device_"] if device is None else device
    if target == "auto":
        target = resolve_device("auto")
    try:
        target = str(torch.device(target))
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={target!r} is not a device torch understands ({exc}).") from None
    for attr, value in attrs.items():
        if value is not None or cls._persisted[attr] != "feature_names":
            setattr(est, attr, value)
    try:
        module = est._restore_module(state, device=target)
        if hasattr(est, "net_") and module.head.in_features != est.n_features_out_:
            raise ValueError(
                f"n_features_out_={est.n_features_out_} does not match the network's "
                f"{module.head.in_features} features."
            )
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        raise ValueError(
            f"Could not rebuild the model saved in {str(folder)!r}: {exc}"
        ) from None
    return est


def _read_params(cls, raw_params):
    """The estimator, from checked hyperparameters (its backbone checked before anything is
    built)."""
    if not isinstance(raw_params, dict):
        raise ConfigError("'params' must be an object")
    try:
        params = {k: decode(v) for k, v in raw_params.items()}
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad hyperparameter value ({exc})") from None
    unknown = sorted(set(params) - set(cls().get_params(deep=False)))
    if unknown:
        raise ConfigError(f"unknown hyperparameters {unknown} for {cls.__name__}")
    backbone = params.get("backbone", cls().backbone)
    if not is_buildable_backbone(backbone):
        raise ValueError(
            f"Refusing to load backbone {backbone!r}: load() builds only backbones registered "
            "in this process (sktransfer.list_backbones('registered')), torchvision model "
            "names and 'timm:<name>' names. Register it before loading if it is your own."
        )
    est = cls(**params)
    try:
        est._validate_params()
    except ValueError as exc:
        raise ConfigError(f"invalid hyperparameters: {exc}") from None
    return est


def _read_fitted(cls, fitted):
    if not isinstance(fitted, dict):
        raise ConfigError("'fitted' must be an object or null")
    schema = cls._persisted
    # attributes added since a file was written are absent from it: read as None
    added = getattr(cls, "_persisted_added", frozenset())
    fitted = {**{attr: None for attr in added if attr not in fitted}, **fitted}
    if set(fitted) != set(schema):
        raise ConfigError(
            f"fitted attributes {sorted(fitted)} differ from those of {cls.__name__}: "
            f"missing {sorted(set(schema) - set(fitted))}, "
            f"unexpected {sorted(set(fitted) - set(schema))}"
        )
    attrs = {}
    for attr, kind in schema.items():
        try:
            attrs[attr] = KINDS[kind][1](decode(fitted[attr]))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"fitted attribute {attr!r} {exc}") from None
    try:
        cls._check_persisted(attrs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return attrs
