"""TransferFeatures: a frozen pretrained backbone as a scikit-learn transformer."""

from __future__ import annotations

import numbers
import os

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import caching
from ._base import (
    TransferEstimatorMixin,
    amp_context,
    check_precision,
    inference_precision,
    precision_key,
    preserved_global_state,
    resolve_device,
)
from ._compat import HasMethods, Interval, StrOptions, _fit_context
from ._data import check_input, check_same_input, make_source
from .images import is_image_list

__all__ = ["TransferFeatures"]

# The backbone of a random (``weights=None``) feature extractor is drawn from this seed, so that
# its features are reproducible and can be cached like pretrained ones.
_RANDOM_INIT_SEED = 0


class TransferFeatures(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Features of a frozen pretrained network, for any scikit-learn model.

    The backbone runs in evaluation mode under ``torch.inference_mode()`` and is never trained.
    ``transform`` returns its pooled features, or the output of an earlier ``stage`` globally
    pooled over its spatial positions, so the result is always a 2-D array. Followed by a
    linear model it is the classic linear probe of transfer learning.

    Features are computed once per sample: they go through the same frozen-prefix activation
    cache as :class:`TransferClassifier` (see :mod:`sktransfer.caching`), so a linear probe in
    a ``GridSearchCV`` passes each image through the backbone once per process, and a
    ``TransferClassifier(freeze_depth="all")`` on the same images reuses them.

    Parameters
    ----------
    backbone : str or callable, default="efficientnet_lite0"
        A registered name (:func:`~sktransfer.list_backbones`), a torchvision classification
        model name, ``"timm:<name>"``, or a callable returning an ``nn.Module``.
    weights : str, path-like or None, default="DEFAULT"
        ``"DEFAULT"`` (or a torchvision weights name) for the pretrained weights, a local
        ``.safetensors``/``.pt``/``.pth`` file, or ``None`` for a random network (drawn from a
        fixed seed, so its features are reproducible).
    stage : str or None, default=None
        Name of the stage whose output is returned (``stage_names_`` lists them, input
        first). ``None`` means the last stage: the backbone's pooled features.
    input_size : int or None, default=None
        Resize every image to ``input_size x input_size`` (per batch, bilinear, antialiased).
        ``None`` keeps array images at their own size.
    input_shape : tuple or None, default=None
        ``(H, W)`` or ``(H, W, C)``: reshape each row of a 2-D X into an image.
    grayscale : {"repeat", "adapt"}, default="repeat"
        Single-channel images for an RGB backbone: repeat the channel three times, or adapt
        the stem convolution by summing its RGB weights.
    pooling : {"avg", "max"}, default="avg"
        Global pooling over the spatial positions (or tokens) of a stage output that has
        them. The last stage of a backbone already ends with the backbone's own pooling.
    batch_size : int, default=64
        Samples per forward pass.
    cache : bool, default=True
        Keep the computed features in the process-wide activation cache, so that transforming
        the same samples again costs nothing.
    memory : str, joblib.Memory or None, default=None
        Folder in which computed features are shared between processes.
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    precision : {"float32", "bfloat16", "float16"}, default="float32"
        Run the backbone under ``torch.autocast`` to this type (features are returned as
        float32 either way, and cached apart from float32 ones). ``"float16"`` needs CUDA;
        ``"bfloat16"`` also runs on the CPU.

    Attributes
    ----------
    module_ : torch.nn.Module
        The network: preprocessing and backbone stages (frozen, in evaluation mode).
    device_ : str
        Device the network lives on.
    stage_names_ : list of str
        The backbone's stages, input first.
    stage_ : str
        The stage whose output ``transform`` returns.
    n_frozen_stages_ : int
        Number of stages of the backbone (all of them frozen).
    n_features_out_ : int
        Number of features ``transform`` returns.
    n_features_in_ : int
        Values per sample seen in ``fit``.
    input_spec_ : dict
        Layout, per-sample shape and scaling of the input seen in ``fit``.
    backbone_name_ : str
        Name of the resolved backbone.
    weights_ : str or None
        Description of the weights loaded.

    See Also
    --------
    TransferClassifier : Fine-tune the backbone instead of keeping it frozen.
    sktransfer.caching.cache_info : Counters of the activation cache.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sktransfer import TransferFeatures
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(20, 16, 16, 3).astype(np.float32)
    >>> y = np.array([0, 1] * 10)
    >>> features = TransferFeatures("test_cnn", weights=None).fit(X)
    >>> features.transform(X).shape
    (20, 16)
    >>> features.stage_names_
    ['stem', 'block1', 'block2']
    >>> TransferFeatures("test_cnn", weights=None, stage="stem").fit_transform(X).shape
    (20, 8)
    >>> features.get_feature_names_out()[:2].tolist()
    ['transferfeatures0', 'transferfeatures1']
    >>> probe = make_pipeline(TransferFeatures("test_cnn", weights=None), LogisticRegression())
    >>> probe.fit(X, y).predict(X[:4]).shape
    (4,)
    """

    _parameter_constraints = {
        "backbone": [str, callable],
        "weights": [str, os.PathLike, None],
        "stage": [str, None],
        "input_size": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "input_shape": [tuple, list, None],
        "grayscale": [StrOptions({"repeat", "adapt"})],
        "pooling": [StrOptions({"avg", "max"})],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "cache": ["boolean"],
        "memory": [None, str, HasMethods(["cache"])],
        "device": [str],
        "precision": [StrOptions({"float32", "bfloat16", "float16"})],
    }

    # The network builder shared with the estimators reads these fine-tuning settings; for a
    # feature extractor they are fixed: the whole backbone is frozen and no BatchNorm statistic
    # ever changes.
    _build_network = TransferEstimatorMixin._build_network
    _channels_last = TransferEstimatorMixin._channels_last
    _input_kind = TransferEstimatorMixin._input_kind
    _image_size = TransferEstimatorMixin._image_size
    freeze_depth = "all"
    train_bn = False
    bn_momentum = None

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="DEFAULT",
        stage=None,
        input_size=None,
        input_shape=None,
        grayscale="repeat",
        pooling="avg",
        batch_size=64,
        cache=True,
        memory=None,
        device="auto",
        precision="float32",
    ):
        self.backbone = backbone
        self.weights = weights
        self.stage = stage
        self.input_size = input_size
        self.input_shape = input_shape
        self.grayscale = grayscale
        self.pooling = pooling
        self.batch_size = batch_size
        self.cache = cache
        self.memory = memory
        self.device = device
        self.precision = precision

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load the backbone and check that it accepts X.

        Parameters
        ----------
        X : array-like or list of paths or PIL images
            Images ``(N, H, W, C)``, ``(N, C, H, W)`` or ``(N, H, W)``; ``(N, F)`` vectors; or
            image files and PIL images, decoded to ``input_size`` (else the backbone's native
            size). An unreadable file raises a ``ValueError`` naming it.
        y : None
            Ignored.

        Returns
        -------
        self : TransferFeatures
            The fitted transformer.

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer import TransferFeatures
        >>> X = np.random.RandomState(0).rand(4, 16, 16, 3).astype(np.float32)
        >>> feats = TransferFeatures("test_cnn", weights=None).fit(X)
        >>> feats.stage_names_, feats.stage_, feats.n_features_out_
        (['stem', 'block1', 'block2'], 'block2', 16)
        """
        input_kind = self._input_kind()
        image_size = (
            self._image_size() if input_kind == "image" and is_image_list(X) else None
        )
        X, spec = check_input(
            X, input_kind=input_kind, input_shape=self.input_shape, estimator=self,
            image_size=image_size,
        )
        device = resolve_device(self.device)
        check_precision(self.precision, device)
        sample = make_source(X, spec).batch(np.arange(min(len(X), 2)))
        with preserved_global_state(device):
            if self.weights is None:
                torch.manual_seed(_RANDOM_INIT_SEED)
            net, bb, k, n_out = self._build_network(spec, 1, sample, weights=self.weights)
            names = list(net.stages._modules)
            depth = _stage_depth(self.stage, names)
            net.to(device).eval()
            if depth < len(names):
                with torch.inference_mode():
                    n_out = _pool(net.prefix(sample.to(device), depth), self.pooling).shape[1]
        self.module_ = net
        self.device_ = device
        self.backbone_name_ = bb.name
        self.weights_ = bb.weights
        self.stage_names_ = names
        self.stage_ = names[depth - 1]
        self.n_frozen_stages_ = k
        self.n_features_out_ = int(n_out)
        self.input_spec_ = dict(spec)
        self.n_features_in_ = int(np.prod(X.shape[1:]))
        self._cache_key = precision_key(caching.prefix_key(
            self, bb.name, bb.weights, spec, depth,
            _RANDOM_INIT_SEED if self.weights is None else None,
        ), self.precision)
        return self

    def transform(self, X):
        """Features of X.

        Parameters
        ----------
        X : array-like or list of paths or PIL images
            Inputs like those given to ``fit``.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out), dtype float32
            The backbone's features (or the pooled output of ``stage``).

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer import TransferFeatures
        >>> X = np.random.RandomState(0).rand(4, 16, 16, 3).astype(np.float32)
        >>> TransferFeatures("test_cnn", weights=None).fit(X).transform(X).shape
        (4, 16)
        >>> TransferFeatures("test_cnn", weights=None, stage="stem").fit_transform(X).shape
        (4, 8)
        """
        check_is_fitted(self, "module_")
        X = check_same_input(
            X,
            self.input_spec_,
            input_kind=self.input_spec_["kind"],
            input_shape=self.input_shape,
            estimator=self,
            resize=self.input_size is not None,
        )
        net = self.module_
        net.eval()
        depth = self.stage_names_.index(self.stage_) + 1
        src = make_source(X, self.input_spec_)
        precision = inference_precision(self.precision, self.device_)
        with preserved_global_state(self.device_), torch.inference_mode(), \
                amp_context(self.device_, precision):
            acts = None
            if self.cache:
                acts = caching.prefix_activations(
                    net, depth, src, key=self._cache_key, device=self.device_,
                    batch_size=self.batch_size, memory=self.memory,
                )
            if acts is not None:
                out = _pool(acts, self.pooling)
            else:
                out = torch.cat([
                    _pool(net.prefix(src.batch(idx).to(self.device_), depth), self.pooling)
                    .float().cpu()
                    for idx in np.array_split(
                        np.arange(len(src)), max(1, -(-len(src) // self.batch_size))
                    )
                ])
            return out.numpy()

    @property
    def _n_features_out(self):
        return self.n_features_out_

    # -- persistence ----------------------------------------------------------------------

    __getstate__ = TransferEstimatorMixin.__getstate__

    def __setstate__(self, state):
        module_state = state.pop("_module_state", None)
        TransferEstimatorMixin.__setstate__(self, state)
        if module_state is not None:
            from .persistence import rebuild_module

            self.module_ = rebuild_module(self, module_state)

    def _n_outputs_fitted(self):
        return 1

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _stage_depth(stage, names):
    """How many stages run to produce the output of ``stage``."""
    if stage is None:
        return len(names)
    if stage not in names:
        raise ValueError(
            f"stage={stage!r} is not a stage of this backbone; its stages are {names}."
        )
    return names.index(stage) + 1


def _pool(x, pooling):
    """Global pooling of a stage output to (N, features): over the spatial axes of
    (N, C, H, W), over the tokens of (N, L, D)."""
    if x.dim() == 2:
        return x
    dims = (1,) if x.dim() == 3 else tuple(range(2, x.dim()))
    return x.amax(dims) if pooling == "max" else x.mean(dims)
