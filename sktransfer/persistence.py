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
attribute -> kind); this module knows how to write and check each kind, never a class.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from ._network import is_buildable_backbone
from ._runtime import resolve_device
from ._state_codec import KINDS, Unrepresentable, decode, encode, is_int
from .classifier import TransferClassifier
from .features import TransferFeatures
from .regressor import TransferRegressor

__all__ = ["load", "save"]

# The classes save() writes and load() rebuilds: each declares its fitted state in
# ``_persisted`` (attribute -> kind, see _KINDS) and checks it in ``_check_persisted``.
_ESTIMATORS = {cls.__name__: cls for cls in (TransferClassifier, TransferRegressor,
                                             TransferFeatures)}

FORMAT_NAME = "sktransfer-estimator"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
_MAX_CONFIG_BYTES = 64 * 2**20


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
    estimator : TransferClassifier, TransferRegressor or TransferFeatures
        Fitted or not. Every hyperparameter must be a plain value (string, number, bool,
        ``None``, path, or a list/tuple/dict of those): a callable backbone, callback
        instances, a ``RandomState`` or a ``joblib.Memory`` cannot be stored this way.
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
    from . import __version__

    name = type(estimator).__name__
    if _ESTIMATORS.get(name) is not type(estimator):
        raise ValueError(
            f"save() stores {sorted(_ESTIMATORS)} estimators, got {type(estimator).__name__}. "
            "Use pickle or joblib (trusted files only) for other objects."
        )
    params = _encode_params(estimator)
    fitted, state = _encode_fitted(estimator) if hasattr(estimator, "module_") else (None, None)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} exists and is not a folder; save() writes a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "versions": _versions(__version__),
        "estimator": name,
        "params": params,
        "fitted": fitted,
        "weights": None,
    }
    if state is not None:
        from safetensors.torch import save as save_tensors

        blob = save_tensors(state, metadata={"format": FORMAT_NAME})
        config["weights"] = {
            "file": WEIGHTS_NAME,
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        _write_atomic(folder / WEIGHTS_NAME, blob)
    elif (folder / WEIGHTS_NAME).exists():
        (folder / WEIGHTS_NAME).unlink()
    text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    _write_atomic(folder / CONFIG_NAME, text.encode("utf-8"))
    return folder


def _encode_params(estimator):
    name = type(estimator).__name__
    params = {}
    for key, value in estimator.get_params(deep=False).items():
        try:
            params[key] = encode(value)
        except Unrepresentable as exc:
            inner = exc.args[0]
            hint = ""
            if key == "backbone":
                hint = (
                    " Register the factory with sktransfer.register_backbone(name, factory) "
                    "and pass backbone=name; the same registration must run before load()."
                )
            raise ValueError(
                f"Cannot save {name}: the hyperparameter {key}={value!r} holds a "
                f"{type(inner).__name__} ({inner!r}), which the safe format cannot represent; "
                "it stores strings, finite numbers, booleans, None, paths, and lists, tuples "
                f"and dicts of those.{hint} Set {key} to a plain value before saving, or use "
                "pickle/joblib (trusted files only)."
            ) from None
    if not is_buildable_backbone(estimator.backbone):
        raise ValueError(
            f"Cannot save {name} with backbone={estimator.backbone!r}: it is not a registered, "
            "torchvision or 'timm:' backbone name, so load() could not rebuild it."
        )
    return params


def _encode_fitted(estimator):
    """The declared fitted attributes as JSON values, and the network's state dict."""
    fitted = {}
    for attr, kind in type(estimator)._persisted.items():
        value = getattr(estimator, attr, None)  # feature_names_in_ may be absent
        try:
            fitted[attr] = KINDS[kind][0](value)
        except Unrepresentable:
            raise ValueError(
                f"Cannot save the fitted attribute {attr}={value!r}: it holds a value the "
                "safe format cannot represent."
            ) from None
    state = {
        k: v.detach().to("cpu").contiguous().clone()
        for k, v in estimator.module_.state_dict().items()
    }
    return fitted, state


def _versions(own):
    import safetensors
    import sklearn

    return {
        "sktransfer": own,
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "safetensors": safetensors.__version__,
    }


def _write_atomic(target, data):
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _reject_constant(name):
    raise ValueError(f"{name} is not a valid JSON number")


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
    estimator : TransferClassifier, TransferRegressor or TransferFeatures
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
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise ValueError(
            f"{str(folder)!r} is not a model folder written by sktransfer.save(): it has no "
            f"{CONFIG_NAME}."
        )
    if config_path.stat().st_size > _MAX_CONFIG_BYTES:
        raise ValueError(f"{str(config_path)!r} is too large to be an sktransfer config.")
    try:
        config = json.loads(
            config_path.read_bytes().decode("utf-8"), parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{str(config_path)!r} is not valid JSON: {exc}.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{str(config_path)!r} is not an sktransfer model config (format "
            f"{FORMAT_NAME!r} expected)."
        )
    version = config.get("format_version")
    if not is_int(version, 1) or version > FORMAT_VERSION:
        raise ValueError(
            f"{str(config_path)!r} has format_version {version!r}; this sktransfer reads "
            f"versions 1..{FORMAT_VERSION}. Upgrade sktransfer to load it."
        )
    try:
        return _load_checked(folder, config, device)
    except _ConfigError as exc:
        raise ValueError(
            f"{str(config_path)!r} is malformed or was tampered with: {exc}"
        ) from None


class _ConfigError(Exception):
    pass


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
    state = _read_weights(folder, config.get("weights"))  # 3. size and hash, then parse
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
        raise _ConfigError("'params' must be an object")
    try:
        params = {k: decode(v) for k, v in raw_params.items()}
    except (ValueError, TypeError) as exc:
        raise _ConfigError(f"bad hyperparameter value ({exc})") from None
    unknown = sorted(set(params) - set(cls().get_params(deep=False)))
    if unknown:
        raise _ConfigError(f"unknown hyperparameters {unknown} for {cls.__name__}")
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
        raise _ConfigError(f"invalid hyperparameters: {exc}") from None
    return est


def _read_fitted(cls, fitted):
    if not isinstance(fitted, dict):
        raise _ConfigError("'fitted' must be an object or null")
    schema = cls._persisted
    if set(fitted) != set(schema):
        raise _ConfigError(
            f"fitted attributes {sorted(fitted)} differ from those of {cls.__name__}: "
            f"missing {sorted(set(schema) - set(fitted))}, "
            f"unexpected {sorted(set(fitted) - set(schema))}"
        )
    attrs = {}
    for attr, kind in schema.items():
        try:
            attrs[attr] = KINDS[kind][1](decode(fitted[attr]))
        except (ValueError, TypeError) as exc:
            raise _ConfigError(f"fitted attribute {attr!r} {exc}") from None
    try:
        cls._check_persisted(attrs)
    except ValueError as exc:
        raise _ConfigError(str(exc)) from None
    return attrs


def _read_weights(folder, info):
    """The state dict, after checking the file's size and SHA-256 against the config."""
    if not (
        isinstance(info, dict)
        and is_int(info.get("bytes"), 0)
        and isinstance(info.get("sha256"), str)
    ):
        raise _ConfigError("'weights' must record the weights file's bytes and sha256")
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise ValueError(f"The weights file {str(weights_path)!r} is missing.")
    size = weights_path.stat().st_size
    if size != info["bytes"]:
        raise ValueError(
            f"The weights file {str(weights_path)!r} has {size} bytes, but {CONFIG_NAME} "
            f"records {info['bytes']}: it is truncated, corrupt or was replaced."
        )
    blob = weights_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != info["sha256"].lower():
        raise ValueError(
            f"The weights file {str(weights_path)!r} does not match the SHA-256 recorded in "
            f"{CONFIG_NAME} (expected {info['sha256']}, got {digest}): it is corrupt or was "
            "replaced."
        )
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    try:
        return load_tensors(blob)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise ValueError(
            f"The weights file {str(weights_path)!r} is not a readable safetensors file "
            f"({exc}): it is truncated or corrupt."
        ) from None
