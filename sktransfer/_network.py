"""The network an estimator trains, and the one function that builds it. Pure PyTorch.

:func:`build_network` turns (backbone spec, input spec, number of outputs, freezing policy) into
a :class:`TransferNet`: preprocessing, the backbone's stages, a new linear head. ``fit``,
:class:`~sktransfer.TransferFeatures`, unpickling and :func:`sktransfer.load` all call it.
"""

from __future__ import annotations

import copy
import numbers
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._data import Preprocess
from ._depthwise import use_fast_depthwise
from ._freezing import apply_freezing, n_frozen_stages, set_frozen_eval
from ._model_folder import (
    SavedStages,
    check_backbone_name,
    is_model_folder,
    load_saved_stages,
    read_saved_stages,
)
from .backbones import _REGISTRY, get_backbone, list_backbones

__all__ = [
    "BuiltNetwork",
    "TransferNet",
    "batchnorm_policy",
    "build_network",
    "input_kind_of",
    "is_buildable_backbone",
    "load_fitted_state",
    "native_input_size",
]


class TransferNet(nn.Module):
    """``head(stages(preprocess(x)))`` with the first ``n_frozen`` stages frozen.

    ``start`` lets the same network train on cached activations: with ``start=k`` the input is
    taken to be the output of stage ``k - 1`` and only stages ``k..`` and the head run.
    """

    def __init__(self, preprocess, stages, head, *, n_frozen=0, train_bn=False, bn_momentum=0.1):
        super().__init__()
        self.preprocess = preprocess
        self.stages = nn.Sequential(OrderedDict(stages))
        self.head = head
        self.n_frozen = int(n_frozen)
        self.train_bn = bool(train_bn)
        self.start = 0
        apply_freezing(list(self.stages), self.n_frozen, bn_momentum=bn_momentum,
                       train_bn=self.train_bn)

    def refreeze(self, n_frozen, *, train_bn=False, bn_momentum=0.1):
        """Change the frozen depth (used by ``warm_start`` fits with a new ``freeze_depth``)."""
        self.n_frozen = int(n_frozen)
        self.train_bn = bool(train_bn)
        apply_freezing(list(self.stages), self.n_frozen, bn_momentum=bn_momentum,
                       train_bn=self.train_bn)

    def train(self, mode=True):
        super().train(mode)
        if mode:
            set_frozen_eval(list(self.stages), self.n_frozen, train_bn=self.train_bn)
        return self

    def prefix(self, x, k, flip=False):
        """Output of preprocessing and the first ``k`` stages (of the images flipped
        left-right with ``flip``)."""
        x = self.preprocess(x)
        if flip:
            x = torch.flip(x, dims=(-1,))
        for stage in list(self.stages)[:k]:
            x = stage(x)
        return x

    def features(self, x, start=0, flip=False):
        """Backbone features (before the head), from stage ``start`` on; ``flip`` flips the
        preprocessed images left-right (test-time augmentation)."""
        if start == 0:
            x = self.preprocess(x)
            if flip:
                x = torch.flip(x, dims=(-1,))
        for stage in list(self.stages)[start:]:
            x = stage(x)
        return x

    def forward(self, x, start=None, flip=False):
        return self.head(self.features(x, self.start if start is None else start, flip=flip))


def load_fitted_state(net, state, *, stage_names=None):
    """Load a fitted state dict (arrays or tensors) into a rebuilt network, strictly.

    Raises
    ------
    ValueError
        Naming missing and unexpected keys, wrong shapes, or stages that differ from
        ``stage_names`` (the backbone definition changed since the model was fitted).
    """
    state = {
        k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v, copy=True))
        for k, v in state.items()
    }
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [
        f"{k}: stored {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or extra or wrong:
        raise ValueError(
            "Stored weights do not match the architecture rebuilt from the hyperparameters: "
            f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shapes {wrong[:5]}. The file "
            "is corrupt or was written by an incompatible version."
        )
    if stage_names is not None and list(net.stages._modules) != list(stage_names):
        raise ValueError(
            f"The rebuilt backbone has stages {list(net.stages._modules)} but the model was "
            f"fitted with {list(stage_names)}: the backbone definition changed since it was saved."
        )
    net.load_state_dict(state, strict=True)
    return net


def frozen_prefix_is_exact(net, k):
    """Whether the first ``k`` stages give the same output in training as in evaluation."""
    return k > 0 and not net.train_bn


@torch.no_grad()
def dry_run(module, x):
    """One eval-mode forward (materialises lazy layers); returns the output batch."""
    was = module.training
    module.eval()
    try:
        return module(x)
    finally:
        module.train(was)


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------


def batchnorm_policy(batchnorm):
    """``batchnorm`` hyperparameter -> ``(train_bn, bn_momentum)`` of :class:`TransferNet`.

    ``"trained"``: BatchNorm layers of trained stages update their statistics with momentum
    0.1, frozen stages keep theirs (eval mode). ``"all"``: frozen stages' BatchNorm layers
    update theirs too. ``"checkpoint"``: trained layers keep the checkpoint's momentum. A float:
    ``"trained"`` with that momentum.

    Examples
    --------
    >>> from sktransfer._network import batchnorm_policy
    >>> batchnorm_policy("trained"), batchnorm_policy("all"), batchnorm_policy(0.3)
    ((False, 0.1), (True, 0.1), (False, 0.3))
    """
    if isinstance(batchnorm, str):
        policies = {"trained": (False, 0.1), "all": (True, 0.1), "checkpoint": (False, None)}
        if batchnorm not in policies:
            raise ValueError(
                f"batchnorm={batchnorm!r} is not understood: use 'trained', 'all', "
                "'checkpoint' or a momentum in [0, 1]."
            )
        return policies[batchnorm]
    if isinstance(batchnorm, numbers.Real) and not isinstance(batchnorm, bool) and (
        0 <= batchnorm <= 1
    ):
        return False, float(batchnorm)
    raise ValueError(
        f"batchnorm must be 'trained', 'all', 'checkpoint' or a momentum in [0, 1], got "
        f"{batchnorm!r}."
    )


@dataclass
class BuiltNetwork:
    """What :func:`build_network` returns: the network and what was resolved on the way."""

    net: TransferNet
    backbone_name: str
    weights: str | None
    n_frozen: int
    n_features: int

    @property
    def stage_names(self):
        return list(self.net.stages._modules)


def build_network(backbone, *, weights, spec, n_outputs, sample, freeze_depth=0, n_frozen=None,
                  batchnorm="trained", grayscale="repeat", input_size=None, fast_depthwise=True):
    """Resolve ``backbone`` and assemble preprocessing, its stages and a new linear head.

    Parameters
    ----------
    backbone : str or callable
        As accepted by :func:`sktransfer.get_backbone`.
    weights : str, path-like, SavedStages or None
        Pretrained weights (``None``: random initialisation, drawn from torch's global RNG);
        a folder written by :func:`sktransfer.save` (or :class:`SavedStages`) starts the
        backbone from that model's stages.
    spec : InputSpec
        The input the network will take.
    n_outputs : int
        Outputs of the new head.
    sample : torch.Tensor
        A raw input batch (two samples are enough) to check the backbone accepts it and to
        size the head.
    freeze_depth : int or "all", default=0
        Frozen stages, as the estimators' parameter (ignored when ``n_frozen`` is given).
    n_frozen : int, default=None
        Frozen stages, counted from the input (when rebuilding a fitted network).
    batchnorm : str or float, default="trained"
        See :func:`batchnorm_policy`.
    grayscale : {"repeat", "adapt"}, default="repeat"
        Single-channel images for an RGB backbone: repeated, or the stem adapted.
    input_size : int, default=None
        Square resize of every image inside the network.
    fast_depthwise : bool, default=True
        Swap in depthwise layers with a faster CPU weight gradient (not under torch.compile).

    Returns
    -------
    built : BuiltNetwork

    Examples
    --------
    >>> import torch
    >>> from sktransfer._network import build_network
    >>> from sktransfer._spec import InputSpec
    >>> spec = InputSpec("image", "nhwc", (16, 16, 3), "uint8", scale=255.0, channels=3)
    >>> sample = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    >>> built = build_network("test_cnn", weights=None, spec=spec, n_outputs=4, sample=sample,
    ...                       freeze_depth=-1)
    >>> built.stage_names, built.n_frozen, built.n_features, built.net.head.out_features
    (['stem', 'block1', 'block2'], 2, 16, 4)
    """
    bb = _resolve(backbone, weights)
    k = n_frozen_stages(freeze_depth, bb.stage_names) if n_frozen is None else int(n_frozen)
    if bb.input_kind != spec["kind"]:
        raise ValueError(f"Backbone {bb.name!r} takes {bb.input_kind} input.")
    in_channels = bb.preprocessing.in_channels
    if (bb.input_kind == "image" and grayscale == "adapt" and spec.get("channels") in (1, 2)
            and in_channels == 3):
        _adapt_stem_to_gray(bb.stages)
        in_channels = 1
    size = input_size
    if size is None and bb.name.startswith(("vit_",)) and bb.preprocessing.input_size:
        size = bb.preprocessing.input_size
    preprocess = Preprocess(
        spec, in_channels=in_channels, size=size, mean=bb.preprocessing.mean,
        std=bb.preprocessing.std, channels_last=_has_conv(bb),
    )
    n_features = _check_features(bb, preprocess, sample)
    train_bn, bn_momentum = batchnorm_policy(batchnorm)
    net = TransferNet(preprocess, bb.stages, nn.Linear(n_features, n_outputs), n_frozen=k,
                      train_bn=train_bn, bn_momentum=bn_momentum)
    if fast_depthwise:
        # Depthwise layers on small maps get a faster weight gradient on CPU (no other change).
        # Not under torch.compile: its graph breaks there tripled the compile time of Lite0.
        use_fast_depthwise(net.stages)
    return BuiltNetwork(net, bb.name, bb.weights, k, n_features)


def _resolve(backbone, weights):
    if weights is None:
        return get_backbone(backbone, weights=None)  # random init: draws from the global RNG
    if isinstance(weights, SavedStages) or is_model_folder(weights):
        # the stages of a saved model (or of a pretraining run in this fit): a random
        # backbone, drawn without touching the global RNG (the new head's initialisation must
        # not depend on it), then every stage loaded strictly; the saved head is dropped
        saved = weights if isinstance(weights, SavedStages) else read_saved_stages(weights)
        if isinstance(backbone, str) and backbone in _REGISTRY:
            check_backbone_name(saved, backbone, backbone)  # before building anything
        with torch.random.fork_rng(devices=[]):
            bb = get_backbone(backbone, weights=None)
        load_saved_stages(bb.stages, saved, backbone_name=bb.name, requested=backbone)
        bb.weights = saved.description
        return bb
    # Building a pretrained backbone draws random numbers (layers initialise before the weights
    # are loaded), or none at all when it comes from the process's store of built backbones:
    # either way the new head must see the same generator state.
    with torch.random.fork_rng(devices=[]):
        return get_backbone(backbone, weights=weights)


def _check_features(bb, preprocess, sample):
    """Run the sample through the stages; make the last stage return ``(N, features)``."""
    try:
        feats = dry_run(nn.Sequential(preprocess, *bb.stages.values()), sample)
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, IndexError, ValueError) as exc:
        raise ValueError(
            f"Backbone {bb.name!r} cannot process inputs of per-sample shape "
            f"{tuple(sample.shape[1:])} (after preprocessing: {exc}). Check the image size "
            "(set input_size=...), the channel layout, or image_shape."
        ) from exc
    if feats.dim() != 2:
        feats = feats.flatten(1)
        last = bb.stage_names[-1]
        bb.stages[last] = nn.Sequential(bb.stages[last], nn.Flatten(1))
    return int(feats.shape[1])


def _has_conv(bb):
    return bb.input_kind == "image" and any(
        isinstance(m, nn.Conv2d) for s in bb.stages.values() for m in s.modules()
    )


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


def input_kind_of(backbone):
    """``"image"`` or ``"vector"``: what ``backbone`` consumes (unknown names: image).

    Examples
    --------
    >>> from sktransfer._network import input_kind_of
    >>> input_kind_of("test_mlp"), input_kind_of("resnet18")
    ('vector', 'image')
    """
    if isinstance(backbone, str):
        entry = _REGISTRY.get(backbone)
        return entry.input_kind if entry is not None else "image"
    return get_backbone(backbone, weights=None).input_kind


def native_input_size(backbone, input_size=None):
    """Side that image files and PIL images are decoded to: ``input_size``, else the
    backbone's native input size.

    Examples
    --------
    >>> from sktransfer._network import native_input_size
    >>> native_input_size("efficientnet_lite0"), native_input_size("test_cnn", 32)
    (224, 32)
    """
    if input_size is not None:
        return int(input_size)
    if isinstance(backbone, str):
        entry = _REGISTRY.get(backbone)
        pre = entry.preprocessing if entry is not None else None
        name = backbone
    else:
        pre, name = None, getattr(backbone, "__name__", repr(backbone))
    if pre is None:
        pre = get_backbone(backbone, weights=None).preprocessing
    if pre.input_size is None:
        raise ValueError(
            f"Backbone {name!r} has no native input size, so image files and PIL images "
            "cannot be decoded to one: pass input_size=... (e.g. input_size=224)."
        )
    return int(pre.input_size)


def is_buildable_backbone(backbone):
    """Whether ``backbone`` is a name that can be rebuilt without running foreign code: a
    registered backbone, a torchvision model or ``"timm:<name>"``.

    Examples
    --------
    >>> from sktransfer._network import is_buildable_backbone
    >>> is_buildable_backbone("resnet18"), is_buildable_backbone(lambda: None)
    (True, False)
    """
    if not isinstance(backbone, str):
        return False
    return backbone.startswith("timm:") or backbone in list_backbones()
