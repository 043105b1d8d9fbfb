"""TransferFeatures: a frozen pretrained backbone as a scikit-learn transformer."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import caching
from ._compat import StrOptions, _fit_context
from ._data import make_source
from ._estimator import _BACKBONE_CONSTRAINTS, BackboneEstimatorMixin
from ._runtime import (
    batched_features,
    preserved_global_state,
    resolve_device,
    seeded_global_state,
)
from ._training import amp_context, check_precision, inference_precision

__all__ = ["TransferFeatures"]

# The backbone of a random (``weights=None``) feature extractor is drawn from this seed, so that
# its features are reproducible and can be cached like pretrained ones.
_RANDOM_INIT_SEED = 0


class TransferFeatures(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BackboneEstimatorMixin,
                       BaseEstimator):
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
        ``.safetensors``/``.pt``/``.pth`` file, a model folder written by
        :func:`~sktransfer.save` or a pretrainer's ``save_weights`` (its backbone stages), or
        ``None`` for a random network (drawn from a fixed seed, so its features are
        reproducible).
    stage : str or None, default=None
        Name of the stage whose output is returned (``stage_names_`` lists them, input
        first). ``None`` means the last stage: the backbone's pooled features.
    input_size : int or None, default=None
        Resize every image to ``input_size x input_size`` (per batch, bilinear, antialiased).
        ``None`` keeps array images at their own size.
    image_shape : tuple or None, default=None
        ``(H, W)`` or ``(H, W, C)``: each row of a 2-D X is an image of this shape.
    grayscale : {"repeat", "adapt"}, default="repeat"
        Single-channel images for an RGB backbone: repeat the channel three times, or adapt
        the stem convolution by summing its RGB weights.
    pooling : {"avg", "max"}, default="avg"
        Global pooling over the spatial positions (or tokens) of a stage output that has
        them. The last stage of a backbone already ends with the backbone's own pooling.
    batch_size : int, default=64
        Samples per forward pass.
    cache : bool, str, path-like or joblib.Memory, default=True
        Keep the computed features in the process-wide activation cache, so that transforming
        the same samples again costs nothing; a folder (or a ``joblib.Memory``) also shares
        them between processes.
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
    input_spec_ : InputSpec
        Layout, per-sample shape and scaling of the input seen in ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of X, set only when X is a DataFrame with string column names.
    cache_key_ : str
        Key of the features in the activation cache.
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
        **_BACKBONE_CONSTRAINTS,
        "stage": [str, None],
        "pooling": [StrOptions({"avg", "max"})],
    }
    _persisted = {**BackboneEstimatorMixin._persisted, "stage_": "str",
                  "cache_key_": "cache_key"}

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="DEFAULT",
        stage=None,
        input_size=None,
        image_shape=None,
        grayscale="repeat",
        pooling="avg",
        batch_size=64,
        cache=True,
        device="auto",
        precision="float32",
    ):
        self.backbone = backbone
        self.weights = weights
        self.stage = stage
        self.input_size = input_size
        self.image_shape = image_shape
        self.grayscale = grayscale
        self.pooling = pooling
        self.batch_size = batch_size
        self.cache = cache
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
        X, spec, feature_names = self._validate_fit_input(X)
        device = resolve_device(self.device)
        check_precision(self.precision, device)
        sample = make_source(X, spec).batch(np.arange(min(len(X), 2)))
        with seeded_global_state(_RANDOM_INIT_SEED, device):
            built = self._build_network(spec, 1, sample, weights=self.weights)
            net = built.net
            names = built.stage_names
            depth = _stage_depth(self.stage, names)
            net.to(device).eval()
            n_out = built.n_features
            if depth < len(names):
                with torch.inference_mode():
                    n_out = _pool(net.prefix(sample.to(device), depth), self.pooling).shape[1]
        self.module_ = net
        self.device_ = device
        self.backbone_name_ = built.backbone_name
        self.weights_ = built.weights
        self.stage_names_ = names
        self.stage_ = names[depth - 1]
        self.n_frozen_stages_ = built.n_frozen
        self.n_features_out_ = int(n_out)
        self._set_input_attrs(X, spec, feature_names)
        self.cache_key_ = self._prefix_key(built.backbone_name, built.weights, spec, depth,
                                           _RANDOM_INIT_SEED if self.weights is None else None)
        return self

    def _network_options(self):
        # a feature extractor freezes the whole backbone; no BatchNorm statistic ever changes
        return {"freeze_depth": "all", "batchnorm": "checkpoint", "fast_depthwise": True}

    def _n_outputs_fitted(self):
        return 1

    @classmethod
    def _check_persisted(cls, attrs):
        super()._check_persisted(attrs)
        if attrs["stage_"] not in attrs["stage_names_"]:
            raise ValueError("stage_ is not one of stage_names_")

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
        X = self._validate_predict_input(X)
        net = self.module_
        net.eval()
        depth = self.stage_names_.index(self.stage_) + 1
        src = make_source(X, self.input_spec_)
        precision = inference_precision(self.precision, self.device_)
        with preserved_global_state(self.device_), torch.inference_mode(), \
                amp_context(self.device_, precision):
            acts = None
            if self.cache is not False:
                acts = caching.prefix_activations(
                    net, depth, src, key=self.cache_key_, device=self.device_,
                    batch_size=self.batch_size, memory=self._memory(),
                )
            if acts is not None:
                return _pool(acts, self.pooling).numpy()
            return batched_features(lambda x: _pool(net.prefix(x, depth), self.pooling), src,
                                    self.device_, self.batch_size)

    @property
    def _n_features_out(self):
        return self.n_features_out_

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
