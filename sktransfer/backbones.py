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
``(n_samples, num_features)``; the original classification head is dropped.
"""

from __future__ import annotations

import copy
import difflib
import os
import pickle
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

__all__ = [
    "Backbone",
    "Preprocessing",
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
        One line shown by ``list_backbones(verbose=True)`` and the command line.
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
    if source not in ("all", "registered", "torchvision"):
        raise ValueError(
            f"source must be 'all', 'registered' or 'torchvision', got {source!r}."
        )
    names = []
    if source in ("all", "registered"):
        names += list(_REGISTRY)
    if source in ("all", "torchvision"):
        names += _torchvision_names()
    return sorted(set(names))


def describe_backbones():
    """One dict per registered and torchvision backbone: name, source, description."""
    rows = [
        {"name": e.name, "source": "sktransfer", "description": e.description}
        for e in _REGISTRY.values()
    ]
    rows += [
        {"name": n, "source": "torchvision", "description": "torchvision classification model"}
        for n in _torchvision_names()
    ]
    return rows


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def _is_path_like(weights):
    if isinstance(weights, Path):
        return True
    if isinstance(weights, str):
        return (
            os.sep in weights
            or weights.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
            or os.path.exists(weights)
        )
    return False


def load_weights_file(path):
    """Read a state dict from a ``.safetensors`` file or a plain PyTorch weights file.

    ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` and nothing else:
    a pickle that carries code is refused, never executed.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
        The tensors, on CPU.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> from sktransfer.backbones import load_weights_file
    >>> folder = tempfile.mkdtemp()
    >>> state = torch.nn.Linear(3, 2).state_dict()
    >>> torch.save(state, os.path.join(folder, "w.pt"))
    >>> save_file(state, os.path.join(folder, "w.safetensors"))
    >>> sorted(load_weights_file(os.path.join(folder, "w.pt")))
    ['bias', 'weight']
    >>> loaded = load_weights_file(os.path.join(folder, "w.safetensors"))
    >>> torch.equal(loaded["weight"], state["weight"])
    True

    A pickle that would run code is refused:

    >>> class Payload:
    ...     def __reduce__(self):
    ...         return (print, ("this never runs",))
    >>> torch.save({"weight": Payload()}, os.path.join(folder, "evil.pt"))
    >>> load_weights_file(os.path.join(folder, "evil.pt"))
    Traceback (most recent call last):
    ...
    ValueError: Refused to load '...evil.pt': it is not a plain weights file ...
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"Weights file {str(path)!r} does not exist. Pass an existing .safetensors/.pt/"
            ".pth file, a weights name such as 'DEFAULT', or weights=None for random init."
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(
                f"Could not read safetensors weights {str(path)!r}: {exc}. The file is "
                "truncated or not a safetensors file."
            ) from exc
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"Refused to load {str(path)!r}: it is not a plain weights file (it holds "
                "Python objects that torch.load(weights_only=True) will not unpickle: loading "
                "it would run code). Save the weights with "
                "torch.save(model.state_dict(), path) or as .safetensors."
            ) from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise ValueError(
                f"Could not read weights {str(path)!r}: {exc}. The file is truncated or not a "
                "PyTorch weights file."
            ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(
            f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)."
        )
    return state


def _load_state_into(module, state, source, head_keys=()):
    """Strict load; only the original head's keys may be missing."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    missing_non_head = [k for k in missing if not any(k.startswith(h) for h in head_keys)]
    shape_errors = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing_non_head or unexpected or shape_errors:
        parts = []
        if missing_non_head:
            more = " ..." if len(missing_non_head) > 5 else ""
            parts.append(f"missing keys {missing_non_head[:5]}{more}")
        if unexpected:
            more = " ..." if len(unexpected) > 5 else ""
            parts.append(f"unexpected keys {unexpected[:5]}{more}")
        if shape_errors:
            parts.append(f"wrong shapes {shape_errors[:5]}")
        raise ValueError(
            f"Weights {source} do not match the architecture: {'; '.join(parts)}. Use weights "
            "saved from the same architecture, or weights=None for random init."
        )
    module.load_state_dict(state, strict=not missing)


def _hub_checkpoint(url):
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _download_state(url, what):
    cached = _hub_checkpoint(url)
    if os.path.isfile(cached):
        return load_weights_file(cached)
    try:
        return torch.hub.load_state_dict_from_url(
            url, progress=False, check_hash=True, weights_only=True, map_location="cpu"
        )
    except Exception as exc:  # URLError, socket errors, HTTP errors: all mean "not here"
        raise ValueError(
            f"Pretrained weights {what} are not available offline: looked for {cached!r} and "
            f"could not download {url} ({type(exc).__name__}: {exc}). Remedies: copy the file "
            "to that path (or set TORCH_HOME to a folder holding hub/checkpoints/), pass a "
            "local weights file as weights='path/to/file.pth', or use weights=None."
        ) from exc


# ---------------------------------------------------------------------------------------------
# Stage splitting
# ---------------------------------------------------------------------------------------------


def _seq(*modules):
    return nn.Sequential(*modules)


def _group_by_resolution(children, probe):
    """Indices of children grouped so that a new group starts where the resolution drops."""
    groups, current, last = [], [], probe.shape[-1]
    with torch.no_grad():
        x = probe
        for i, child in enumerate(children):
            x = child(x)
            if x.shape[-1] < last and current:
                groups.append(current)
                current = []
            current.append(i)
            last = x.shape[-1]
    groups.append(current)
    return groups


_GROUPS_CACHE: dict[str, list] = {}


def _resolution_stages(name, children, tail, probe_size=64, in_channels=3):
    if name not in _GROUPS_CACHE:
        was_training = [c.training for c in children]
        for c in children:
            c.eval()
        probe = torch.zeros(1, in_channels, probe_size, probe_size)
        _GROUPS_CACHE[name] = _group_by_resolution(children, probe)
        for c, t in zip(children, was_training):
            c.train(t)
    groups = _GROUPS_CACHE[name]
    stages = OrderedDict()
    for g, idx in enumerate(groups):
        mods = [children[i] for i in idx]
        if g == len(groups) - 1:
            mods += list(tail)
        stages["stem" if g == 0 else f"stage{g}"] = _seq(*mods)
    return stages


def _split_tail(classifier):
    """(pre-logit modules, head) of a classifier that ends with a Linear layer."""
    mods = list(classifier.children()) if isinstance(classifier, nn.Sequential) else [classifier]
    return mods[:-1], mods[-1]


class _ViTEmbed(nn.Module):
    def __init__(self, vit):
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout
        self.image_size = vit.image_size
        self.patch_size = vit.patch_size

    def forward(self, x):
        n, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(
                f"ViT expects {self.image_size}x{self.image_size} images, got {h}x{w}; set "
                f"input_size={self.image_size}."
            )
        x = self.conv_proj(x).reshape(n, self.conv_proj.out_channels, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class _ClassToken(nn.Module):
    def forward(self, x):
        return x[:, 0]


class _Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def _split_torchvision(name, model):
    fam = name.split("_")[0].rstrip("0123456789")
    flat = nn.Flatten(1)
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        stages = OrderedDict(
            stem=_seq(model.conv1, model.bn1, model.relu, model.maxpool),
            layer1=model.layer1,
            layer2=model.layer2,
            layer3=model.layer3,
            layer4=_seq(model.layer4, model.avgpool, flat),
        )
        return stages, model.fc.in_features
    if fam in ("convnext", "swin"):
        f = list(model.features.children())
        if fam == "convnext":
            pre, head = _split_tail(model.classifier)
            tail = [model.avgpool, *pre]
        else:
            pre, head = [], model.head
            tail = [model.norm, _Permute(0, 3, 1, 2), model.avgpool, flat]
        stages = OrderedDict(
            stem=_seq(f[0], f[1]),
            stage2=_seq(f[2], f[3]),
            stage3=_seq(f[4], f[5]),
            stage4=_seq(f[6], f[7], *tail),
        )
        return stages, head.in_features
    if fam == "vit":
        layers = list(model.encoder.layers.children())
        n = len(layers)
        cuts = [round(n * i / 4) for i in range(5)]
        pre, head = _split_tail(model.heads)
        stages = OrderedDict(embed=_ViTEmbed(model))
        for i in range(4):
            mods = layers[cuts[i] : cuts[i + 1]]
            if i == 3:
                mods += [model.encoder.ln, _ClassToken(), *pre]
            stages[f"blocks{i + 1}"] = _seq(*mods)
        return stages, head.in_features
    if fam == "densenet":
        children = list(model.features.children())
        tail = [nn.ReLU(), nn.AdaptiveAvgPool2d(1), flat]
        return _resolution_stages(name, children, tail), model.classifier.in_features
    if fam == "squeezenet":
        children = list(model.features.children())
        conv = model.classifier[1]
        tail = [nn.AdaptiveAvgPool2d(1), flat]
        return _resolution_stages(name, children, tail), conv.in_channels
    if fam == "mnasnet":
        children = list(model.layers.children())
        pre, head = _split_tail(model.classifier)
        tail = [nn.AdaptiveAvgPool2d(1), flat, *pre]
        return _resolution_stages(name, children, tail), head.in_features
    if fam == "regnet":
        children = [model.stem, *model.trunk_output.children()]
        tail = [model.avgpool, flat]
        return _resolution_stages(name, children, tail), model.fc.in_features
    if fam == "shufflenet":
        children = [model.conv1, model.maxpool, model.stage2, model.stage3, model.stage4,
                    model.conv5]
        tail = [nn.AdaptiveAvgPool2d(1), flat]
        return _resolution_stages(name, children, tail), model.fc.in_features
    if hasattr(model, "features") and hasattr(model, "classifier"):
        # mobilenet, efficientnet, vgg, alexnet
        children = list(model.features.children())
        pre, head = _split_tail(model.classifier)
        pool = getattr(model, "avgpool", nn.AdaptiveAvgPool2d(1))
        tail = [pool, flat, *pre]
        return _resolution_stages(name, children, tail), head.in_features
    return _split_children(model)


def _split_children(module):
    """Fallback: top-level children in order; a final Linear child is the head."""
    if hasattr(module, "stages") and callable(module.stages):
        stages = OrderedDict(module.stages())
        return stages, getattr(module, "num_features", None)
    children = list(module.named_children())
    if not children:
        return OrderedDict(features=module), None
    num_features = None
    if isinstance(children[-1][1], nn.Linear) and len(children) > 1:
        num_features = children[-1][1].in_features
        children = children[:-1]
    return OrderedDict(children), num_features


def _head_prefixes(module, stages):
    """Names (state-dict prefixes) of the module's parameters that no stage uses: the head."""
    used = {id(p) for s in stages.values() for p in s.parameters()}
    used |= {id(b) for s in stages.values() for b in s.buffers()}
    out = set()
    for k, v in module.state_dict(keep_vars=True).items():
        if id(v) not in used:
            out.add(k)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------


def _close_matches(name):
    pool = list_backbones()
    close = difflib.get_close_matches(str(name), pool, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return hint


def _resolve_torchvision(name, weights):
    import torchvision.models as tvm

    builder = tvm.get_model_builder(name)
    enum = tvm.get_model_weights(name)
    chosen = None
    if isinstance(weights, str) and not _is_path_like(weights):
        wname = weights.split(".")[-1]
        if wname == "DEFAULT":
            chosen = enum.DEFAULT
        elif wname in enum.__members__:
            chosen = enum[wname]
        else:
            raise ValueError(
                f"Unknown weights {weights!r} for {name!r}. Valid: 'DEFAULT', "
                f"{', '.join(repr(m) for m in enum.__members__ if m != 'DEFAULT')}, a local "
                "file path, or None."
            )
    ref = chosen if chosen is not None else enum.DEFAULT
    tf = ref.transforms()
    crop = tf.crop_size[0] if hasattr(tf, "crop_size") else None
    kwargs = {}
    if chosen is not None:
        kwargs["num_classes"] = len(chosen.meta["categories"])
    model = builder(weights=None, **kwargs)
    described = None
    if chosen is not None:
        state = _download_state(chosen.url, f"{name} {chosen}")
        model.load_state_dict(state)
        described = str(chosen)
    stages, nf = _split_torchvision(name, model)
    if weights is not None and described is None:
        state = load_weights_file(weights)
        _load_state_into(model, state, repr(str(weights)), _head_prefixes(model, stages))
        described = str(weights)
    pre = Preprocessing(
        input_size=crop, mean=tuple(tf.mean), std=tuple(tf.std), in_channels=3
    )
    return Backbone(name, stages, nf, pre, "image", described)


def _resolve_timm(name, weights):
    try:
        import timm
        from timm.data import resolve_data_config
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
    described = None
    if weights is None or _is_path_like(weights):
        model = timm.create_model(name, pretrained=False)
        if weights is not None:
            state = load_weights_file(weights)
            _load_state_into(model, state, repr(str(weights)))
            described = str(weights)
    else:
        if weights not in ("DEFAULT", "pretrained") and not isinstance(weights, str):
            raise ValueError(f"Unknown weights {weights!r} for timm model {name!r}.")
        tag = None if weights in ("DEFAULT", "pretrained") else weights
        try:
            model = timm.create_model(
                name if tag is None else f"{name}.{tag}", pretrained=True
            )
        except Exception as exc:
            raise ValueError(
                f"Pretrained timm weights for {name!r} are not available offline "
                f"({type(exc).__name__}: {exc}). Remedies: set HF_HOME to a cache that holds "
                "them, pass a local weights file as weights='path/to/file.safetensors', or use "
                "weights=None."
            ) from exc
        described = f"timm:{name}" + (f".{tag}" if tag else " pretrained")
    cfg = resolve_data_config({}, model=model)
    model.reset_classifier(0)
    stages = _timm_stages(model)
    pre = Preprocessing(
        input_size=int(cfg["input_size"][-1]),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        in_channels=int(cfg["input_size"][0]),
    )
    return Backbone(f"timm:{name}", stages, int(model.num_features), pre, "image", described)


class _TimmWhole(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _timm_stages(model):
    """Cut a timm model at its ``feature_info`` modules when its forward is sequential.

    The cut is checked on a probe input; models whose forward is not a plain sequence of
    their children get one stage holding the whole network.
    """
    feature_modules = [fi["module"] for fi in getattr(model, "feature_info", [])]
    flat = []
    prefixes = {m.rsplit(".", 1)[0] for m in feature_modules if "." in m}
    for cname, child in model.named_children():
        if cname in prefixes:
            flat += [(f"{cname}.{n}", c) for n, c in child.named_children()]
        else:
            flat.append((cname, child))
    stages = OrderedDict()
    current, idx = [], 0
    pool_names = {"global_pool", "head", "fc", "classifier", "head_drop"}
    body = [(n, c) for n, c in flat if n not in pool_names]
    for n, c in body:
        current.append(c)
        if n in feature_modules:
            stages["stem" if idx == 0 else f"stage{idx}"] = _seq(*current)
            current, idx = [], idx + 1
    tail = [model.global_pool] if hasattr(model, "global_pool") else []
    if stages and tail:
        last = list(stages)[-1]
        stages[last] = _seq(*stages[last], *current, *tail)
        model.eval()
        probe = torch.zeros(2, 3, 64, 64)
        try:
            with torch.no_grad():
                a = _seq(*stages.values())(probe)
                b = _TimmWhole(model)(probe)
            if a.shape == b.shape and torch.allclose(a, b, atol=1e-5):
                model.train()
                return stages
        except Exception:  # noqa: BLE001 - any failure means "not sequential"
            pass
        model.train()
    return OrderedDict(features=_TimmWhole(model))


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


def _resolve_registered(entry, weights):
    path = None
    if weights is not None:
        if isinstance(weights, str) and weights == "DEFAULT":
            if entry.default_weights is None:
                raise ValueError(
                    f"Backbone {entry.name!r} has no default pretrained weights; pass a "
                    "weights file path or weights=None."
                )
            path = entry.default_weights()
        elif _is_path_like(weights):
            path = weights
        else:
            raise ValueError(
                f"Unknown weights {weights!r} for {entry.name!r}: use 'DEFAULT', a local "
                "file path, or None."
            )
    key = None
    if path is not None and _REGISTRY.get(entry.name) is entry:
        file_key = _file_key(path)
        if file_key is not None:
            key = (entry.name, str(weights), file_key)
            with _BUILT_LOCK:
                owner, built = _BUILT.get(key, (None, None))
                if owner is entry:  # not a backbone registered again under the same name
                    _BUILT.move_to_end(key)
            if owner is entry:
                return copy.deepcopy(built)
    module = entry.factory()
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"The factory of backbone {entry.name!r} returned {type(module).__name__}, "
            "not a torch.nn.Module."
        )
    if entry.splitter is not None:
        stages, nf = entry.splitter(module)
    else:
        stages, nf = _split_children(module)
    described = None
    if path is not None:
        state = load_weights_file(path)
        _load_state_into(module, state, repr(str(path)), _head_prefixes(module, stages))
        described = str(weights) if weights != "DEFAULT" else f"DEFAULT ({path})"
    backbone = Backbone(
        entry.name, OrderedDict(stages), nf, entry.preprocessing, entry.input_kind, described
    )
    if key is not None:
        with _BUILT_LOCK:
            _BUILT[key] = (entry, copy.deepcopy(backbone))
            while len(_BUILT) > _BUILT_MAX:
                _BUILT.popitem(last=False)
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
        if backbone.startswith("timm:"):
            return _resolve_timm(backbone[len("timm:") :], weights)
        if backbone in _torchvision_names():
            return _resolve_torchvision(backbone, weights)
        raise ValueError(
            f"Unknown backbone {backbone!r}.{_close_matches(backbone)} See "
            "sktransfer.list_backbones() for the names, use 'timm:<name>' for timm models, or "
            "pass a callable returning an nn.Module."
        )
    if callable(backbone):
        name = getattr(backbone, "__name__", type(backbone).__name__)
        entry = _Entry(name, backbone, None, Preprocessing(), "image", None, "")
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
    stages[last] = _seq(stages[last], nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
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
