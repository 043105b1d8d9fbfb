"""Backbones from the model zoos: torchvision classification models and ``timm:<name>``.

Each is built, given its weights (a named pretrained set or a local file) and split into
stages (:mod:`sktransfer._stages`). Pure PyTorch; :mod:`sktransfer.backbones` wraps the result
in a :class:`~sktransfer.backbones.Backbone`.
"""

from __future__ import annotations

import difflib
import os
from typing import NamedTuple

from ._stages import head_prefixes, split_torchvision, timm_stages
from ._weights import (
    download_state,
    hub_checkpoint,
    is_path_like,
    load_state_into,
    load_weights_file,
)

__all__ = ["Built", "timm_backbone", "torchvision_backbone", "torchvision_weights_status"]


class Built(NamedTuple):
    """A zoo model split into stages, with what its weights expect of the input."""

    stages: object  # OrderedDict of str to nn.Module
    num_features: int
    preprocessing: dict  # keyword arguments of backbones.Preprocessing
    described: str | None  # the weights loaded (None: random initialisation)


def torchvision_weights_status(name):
    """"offline" when the default weights of torchvision model ``name`` are in torch.hub's
    cache, "missing" when they are not, None when the model has no pretrained weights."""
    import torchvision.models as tvm

    try:
        url = tvm.get_model_weights(name).DEFAULT.url
    except (ValueError, KeyError, AttributeError):  # no weights enum: random init only
        return None
    return "offline" if os.path.isfile(hub_checkpoint(url)) else "missing"


def _torchvision_weights_enum(name, weights, enum):
    """The member of ``enum`` that ``weights`` names, or None (a file, or random init)."""
    if not isinstance(weights, str) or is_path_like(weights):
        return None
    wname = weights.split(".")[-1]
    if wname == "DEFAULT":
        return enum.DEFAULT
    if wname in enum.__members__:
        return enum[wname]
    raise ValueError(
        f"Unknown weights {weights!r} for {name!r}. Valid: 'DEFAULT', "
        f"{', '.join(repr(m) for m in enum.__members__ if m != 'DEFAULT')}, a local "
        "file path, or None."
    )


def torchvision_backbone(name, weights):
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name)
    chosen = _torchvision_weights_enum(name, weights, enum)
    tf = (chosen if chosen is not None else enum.DEFAULT).transforms()
    kwargs = {} if chosen is None else {"num_classes": len(chosen.meta["categories"])}
    model = tvm.get_model_builder(name)(weights=None, **kwargs)
    described = None
    if chosen is not None:
        model.load_state_dict(download_state(chosen.url, f"{name} {chosen}"))
        described = str(chosen)
    stages, nf = split_torchvision(name, model)
    if weights is not None and described is None:
        state = load_weights_file(weights)
        load_state_into(model, state, repr(str(weights)), head_prefixes(model, stages))
        described = str(weights)
    pre = dict(
        input_size=tf.crop_size[0] if hasattr(tf, "crop_size") else None,
        mean=tuple(tf.mean),
        std=tuple(tf.std),
        in_channels=3,
    )
    return Built(stages, nf, pre, described)


def _import_timm(name):
    try:
        import timm
    except ImportError as exc:
        raise ValueError(
            f"backbone={'timm:' + name!r} needs timm; install it with pip install "
            "'sktransfer[timm]'."
        ) from exc
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(
            f"Unknown timm model {name!r}."
            + (f" Did you mean {', '.join(map(repr, close))}?" if close else "")
            + " See timm.list_models()."
        )
    return timm


def _timm_pretrained(timm, name, weights):
    """``(model, described)`` with the pretrained weights ``weights`` names."""
    if weights not in ("DEFAULT", "pretrained") and not isinstance(weights, str):
        raise ValueError(f"Unknown weights {weights!r} for timm model {name!r}.")
    tag = None if weights in ("DEFAULT", "pretrained") else weights
    try:
        model = timm.create_model(name if tag is None else f"{name}.{tag}", pretrained=True)
    except Exception as exc:
        raise ValueError(
            f"Pretrained timm weights for {name!r} are not available offline "
            f"({type(exc).__name__}: {exc}). Remedies: set HF_HOME to a cache that holds "
            "them, pass a local weights file as weights='path/to/file.safetensors', or use "
            "weights=None."
        ) from exc
    return model, f"timm:{name}" + (f".{tag}" if tag else " pretrained")


def timm_backbone(name, weights):
    timm = _import_timm(name)
    from timm.data import resolve_data_config

    described = None
    if weights is None or is_path_like(weights):
        model = timm.create_model(name, pretrained=False)
        if weights is not None:
            load_state_into(model, load_weights_file(weights), repr(str(weights)))
            described = str(weights)
    else:
        model, described = _timm_pretrained(timm, name, weights)
    cfg = resolve_data_config({}, model=model)
    model.reset_classifier(0)
    pre = dict(
        input_size=int(cfg["input_size"][-1]),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        in_channels=int(cfg["input_size"][0]),
    )
    return Built(timm_stages(model), int(model.num_features), pre, described)
