"""Backbone registry: a name or a factory becomes a feature extractor split into stages.

A *resolved* :class:`Backbone` knows its ordered stages (the unit of ``freeze_depth``), the size
of the features its last stage returns, and the preprocessing it expects. This module is pure
PyTorch: it knows nothing about scikit-learn.

Stage rules for torchvision's families:

* ResNet, ResNeXt, Wide ResNet: ``stem``, ``layer1`` ... ``layer4`` (torchvision's own names).
* ConvNeXt, Swin: ``stem`` (patch embedding and first stage), then ``stage2`` ... ``stage4``,
  each a downsampling layer with the blocks that follow it.
* ViT: ``embed`` (patch projection, class token, position embedding), then four equal groups of
  encoder blocks ``blocks1`` ... ``blocks4``.
* Every other convolutional family (MobileNet, EfficientNet, RegNet, DenseNet, VGG, AlexNet,
  SqueezeNet, ShuffleNet, MnasNet): a new stage starts where the spatial resolution drops, so
  ``stem``, ``stage1``, ``stage2``, ... follow the network's downsampling steps.

The last stage always ends with global pooling (and any pre-logits layers), so it returns
``(n_samples, num_features)``; the original classification head is dropped. The splitting lives
in :mod:`sktransfer._stages`, the reading of weights files in :mod:`sktransfer._weights`.
"""

from __future__ import annotations

import copy
import difflib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from ._stages import head_prefixes, seq, split_children
from ._weights import (
    is_path_like,
    load_state_into,
    load_weights_file,  # public here: sktransfer.backbones.load_weights_file
)
from ._zoo import timm_backbone, torchvision_backbone, torchvision_weights_status

__all__ = [
    "Backbone",
    "Preprocessing",
    "describe_backbones",
    "get_backbone",
    "list_backbones",
    "load_weights_file",
    "register_backbone",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """What a backbone expects of its input.

    Parameters
    ----------
    input_size : int or None
        Native square input size in pixels (``None``: any size, no default resize).
    mean, std : tuple of float or None
        Per-channel normalisation applied to images scaled to [0, 1].
    in_channels : int
        Number of input channels the first layer expects.

    Examples
    --------
    >>> from sktransfer import get_backbone
    >>> get_backbone("efficientnet_lite0", weights=None).preprocessing
    Preprocessing(input_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), in_channels=3)
    """

    input_size: int | None = None
    mean: tuple | None = None
    std: tuple | None = None
    in_channels: int = 3


@dataclass
class Backbone:
    """A feature extractor split into ordered, named stages.

    Attributes
    ----------
    name : str
        Registry name (or the factory's name).
    stages : OrderedDict of str to torch.nn.Module
        Stages from input to output. Composed in order they map an input batch to features of
        shape ``(n_samples, num_features)``.
    num_features : int or None
        Size of the features the last stage returns (``None``: found by a forward pass).
    preprocessing : Preprocessing
        Input size and normalisation the weights expect.
    input_kind : {"image", "vector"}
        Whether the backbone takes images ``(N, C, H, W)`` or vectors ``(N, F)``.
    weights : str or None
        Description of the weights loaded (``None`` for random initialisation).

    Examples
    --------
    Composed in order, the stages map images to pooled features:

    >>> import torch
    >>> from sktransfer import get_backbone
    >>> bb = get_backbone("test_cnn")
    >>> bb.stage_names, bb.input_kind, bb.num_features
    (['stem', 'block1', 'block2'], 'image', 16)
    >>> torch.nn.Sequential(*bb.stages.values())(torch.rand(2, 3, 16, 16)).shape
    torch.Size([2, 16])
    """

    name: str
    stages: "OrderedDict[str, nn.Module]"
    num_features: int | None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    input_kind: str = "image"
    weights: str | None = None

    @property
    def stage_names(self):
        """Names of the stages, input first.

        Examples
        --------
        >>> from sktransfer import get_backbone
        >>> get_backbone("resnet18").stage_names
        ['stem', 'layer1', 'layer2', 'layer3', 'layer4']
        """
        return list(self.stages)


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable[[], nn.Module]
    splitter: Callable | None
    preprocessing: Preprocessing
    input_kind: str
    default_weights: Callable[[], str] | None
    description: str


_REGISTRY: dict[str, _Entry] = {}
_LOCK = threading.Lock()


def register_backbone(
    name,
    factory,
    *,
    stages=None,
    input_kind="image",
    input_size=None,
    mean=None,
    std=None,
    in_channels=3,
    default_weights=None,
    description="",
    overwrite=False,
):
    """Register a backbone under a name usable as ``backbone=name``.

    Parameters
    ----------
    name : str
        The name estimators accept.
    factory : callable
        Called with no argument, returns a randomly initialised ``nn.Module``.
    stages : callable, default=None
        ``stages(module) -> (OrderedDict[str, nn.Module], num_features)``. By default the
        module's own ``stages()`` method is used if it has one, else its top-level children
        (a final ``nn.Linear`` child is taken as the head and dropped).
    input_kind : {"image", "vector"}, default="image"
        What the backbone consumes.
    input_size : int, default=None
        Native square image size.
    mean, std : tuple of float, default=None
        Normalisation of [0, 1]-scaled images.
    in_channels : int, default=3
        Channels the first layer expects.
    default_weights : callable, default=None
        Returns the path of the weights file that ``weights="DEFAULT"`` means.
    description : str, default=""
        One line shown by :func:`describe_backbones` and ``sktransfer backbones``.
    overwrite : bool, default=False
        Replace an existing registration of the same name.

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer import register_backbone, get_backbone
    >>> def tiny():
    ...     return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    >>> register_backbone("tiny_mlp_doc", tiny, input_kind="vector", overwrite=True)
    >>> get_backbone("tiny_mlp_doc").stage_names
    ['0', '1', '2']
    """
    if input_kind not in ("image", "vector"):
        raise ValueError(f"input_kind must be 'image' or 'vector', got {input_kind!r}.")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}.")
    with _LOCK:
        if name in _REGISTRY and not overwrite:
            raise ValueError(
                f"A backbone named {name!r} is already registered; pass overwrite=True to "
                "replace it."
            )
        _REGISTRY[name] = _Entry(
            name=name,
            factory=factory,
            splitter=stages,
            preprocessing=Preprocessing(
                input_size=input_size,
                mean=None if mean is None else tuple(mean),
                std=None if std is None else tuple(std),
                in_channels=in_channels,
            ),
            input_kind=input_kind,
            default_weights=default_weights,
            description=description,
        )


def _torchvision_names():
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _check_source(source):
    if source not in ("all", "registered", "torchvision"):
        raise ValueError(
            f"source must be 'all', 'registered' or 'torchvision', got {source!r}."
        )


def list_backbones(source="all"):
    """Names accepted as ``backbone=``.

    Parameters
    ----------
    source : {"all", "registered", "torchvision"}, default="all"
        Which names to list. ``timm:<name>`` backbones are listed by ``timm.list_models()``.

    Returns
    -------
    names : list of str
        Sorted names.

    Examples
    --------
    >>> from sktransfer import list_backbones
    >>> "resnet18" in list_backbones() and "efficientnet_lite0" in list_backbones()
    True
    """
    _check_source(source)
    names = []
    if source in ("all", "registered"):
        names += list(_REGISTRY)
    if source in ("all", "torchvision"):
        names += _torchvision_names()
    return sorted(set(names))


def _offline(path_of_default):
    """"offline" when the default weights file is on this machine, else "missing"."""
    try:
        return "offline" if os.path.isfile(path_of_default()) else "missing"
    except Exception:  # noqa: BLE001 - a default_weights callable that fails: not here
        return "missing"


def describe_backbones(source="all"):
    """Describe the backbones :func:`list_backbones` names, and whether their weights are here.

    Nothing is downloaded or built: the availability of the default pretrained weights is
    found by looking for their file (torch.hub's cache for torchvision models).

    Parameters
    ----------
    source : {"all", "registered", "torchvision"}, default="all"
        Which backbones to describe: the registered ones (``source="sktransfer"`` in the rows),
        torchvision's classification models, or both.

    Returns
    -------
    rows : list of dict
        One dict per backbone, registered ones first, each group sorted by name, with keys

        - ``"name"``: what ``backbone=`` accepts;
        - ``"source"``: ``"sktransfer"`` (registered) or ``"torchvision"``;
        - ``"weights"``: ``"offline"`` when the default pretrained weights
          (``weights="DEFAULT"``) are on this machine, ``"missing"`` when they would need a
          download (or a local file), ``None`` when there are none (random initialisation
          only);
        - ``"description"``: one line.

        The stage names need the network built: ``get_backbone(name).stage_names``.

    Examples
    --------
    >>> from sktransfer.backbones import describe_backbones
    >>> rows = {row["name"]: row for row in describe_backbones()}
    >>> rows["test_cnn"]["source"], rows["test_cnn"]["weights"]
    ('sktransfer', None)
    >>> rows["resnet18"]["source"], rows["resnet18"]["weights"] in ("offline", "missing")
    ('torchvision', True)
    >>> registered = {row["name"]: row for row in describe_backbones("registered")}
    >>> registered["efficientnet_lite0"]["weights"] in ("offline", "missing")
    True
    """
    _check_source(source)
    rows = []
    if source in ("all", "registered"):
        for entry in sorted(_REGISTRY.values(), key=lambda e: e.name):
            weights = None if entry.default_weights is None else _offline(entry.default_weights)
            rows.append({"name": entry.name, "source": "sktransfer", "weights": weights,
                         "description": entry.description})
    if source in ("all", "torchvision"):
        rows += [
            {"name": name, "source": "torchvision",
             "weights": torchvision_weights_status(name),
             "description": "torchvision classification model"}
            for name in _torchvision_names()
            if name not in _REGISTRY
        ]
    return rows


def _close_matches(name):
    pool = list_backbones()
    close = difflib.get_close_matches(str(name), pool, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return hint


def _resolve_zoo(name, weights):
    """A torchvision model, or ``timm:<name>``."""
    if name.startswith("timm:"):
        built = timm_backbone(name[len("timm:") :], weights)
    else:
        built = torchvision_backbone(name, weights)
    pre = Preprocessing(**built.preprocessing)
    return Backbone(name, built.stages, built.num_features, pre, "image", built.described)


# Pretrained backbones built in this process, kept pristine and handed out as deep copies: a
# grid search builds the same network for every fit, and a copy costs a fraction of building
# the network and reading its weights file again. Keyed by the registry entry and the weights
# file's path, size and modification time; the most recent few only.
_BUILT: OrderedDict = OrderedDict()
_BUILT_MAX = 2
_BUILT_LOCK = threading.Lock()


def _file_key(path):
    try:
        st = os.stat(path)
    except OSError:
        return None  # load_weights_file reports it
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def _registered_weights_path(entry, weights):
    """The weights file that ``weights`` means for a registered backbone (None: random)."""
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "DEFAULT":
        if entry.default_weights is None:
            raise ValueError(
                f"Backbone {entry.name!r} has no default pretrained weights; pass a "
                "weights file path or weights=None."
            )
        return entry.default_weights()
    if is_path_like(weights):
        return weights
    raise ValueError(
        f"Unknown weights {weights!r} for {entry.name!r}: use 'DEFAULT', a local "
        "file path, or None."
    )


def _built_key(entry, weights, path):
    """The key of a pretrained build in ``_BUILT``, or None when it is not to be kept."""
    if path is None or _REGISTRY.get(entry.name) is not entry:
        return None
    file_key = _file_key(path)
    return None if file_key is None else (entry.name, str(weights), file_key)


def _built_copy(key, entry):
    """A copy of the backbone kept under ``key``, or None."""
    with _BUILT_LOCK:
        owner, built = _BUILT.get(key, (None, None))
        if owner is not entry:  # nothing, or a backbone registered again under the same name
            return None
        _BUILT.move_to_end(key)
    return copy.deepcopy(built)


def _keep_built(key, entry, backbone):
    with _BUILT_LOCK:
        _BUILT[key] = (entry, copy.deepcopy(backbone))
        while len(_BUILT) > _BUILT_MAX:
            _BUILT.popitem(last=False)


def _resolve_registered(entry, weights):
    path = _registered_weights_path(entry, weights)
    key = _built_key(entry, weights, path)
    if key is not None:
        built = _built_copy(key, entry)
        if built is not None:
            return built
    module = entry.factory()
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"The factory of backbone {entry.name!r} returned {type(module).__name__}, "
            "not a torch.nn.Module."
        )
    splitter = entry.splitter if entry.splitter is not None else split_children
    stages, nf = splitter(module)
    described = None
    if path is not None:
        state = load_weights_file(path)
        load_state_into(module, state, repr(str(path)), head_prefixes(module, stages))
        described = str(weights) if weights != "DEFAULT" else f"DEFAULT ({path})"
    backbone = Backbone(
        entry.name, OrderedDict(stages), nf, entry.preprocessing, entry.input_kind, described
    )
    if key is not None:
        _keep_built(key, entry, backbone)
    return backbone


def get_backbone(backbone, weights=None):
    """Build and split a backbone.

    Parameters
    ----------
    backbone : str or callable
        A registered name, a torchvision classification model name, ``"timm:<name>"``, or a
        callable returning an ``nn.Module``.
    weights : str, path-like or None, default=None
        ``"DEFAULT"`` or a named torchvision weights enum member; a local ``.safetensors`` or
        ``.pt``/``.pth`` file (read with ``weights_only=True``); ``None`` for random init.

    Returns
    -------
    backbone : Backbone
        The stages, feature size and preprocessing.

    Examples
    --------
    >>> from sktransfer import get_backbone
    >>> get_backbone("resnet18").stage_names
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4']
    >>> get_backbone("test_cnn").stage_names
    ['stem', 'block1', 'block2']
    """
    if weights is not None and not isinstance(weights, (str, Path)):
        raise ValueError(
            f"weights must be a string, a path or None, got {type(weights).__name__}."
        )
    if isinstance(backbone, str):
        if backbone in _REGISTRY:
            return _resolve_registered(_REGISTRY[backbone], weights)
        if backbone.startswith("timm:") or backbone in _torchvision_names():
            return _resolve_zoo(backbone, weights)
        raise ValueError(
            f"Unknown backbone {backbone!r}.{_close_matches(backbone)} See "
            "sktransfer.list_backbones() for the names, use 'timm:<name>' for timm models, or "
            "pass a callable returning an nn.Module."
        )
    if callable(backbone):
        name = getattr(backbone, "__name__", type(backbone).__name__)
        probe = backbone()
        if not isinstance(probe, nn.Module):
            raise TypeError(
                f"backbone callable {name!r} returned {type(probe).__name__}, not an nn.Module."
            )
        kind = getattr(probe, "input_kind", None)
        if kind is None:
            first = next((m for m in probe.modules() if not list(m.children())), None)
            kind = "vector" if isinstance(first, (nn.Linear, nn.LazyLinear)) else "image"
        entry = _Entry(name, lambda: probe, None, Preprocessing(), kind, None, "")
        return _resolve_registered(entry, weights)
    raise ValueError(
        f"backbone must be a name or a callable returning an nn.Module, got "
        f"{type(backbone).__name__}."
    )


# ---------------------------------------------------------------------------------------------
# Built-in registrations
# ---------------------------------------------------------------------------------------------


def _test_cnn():
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            block1=nn.Sequential(
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()
            ),
            block2=nn.Sequential(
                nn.Conv2d(16, 16, 3, stride=2, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(1),
            ),
            fc=nn.Linear(16, 10),
        )
    )


def _test_mlp():
    return nn.Sequential(
        OrderedDict(
            layer1=nn.Sequential(nn.LazyLinear(32), nn.ReLU()),
            layer2=nn.Sequential(nn.Linear(32, 32), nn.ReLU()),
            fc=nn.Linear(32, 10),
        )
    )


register_backbone(
    "test_cnn",
    _test_cnn,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    description="tiny 3-stage CNN with BatchNorm, for tests and examples (random init)",
)
register_backbone(
    "test_mlp",
    _test_mlp,
    input_kind="vector",
    description="tiny 2-stage MLP on 2-D input, for tests and examples (random init)",
)


def _lite0_factory():
    from ._efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0()


def _lite0_stages(model):
    stages = OrderedDict(model.stages())
    last = list(stages)[-1]
    stages[last] = seq(stages[last], nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return stages, model.num_features


def _lite0_weights():
    from ._efficientnet_lite import lite0_weights_path

    return lite0_weights_path()


register_backbone(
    "efficientnet_lite0",
    _lite0_factory,
    stages=_lite0_stages,
    input_size=224,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    default_weights=_lite0_weights,
    description="EfficientNet-Lite0, ImageNet weights offline via sktransfer[lite0]",
)
