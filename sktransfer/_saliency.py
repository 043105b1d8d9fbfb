"""Saliency maps of fitted estimators, through Captum: the attribution behind
:mod:`sktransfer.inspection`.

:func:`network_input` is the one place that knows how X reaches the network; :func:`explain`
computes the maps batch by batch inside :func:`inspecting`, which leaves the model as it found
it (hooks, ``requires_grad`` flags, train/eval modes, global state).
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import is_classifier
from sklearn.utils.validation import check_is_fitted

from ._base import TransferEstimatorMixin
from ._data import make_source
from ._runtime import preserved_global_state

METHODS = ("gradcam", "occlusion")
INSTALL = "pip install 'sktransfer[inspect]'"
DEFAULT_WINDOW = 0.25
# Grad-CAM on a feature map of fewer cells a side cannot localise (each cell sees most of the
# image): measured on EfficientNet-Lite0 at 64 px, whose last stages are 2x2.
_MIN_CELLS = 4


# ---------------------------------------------------------------------------------------------
# From X to the network, and back to pictures
# ---------------------------------------------------------------------------------------------


def network_input(estimator, X):
    """``(source, (H, W))``: X as ``predict`` takes it, turned into what ``module_`` eats.

    ``source.batch(indices)`` gives the raw batches of ``module_`` (which resizes them to
    ``input_size`` itself); ``(H, W)`` is the size of the images as given (``decode_size`` for
    files and PIL images; ``None`` for vectors), the resolution of the maps. The only place
    that knows how X reaches the network.
    """
    spec = estimator.input_spec_
    X = estimator._validate_predict_input(X)
    if spec.kind != "image":
        return make_source(X, spec), None
    if spec.layout == "flat":
        size = spec.image_shape[:2]
    elif spec.layout == "nchw":
        size = X.shape[2:4]
    else:  # "nhw", "nhwc"; decoded files and PIL images are (n, size, size, 3)
        size = X.shape[1:3]
    return make_source(X, spec), (int(size[0]), int(size[1]))


def displayable(raw, spec):
    """Raw batch -> float images in [0, 1], ``(n, H, W, 3)`` in colour or ``(n, H, W)`` gray."""
    x = raw.detach().cpu().to(torch.float32).numpy() / np.float32(spec.scale)
    if spec.layout == "flat":
        h, w, *c = spec.image_shape
        x = x.reshape(len(x), h, w, c[0] if c else 1)
    elif spec.layout == "nhw":
        x = x[..., np.newaxis]
    elif spec.layout == "nchw":
        x = np.moveaxis(x, 1, -1)
    if x.shape[-1] == 4:  # RGBA: the network drops alpha too
        x = x[..., :3]
    elif x.shape[-1] == 2:  # gray + alpha
        x = x[..., :1]
    if x.shape[-1] == 1:
        x = x[..., 0]
    return np.clip(x, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def check_estimator(estimator, images=True):
    """A fitted TransferClassifier or TransferRegressor (with an image backbone)."""
    if not isinstance(estimator, TransferEstimatorMixin):
        raise TypeError(
            "estimator must be a fitted TransferClassifier or TransferRegressor, got "
            f"{type(estimator).__name__}."
        )
    check_is_fitted(estimator, "module_")
    if images and estimator.input_spec_.kind != "image":
        raise ValueError(
            f"Saliency maps need an image backbone; this {type(estimator).__name__} takes "
            f"vectors (backbone {estimator.backbone_name_!r})."
        )


def check_method(method, layer, window):
    """The occlusion window (``None`` for Grad-CAM), once the options agree with the method."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; use one of {list(METHODS)}.")
    if method == "occlusion":
        if layer is not None:
            raise ValueError(
                "layer applies to method='gradcam' only: occlusion perturbs the input image."
            )
        window = DEFAULT_WINDOW if window is None else window
        if not (isinstance(window, numbers.Real) and 0 < window <= 1):
            raise ValueError(
                f"window must be a fraction of the image side in (0, 1], got {window!r}."
            )
    elif window is not None:
        raise ValueError("window applies to method='occlusion' only.")
    return window


def check_batch_size(estimator, batch_size):
    """Images per pass: ``batch_size``, else the estimator's prediction batch size."""
    if batch_size is None:
        return estimator._infer_batch_size()
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return int(batch_size)


def target_indices(estimator, target, n, name="target"):
    """Output index of each sample (int64 array), or ``None`` for the predicted class."""
    if is_classifier(estimator):
        if target is None:
            return None
        classes = estimator.classes_.tolist()
        lookup = {c: i for i, c in enumerate(classes)}
        values = np.asarray(target)
        if values.ndim > 1 or (values.ndim == 1 and len(values) != n):
            raise ValueError(
                f"{name} must be one label of classes_ or one label per sample ({n}), got "
                f"shape {values.shape}."
            )
        labels = [values.tolist()] * n if values.ndim == 0 else values.tolist()
        unknown = [v for v in dict.fromkeys(labels) if v not in lookup]
        if unknown:
            raise ValueError(
                f"{name} holds {unknown[0]!r}, which is not a class of this classifier; "
                f"classes_ is {classes}."
            )
        return np.array([lookup[v] for v in labels], dtype=np.int64)
    n_outputs = estimator.module_.head.out_features
    if target is None:
        if n_outputs != 1:
            raise ValueError(
                f"This regressor has {n_outputs} outputs: choose the one to explain with "
                f"target=0 ... {n_outputs - 1}."
            )
        target = 0
    if not isinstance(target, numbers.Integral) or isinstance(target, bool) or not (
        0 <= target < n_outputs
    ):
        raise ValueError(
            f"target must be the index of an output of this regressor, 0 ... {n_outputs - 1}; "
            f"got {target!r}."
        )
    return np.full(n, int(target), dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# The attribution
# ---------------------------------------------------------------------------------------------


def _import_captum():
    try:
        from captum import attr
    except ImportError as exc:
        raise ImportError(
            f"Saliency maps need Captum, which is not installed. Install it with {INSTALL} "
            "(or pip install captum)."
        ) from exc
    return attr


@contextlib.contextmanager
def inspecting(estimator):
    """``module_`` in eval mode with every parameter frozen (so that autograd records only
    what follows the explained layer); flags, modes and global state restored on exit."""
    net = estimator.module_
    flags = [(p, p.requires_grad) for p in net.parameters()]
    modes = [(m, m.training) for m in net.modules()]
    with preserved_global_state(estimator.device_), torch.inference_mode(False):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            net.eval()
            yield net
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            for m, mode in modes:
                m.training = mode


def _gradcam_layer(net, z, layer):
    """The module whose output map Grad-CAM weighs: in stage ``layer`` (default: the last
    stage that has one), the last module with a spatial ``(N, C, H, W)`` output before any
    global pooling."""
    names = list(net.stages._modules)
    if layer is not None and layer not in names:
        raise ValueError(
            f"layer={layer!r} is not a stage of this model; its stages are {names} "
            "(stage_names_)."
        )
    records, calls, hooks = [], Counter(), []

    def record(stage, module, inputs, output):
        calls[module] += 1
        first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        records.append((stage, module, first.shape if first is not None else None,
                        output.shape if isinstance(output, torch.Tensor) else None))

    for name, stage in net.stages.named_children():
        for module in stage.modules():
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: record(name, m, i, o)))
    try:
        with torch.no_grad():
            net.stages(z)
    finally:
        for hook in hooks:
            hook.remove()

    def is_map(module, in_shape, out_shape):
        if out_shape is None or len(out_shape) != 4 or calls[module] != 1:
            return False
        pooled = out_shape[-2] * out_shape[-1] == 1
        return not (pooled and in_shape is not None and len(in_shape) == 4
                    and in_shape[-2] * in_shape[-1] > 1)

    with_maps = {}
    for stage, module, in_shape, out_shape in reversed(records):
        if stage not in with_maps and is_map(module, in_shape, out_shape):
            with_maps[stage] = (module, tuple(out_shape[-2:]))
    if layer is None:
        layer = next((name for name in reversed(names) if name in with_maps), None)
        if layer is None:
            raise ValueError(
                "Grad-CAM needs a stage with a spatial feature map (N, C, H, W); this "
                "backbone has none. Use method='occlusion'."
            )
    elif layer not in with_maps:
        raise ValueError(
            f"Stage {layer!r} has no spatial feature map (N, C, H, W) for Grad-CAM; choose one "
            f"of {[n for n in names if n in with_maps]} or method='occlusion'."
        )
    module, cells = with_maps[layer]
    if min(cells) < _MIN_CELLS:
        finer = [n for n in names if n in with_maps and min(with_maps[n][1]) >= _MIN_CELLS]
        advice = f"layer={finer[-1]!r}" if finer else "a larger input_size"
        warnings.warn(
            f"Grad-CAM on stage {layer!r} weighs a {cells[0]}x{cells[1]} feature map at this "
            "input size: each cell sees most of the image, so the map cannot tell where in "
            f"the image the evidence lies. Use {advice}, or method='occlusion'.",
            UserWarning,
            stacklevel=4,
        )
    return module


def _scores(net, top=False):
    """The network after its preprocessing; with ``top=True`` only the output of the predicted
    class, so that one pass explains the prediction it makes. Inputs are brought back to the
    memory format of the preprocessing, the fast one (occlusion's perturbed batches lose it)."""
    fmt = torch.channels_last if net.preprocess.channels_last else torch.contiguous_format

    def forward(z):
        out = net.head(net.stages(z.contiguous(memory_format=fmt)))
        return out.gather(1, out.argmax(1, keepdim=True))[:, 0] if top else out

    return forward


def _attribute(attr, net, z, *, method, module, targets, window):
    """Maps ``(B, 1, h, w)``, positive evidence only, of one preprocessed batch."""
    if method == "gradcam":
        cam = attr.LayerGradCam(_scores(net, top=targets is None), module)
        return cam.attribute(z, target=targets, relu_attributions=True).detach()
    if targets is None:
        with torch.no_grad():
            targets = _scores(net)(z).argmax(1)
    side = tuple(int(s) for s in z.shape[-2:])
    win = tuple(max(1, round(window * s)) for s in side)
    strides = tuple(max(1, w // 2) for w in win)
    channels = int(z.shape[1])
    baselines = z.mean(dim=(2, 3), keepdim=True).expand_as(z).contiguous()  # mean colour
    maps = attr.Occlusion(_scores(net)).attribute(
        z, sliding_window_shapes=(channels, *win), strides=(channels, *strides),
        baselines=baselines, target=targets, perturbations_per_eval=max(1, 128 // len(z)),
    )
    return maps.sum(1, keepdim=True).clamp_min(0).detach()


def explain(estimator, source, size, targets, *, method, layer, window, batch_size,
            images=False):
    """Maps ``(n, H, W)`` in [0, 1] of the samples of ``source`` (``targets``: the output to
    explain for each, or ``None`` for the predicted class), and with ``images=True`` the images
    too, as :func:`displayable` gives them."""
    attr = _import_captum()
    spec = estimator.input_spec_
    device = estimator.device_
    n = len(source)
    maps = np.empty((n, *size), dtype=np.float32)
    shown = []
    module = None
    with inspecting(estimator) as net:
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            raw = source.batch(idx)
            if images:
                shown.append(displayable(raw, spec))
            with torch.no_grad():
                z = net.preprocess(raw.to(device))
            if method == "gradcam" and module is None:
                module = _gradcam_layer(net, z[:1], layer)
            t = None if targets is None else torch.as_tensor(targets[idx], device=device)
            batch_maps = _attribute(attr, net, z, method=method, module=module, targets=t,
                                    window=window)
            maps[idx] = _normalised(batch_maps, size)
    return (maps, np.concatenate(shown)) if images else maps


def _normalised(maps, size):
    """``(B, 1, h, w)`` -> ``(B, H, W)`` numpy, bilinear, each map scaled to a maximum of 1."""
    maps = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    maps = maps.clamp_min(0)
    top = maps.amax(dim=(1, 2), keepdim=True)
    maps = torch.where(top > 0, maps / top.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
    return maps.cpu().numpy()
