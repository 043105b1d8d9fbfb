"""Stage splitting: a classification network becomes ordered, named stages.

Composed in order, the stages map an input batch to pooled features ``(n_samples,
num_features)``: the last stage always ends with global pooling (and any pre-logits layers),
and the original classification head is dropped. Pure PyTorch.

The rules for torchvision's families are listed in :mod:`sktransfer.backbones`.
timm models are cut at their ``feature_info`` modules when their forward is a plain sequence
of their children (checked on a probe input), else kept whole as one stage.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["head_prefixes", "seq", "split_children", "split_torchvision", "timm_stages"]


def seq(*modules):
    return nn.Sequential(*modules)


# ---------------------------------------------------------------------------------------------
# Cutting where the resolution drops
# ---------------------------------------------------------------------------------------------


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


# The grouping of a torchvision architecture does not depend on its weights: found once.
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
        stages["stem" if g == 0 else f"stage{g}"] = seq(*mods)
    return stages


def _split_tail(classifier):
    """(pre-logit modules, head) of a classifier that ends with a Linear layer."""
    mods = list(classifier.children()) if isinstance(classifier, nn.Sequential) else [classifier]
    return mods[:-1], mods[-1]


# ---------------------------------------------------------------------------------------------
# Glue modules
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# torchvision families: each returns (stages, num_features)
# ---------------------------------------------------------------------------------------------


def _resnet(name, model):
    stages = OrderedDict(
        stem=seq(model.conv1, model.bn1, model.relu, model.maxpool),
        layer1=model.layer1,
        layer2=model.layer2,
        layer3=model.layer3,
        layer4=seq(model.layer4, model.avgpool, nn.Flatten(1)),
    )
    return stages, model.fc.in_features


def _four_stages(features, tail):
    f = list(features.children())
    return OrderedDict(
        stem=seq(f[0], f[1]),
        stage2=seq(f[2], f[3]),
        stage3=seq(f[4], f[5]),
        stage4=seq(f[6], f[7], *tail),
    )


def _convnext(name, model):
    pre, head = _split_tail(model.classifier)
    return _four_stages(model.features, [model.avgpool, *pre]), head.in_features


def _swin(name, model):
    tail = [model.norm, _Permute(0, 3, 1, 2), model.avgpool, nn.Flatten(1)]
    return _four_stages(model.features, tail), model.head.in_features


def _vit(name, model):
    layers = list(model.encoder.layers.children())
    cuts = [round(len(layers) * i / 4) for i in range(5)]
    pre, head = _split_tail(model.heads)
    stages = OrderedDict(embed=_ViTEmbed(model))
    for i in range(4):
        mods = layers[cuts[i] : cuts[i + 1]]
        if i == 3:
            mods += [model.encoder.ln, _ClassToken(), *pre]
        stages[f"blocks{i + 1}"] = seq(*mods)
    return stages, head.in_features


def _densenet(name, model):
    children = list(model.features.children())
    tail = [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    return _resolution_stages(name, children, tail), model.classifier.in_features


def _squeezenet(name, model):
    children = list(model.features.children())
    tail = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    return _resolution_stages(name, children, tail), model.classifier[1].in_channels


def _mnasnet(name, model):
    children = list(model.layers.children())
    pre, head = _split_tail(model.classifier)
    tail = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), *pre]
    return _resolution_stages(name, children, tail), head.in_features


def _regnet(name, model):
    children = [model.stem, *model.trunk_output.children()]
    tail = [model.avgpool, nn.Flatten(1)]
    return _resolution_stages(name, children, tail), model.fc.in_features


def _shufflenet(name, model):
    children = [model.conv1, model.maxpool, model.stage2, model.stage3, model.stage4,
                model.conv5]
    tail = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    return _resolution_stages(name, children, tail), model.fc.in_features


def _features_classifier(name, model):
    """MobileNet, EfficientNet, VGG, AlexNet: ``features`` then ``classifier``."""
    children = list(model.features.children())
    pre, head = _split_tail(model.classifier)
    pool = getattr(model, "avgpool", nn.AdaptiveAvgPool2d(1))
    tail = [pool, nn.Flatten(1), *pre]
    return _resolution_stages(name, children, tail), head.in_features


_FAMILIES = {
    "resnet": _resnet,
    "resnext": _resnet,
    "wide": _resnet,  # wide_resnet
    "convnext": _convnext,
    "swin": _swin,
    "vit": _vit,
    "densenet": _densenet,
    "squeezenet": _squeezenet,
    "mnasnet": _mnasnet,
    "regnet": _regnet,
    "shufflenet": _shufflenet,
}


def split_torchvision(name, model):
    """``(stages, num_features)`` of the torchvision classification model ``name``."""
    family = name.split("_")[0].rstrip("0123456789")
    if family in _FAMILIES:
        return _FAMILIES[family](name, model)
    if hasattr(model, "features") and hasattr(model, "classifier"):
        return _features_classifier(name, model)
    return split_children(model)


# ---------------------------------------------------------------------------------------------
# Any module, and timm models
# ---------------------------------------------------------------------------------------------


def split_children(module):
    """Fallback: the module's own ``stages()`` if it has one, else its top-level children in
    order, a final Linear child being the head. Returns ``(stages, num_features or None)``."""
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


def head_prefixes(module, stages):
    """Names (state-dict keys) of the module's tensors that no stage uses: the head's."""
    used = {id(p) for s in stages.values() for p in s.parameters()}
    used |= {id(b) for s in stages.values() for b in s.buffers()}
    out = set()
    for k, v in module.state_dict(keep_vars=True).items():
        if id(v) not in used:
            out.add(k)
    return tuple(out)


class _TimmWhole(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _timm_children(model, feature_modules):
    """The model's children in order, those holding feature modules opened one level."""
    flat = []
    prefixes = {m.rsplit(".", 1)[0] for m in feature_modules if "." in m}
    for cname, child in model.named_children():
        if cname in prefixes:
            flat += [(f"{cname}.{n}", c) for n, c in child.named_children()]
        else:
            flat.append((cname, child))
    return flat


def _is_sequential(model, stages):
    """Whether the stages composed compute the model's pooled features (on a probe input)."""
    model.eval()
    probe = torch.zeros(2, 3, 64, 64)
    try:
        with torch.no_grad():
            a = seq(*stages.values())(probe)
            b = _TimmWhole(model)(probe)
        return a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    except Exception:  # noqa: BLE001 - any failure means "not sequential"
        return False
    finally:
        model.train()


def timm_stages(model):
    """Cut a timm model at its ``feature_info`` modules when its forward is sequential.

    The cut is checked on a probe input; models whose forward is not a plain sequence of
    their children get one stage holding the whole network.
    """
    feature_modules = [fi["module"] for fi in getattr(model, "feature_info", [])]
    pool_names = {"global_pool", "head", "fc", "classifier", "head_drop"}
    body = [(n, c) for n, c in _timm_children(model, feature_modules) if n not in pool_names]
    stages = OrderedDict()
    current, idx = [], 0
    for n, c in body:
        current.append(c)
        if n in feature_modules:
            stages["stem" if idx == 0 else f"stage{idx}"] = seq(*current)
            current, idx = [], idx + 1
    tail = [model.global_pool] if hasattr(model, "global_pool") else []
    if stages and tail:
        last = list(stages)[-1]
        stages[last] = seq(*stages[last], *current, *tail)
        if _is_sequential(model, stages):
            return stages
    return OrderedDict(features=_TimmWhole(model))
