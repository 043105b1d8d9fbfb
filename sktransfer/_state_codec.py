"""JSON encoding of hyperparameters and fitted attributes for :mod:`sktransfer.persistence`.

Hyperparameters are plain values (:func:`encode` / :func:`decode`, with tags for tuples, paths
and dicts whose keys are not plain strings). Fitted attributes are written and checked by the
*kind* their estimator declares in ``_persisted`` (:data:`KINDS`): each decoder reads an
untrusted file and raises ``ValueError`` saying what is wrong.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from pathlib import Path

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler

from ._network import is_buildable_backbone
from ._spec import InputSpec

__all__ = ["KINDS", "Unrepresentable", "decode", "encode", "encode_estimator", "is_int"]


class Unrepresentable(Exception):
    pass


def encode(value):
    """Plain value -> JSON value. Tuples, paths and dicts whose keys are not all plain strings
    (class_weight's labels) are tagged, so that they come back as they were."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise Unrepresentable(value)
        return value
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        if not isinstance(path, str):
            raise Unrepresentable(value)
        return {"__path__": path}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    raise Unrepresentable(value)


def decode(value):
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if not any(k.startswith("__") for k in value):
            return {k: decode(v) for k, v in value.items()}
        if len(value) != 1:
            raise ValueError(f"unexpected object {value!r}")
        (tag, inner), = value.items()
        if tag == "__tuple__" and isinstance(inner, list):
            return tuple(decode(v) for v in inner)
        if tag == "__path__" and isinstance(inner, str):
            return Path(inner)
        if tag == "__dict__" and isinstance(inner, list):
            out = {}
            for pair in inner:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise ValueError(f"unexpected dict item {pair!r}")
                key = decode(pair[0])
                if isinstance(key, (list, dict)):
                    raise ValueError(f"unhashable dict key {key!r}")
                out[key] = decode(pair[1])
            return out
        raise ValueError(f"unexpected object {value!r}")
    return value


# Fitted attributes: name -> checker(value) returning the value to set (raises ValueError).


def is_int(v, lo=None):
    return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)


def _check(cond, what):
    if not cond:
        raise ValueError(what)


def _int_attr(lo=0):
    def check(v):
        _check(is_int(v, lo), f"must be an integer >= {lo}")
        return v

    return check


def _str_attr(v):
    _check(isinstance(v, str), "must be a string")
    return v


def _opt_str_attr(v):
    _check(v is None or isinstance(v, str), "must be a string or null")
    return v


def _scores_attr(v):
    if v is None:
        return None
    _check(isinstance(v, dict) and all(isinstance(k, str) for k in v)
           and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values()),
           "must be an object of names to numbers, or null")
    return {k: float(x) for k, x in v.items()}


def _freeze_depth_attr(v):
    _check(v is None or v == "all" or (isinstance(v, int) and not isinstance(v, bool)),
           "must be an integer, 'all' or null")
    return v


def _key_attr(v):
    # a folder name inside ``memory``: hexadecimal only, so it cannot point elsewhere
    _check(
        v is None or (isinstance(v, str) and re.fullmatch(r"[0-9a-f]{1,128}", v) is not None),
        "must be a hexadecimal cache key or null",
    )
    return v


def _bool_attr(v):
    _check(isinstance(v, bool), "must be true or false")
    return v


def _names_attr(v):
    _check(
        isinstance(v, list) and len(v) > 0 and all(isinstance(s, str) for s in v),
        "must be a non-empty list of strings",
    )
    return v


def _history_attr(v):
    _check(isinstance(v, list), "must be a list")
    for row in v:
        _check(
            isinstance(row, dict)
            and all(
                isinstance(k, str) and isinstance(x, (int, float)) and not isinstance(x, bool)
                for k, x in row.items()
            ),
            "must be a list of {name: number} rows",
        )
    return v


def _float_array_attr(v):
    _check(
        isinstance(v, list)
        and len(v) > 0
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v),
        "must be a non-empty list of numbers",
    )
    return np.asarray(v, dtype=np.float64)


_LABEL_KINDS = {"U": str, "i": int, "u": int, "b": bool, "f": float}


def _encode_classes(classes):
    classes = np.asarray(classes)
    kind = classes.dtype.kind
    if kind == "O":
        values = [v.item() if isinstance(v, np.generic) else v for v in classes.tolist()]
        if not all(isinstance(v, (str, int, float, bool)) for v in values):
            bad = next(v for v in values if not isinstance(v, (str, int, float, bool)))
            raise ValueError(
                f"Cannot save classes_ holding {type(bad).__name__} objects: the safe format "
                "stores labels that are strings, integers, floats or booleans."
            )
        return {"dtype": "object", "values": values}
    if kind not in _LABEL_KINDS:
        raise ValueError(
            f"Cannot save classes_ of dtype {classes.dtype}: the safe format stores labels "
            "that are strings, integers, floats or booleans."
        )
    return {"dtype": classes.dtype.str, "values": [encode(v) for v in classes.tolist()]}


def _decode_classes(v):
    _check(isinstance(v, dict) and set(v) == {"dtype", "values"}, "must be {dtype, values}")
    values = v["values"]
    _check(isinstance(values, list) and len(values) >= 2, "must hold at least 2 labels")
    if v["dtype"] == "object":
        _check(
            all(isinstance(x, (str, int, float, bool)) for x in values),
            "must hold strings, numbers or booleans",
        )
        classes = np.empty(len(values), dtype=object)
        classes[:] = values
    else:
        try:
            dtype = np.dtype(v["dtype"])
        except TypeError:
            raise ValueError(f"has an unknown dtype {v['dtype']!r}") from None
        _check(dtype.kind in _LABEL_KINDS, f"has an unsupported dtype {dtype}")
        want = _LABEL_KINDS[dtype.kind]
        ok = (
            (lambda x: isinstance(x, (int, float)) and not isinstance(x, bool))
            if want is float
            else (lambda x: isinstance(x, want) and (want is bool or not isinstance(x, bool)))
        )
        _check(all(ok(x) for x in values), f"must hold values of dtype {dtype}")
        try:
            classes = np.array(values, dtype=dtype)
        except (OverflowError, ValueError) as exc:
            raise ValueError(f"does not fit dtype {dtype} ({exc})") from None
        _check(classes.tolist() == values, f"does not fit dtype {dtype}")
    _check(len(set(classes.tolist())) == len(classes), "must hold distinct labels")
    return classes


def _encode_target_scaler(pipe):
    max_abs, standard = pipe[0], pipe[-1]
    return {"max_abs": max_abs.max_abs_.tolist(), "mean": standard.mean_.tolist(),
            "scale": standard.scale_.tolist()}


def _decode_target_scaler(v):
    _check(isinstance(v, dict) and set(v) == {"max_abs", "mean", "scale"},
           "must be {max_abs, mean, scale}")
    max_abs, mean, scale = (_float_array_attr(v[k]) for k in ("max_abs", "mean", "scale"))
    _check(len(max_abs) == len(mean) == len(scale), "needs arrays of one length")
    _check(bool(np.all(max_abs >= 0) and np.all(scale > 0)), "needs max_abs >= 0 and scale > 0")
    pipe = make_pipeline(MaxAbsScaler(), StandardScaler())
    n = len(mean)
    first, second = pipe[0], pipe[-1]
    first.max_abs_, first.scale_ = max_abs, np.where(max_abs == 0, 1.0, max_abs)
    second.mean_, second.scale_, second.var_ = mean, scale, scale**2
    for step in (first, second):
        step.n_features_in_, step.n_samples_seen_ = n, 1
    return pipe


def _encode_feature_names(names):
    return None if names is None else [str(n) for n in names]


def _decode_feature_names(v):
    if v is None:
        return None
    _names_attr(v)
    return np.asarray(v, dtype=object)


def _positive_real_attr(v):
    _check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
           and v > 0, "must be a positive number")
    return float(v)


def _range_test_attr(v):
    if v is None:
        return None
    _check(isinstance(v, dict) and set(v) == {"lr", "loss"}, "must be {lr, loss} or null")
    lrs, losses = _float_array_attr(v["lr"]), _float_array_attr(v["loss"])
    _check(len(lrs) == len(losses), "needs lr and loss of one length")
    return {"lr": lrs.tolist(), "loss": losses.tolist()}


def _encode_plain(value):
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return encode(value)


# kind -> (encode: fitted value -> JSON value, decode: JSON value -> checked fitted value).
# A decoder reads an untrusted file: it raises ValueError with what is wrong.
KINDS = {
    "count": (_encode_plain, _int_attr(0)),
    "positive": (_encode_plain, _int_attr(1)),
    "str": (_encode_plain, _str_attr),
    "optional_str": (_encode_plain, _opt_str_attr),
    "bool": (_encode_plain, _bool_attr),
    "names": (_encode_plain, _names_attr),
    "history": (_encode_plain, _history_attr),
    "cache_key": (_encode_plain, _key_attr),
    "optional_count": (_encode_plain, lambda v: None if v is None else _int_attr(0)(v)),
    "freeze_depth": (_encode_plain, _freeze_depth_attr),
    "scores": (_encode_plain, _scores_attr),
    "optional_positive_real": (_encode_plain,
                               lambda v: None if v is None else _positive_real_attr(v)),
    "range_test": (_encode_plain, _range_test_attr),
    "input_spec": (lambda spec: encode(spec.to_dict()), InputSpec.from_dict),
    "labels": (_encode_classes, _decode_classes),
    "feature_names": (_encode_feature_names, _decode_feature_names),
    "target_scaler": (_encode_target_scaler, _decode_target_scaler),
}


# ---------------------------------------------------------------------------------------------
# An estimator -> the body of a model folder's config, and its network's state dict
# ---------------------------------------------------------------------------------------------


def encode_estimator(estimator, *, lenient=False):
    """``(body, state)`` for :func:`sktransfer._model_folder.write_model_folder`: the versions,
    class name, hyperparameters and declared fitted attributes (``None`` when unfitted) of
    ``estimator``, and its network's state dict on the CPU (``None`` when unfitted).

    With ``lenient=True`` (a fitted model saved as starting weights), a hyperparameter the
    safe format cannot hold is written as its default value and named in the body's
    ``"params_defaulted"``, and a callable backbone by its resolved name: the fitted model does
    not depend on them (callbacks, a callable augmentation, a ``RandomState``).

    Raises
    ------
    ValueError
        If a hyperparameter (unless ``lenient``) or fitted attribute cannot be represented,
        naming it.
    """
    params, defaulted = _encode_params(estimator, lenient=lenient)
    fitted, state = _encode_fitted(estimator) if hasattr(estimator, "module_") else (None, None)
    body = {
        "versions": _versions(),
        "estimator": type(estimator).__name__,
        "params": params,
        "fitted": fitted,
    }
    if defaulted:
        body["params_defaulted"] = defaulted
    return body, state


def _encode_params(estimator, *, lenient=False):
    name = type(estimator).__name__
    params, defaulted = {}, []
    defaults = type(estimator)().get_params(deep=False) if lenient else {}
    for key, value in estimator.get_params(deep=False).items():
        if lenient and key == "backbone" and not is_buildable_backbone(value):
            value = getattr(estimator, "backbone_name_", value)
        try:
            params[key] = encode(value)
        except Unrepresentable as exc:
            if lenient:
                params[key] = encode(defaults[key])
                defaulted.append(key)
                continue
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
    if not lenient and not is_buildable_backbone(estimator.backbone):
        raise ValueError(
            f"Cannot save {name} with backbone={estimator.backbone!r}: it is not a registered, "
            "torchvision or 'timm:' backbone name, so load() could not rebuild it."
        )
    return params, defaulted


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


def _versions():
    import safetensors
    import sklearn
    import torch

    from . import __version__

    return {
        "sktransfer": __version__,
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "safetensors": safetensors.__version__,
    }
