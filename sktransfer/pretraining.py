"""Stage one of transfer learning on your own data: self-supervised pretraining estimators.

A pretrainer trains a backbone on images (or vectors) without labels, then serves as the
starting point of fine-tuning: ``save_weights(path)`` writes a model folder that
``TransferClassifier(backbone, weights=path)`` (or any estimator's ``weights=``) starts from, and
``transform`` returns the backbone's embeddings, so a pretrainer followed by a linear model is a
:class:`~sklearn.pipeline.Pipeline`.

* :class:`ContrastivePretrainer` (SimCLR): two random views of each image, a projection head,
  the NT-Xent loss.
* :class:`AutoencoderPretrainer` (masked autoencoder): random patches of each image blanked, a
  light decoder on the backbone's last feature map reconstructs them.

Both train through the same machinery as fine-tuning: the same network builder (``weights``,
``freeze_depth``), seeding from ``random_state``, the epoch table and progress bar of
``verbose``, a ``FloatingPointError`` naming epoch and batch when the loss stops being finite,
and Ctrl-C keeping the last completed epoch. The projection head and the decoder are kept with
the model (``sktransfer.save`` and pickle store them) but never transferred: ``weights=`` loads
the backbone's stages only.

``TransferClassifier(unlabeled="contrastive")`` runs the same stage one inside ``fit``, on every
row of X, before fine-tuning on the rows whose label is not -1.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._base import _BACKBONE_CONSTRAINTS, BackboneEstimatorMixin
from ._compat import Interval, StrOptions, _fit_context
from ._data import ArrayDataset, make_source
from ._model_folder import write_model_folder
from ._pretext import (
    ContrastiveTask,
    PassThroughLoss,
    PerImageViews,
    PretextModel,
    ReconstructionTask,
    attach_decoder,
    attach_projection_head,
)
from ._runtime import (
    batched_features,
    check_finite_output,
    preserved_global_state,
    resolve_device,
    seed_from,
    seeded_global_state,
)
from ._state_codec import encode_estimator
from ._training import (
    TrainingConfig,
    history_rows,
    make_skorch_net,
    release_training_state,
    run_training,
    training_callbacks,
)

__all__ = ["AutoencoderPretrainer", "ContrastivePretrainer"]

# AdamW, as self-supervised recipes train from scratch; a little decoupled weight decay.
_WEIGHT_DECAY = 1e-4

_PRETRAINING_CONSTRAINTS = {
    **{k: v for k, v in _BACKBONE_CONSTRAINTS.items() if k not in ("cache", "precision")},
    "freeze_depth": [
        StrOptions({"all"}),
        Interval(numbers.Integral, None, None, closed="neither"),
    ],
    "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
    "lr": [Interval(numbers.Real, 0, None, closed="neither")],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "callbacks": [list, None],
}


class _Pretrainer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BackboneEstimatorMixin,
                  BaseEstimator):
    """What both pretrainers share: the fit recipe, ``transform`` and ``save_weights``.
    Subclasses give the pretext task (``_task``) and what they add to the built network
    (``_attach``)."""

    _parameter_constraints = dict(_PRETRAINING_CONSTRAINTS)
    _persisted = {
        **BackboneEstimatorMixin._persisted,
        "history_": "history",
        "n_iter_": "count",
        "interrupted_": "bool",
    }
    _n_outputs = 1

    def _network_options(self):
        return {"freeze_depth": self.freeze_depth, "batchnorm": "trained",
                "fast_depthwise": True}

    def _n_outputs_fitted(self):
        return self._n_outputs

    def _build_network(self, spec, n_outputs, sample, *, weights, n_frozen=None):
        built = super()._build_network(spec, self._n_outputs, sample, weights=weights,
                                       n_frozen=n_frozen)
        self._attach(built.net, sample)
        return built

    # -- fit ----------------------------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Pretrain the backbone on X; y is ignored.

        Parameters
        ----------
        X : array-like or list of paths or PIL images
            Images ``(N, H, W, C)``, ``(N, C, H, W)`` or ``(N, H, W)``; 2-D rows with
            ``image_shape``; ``(N, F)`` vectors for a vector backbone; or image files and PIL
            images, decoded to ``input_size`` (else the backbone's native size).
        y : None
            Ignored: pretraining uses no labels.

        Returns
        -------
        self : object
            The fitted pretrainer.

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer.pretraining import ContrastivePretrainer
        >>> X = np.random.RandomState(0).rand(16, 8, 8, 3).astype(np.float32)
        >>> pre = ContrastivePretrainer("test_cnn", weights=None, max_epochs=2,
        ...                             batch_size=8, random_state=0).fit(X)
        >>> pre.n_iter_, pre.stage_names_
        (2, ['stem', 'block1', 'block2'])
        """
        X, spec, feature_names = self._validate_fit_input(X)
        device = resolve_device(self.device)
        seed = seed_from(self.random_state)
        # inference_mode(False): a fit called inside torch.inference_mode() still trains
        with seeded_global_state(seed, device), torch.inference_mode(False):
            fitted = self._pretrain(X, spec, TrainingConfig(
                lr=self.lr, max_epochs=self.max_epochs, batch_size=self.batch_size, seed=seed,
                device=device, optimizer="adamw", momentum=0.9, weight_decay=_WEIGHT_DECAY,
                verbose=self.verbose, callbacks=self.callbacks or [],
            ))
        # Only now, with training finished, does the estimator change.
        for key, value in fitted.items():
            setattr(self, key, value)
        self.device_ = device
        self._set_input_attrs(X, spec, feature_names)
        return self

    def _pretrain(self, X, spec, config):
        src = make_source(X, spec)
        sample = src.batch(np.arange(min(len(src), 2)))
        built = self._build_network(spec, self._n_outputs, sample, weights=self.weights)
        net = built.net.to(config.device)
        model = PretextModel(net, self._task(spec))
        skorch_net = make_skorch_net(
            model, PassThroughLoss, config, callbacks=training_callbacks(config, sample),
            drop_last=len(src) % self.batch_size == 1 and len(src) > 1,
        )
        interrupted = run_training(skorch_net, ArrayDataset(src), batch_size=self.batch_size)
        net.eval()
        release_training_state(skorch_net, config.device)
        return {
            "module_": net,
            "backbone_name_": built.backbone_name,
            "weights_": built.weights,
            "stage_names_": built.stage_names,
            "n_frozen_stages_": built.n_frozen,
            "n_features_out_": built.n_features,
            "history_": history_rows(skorch_net.history),
            "n_iter_": len(skorch_net.history),
            "interrupted_": interrupted,
        }

    # -- use ----------------------------------------------------------------------------------

    def transform(self, X):
        """Embeddings of X: the backbone's pooled features (before any projection head).

        Parameters
        ----------
        X : array-like or list of paths or PIL images
            Inputs like those given to ``fit``.

        Returns
        -------
        X_new : ndarray of shape (n_samples, `n_features_out_`), dtype float32
            One embedding per sample.

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer.pretraining import AutoencoderPretrainer
        >>> X = np.random.RandomState(0).rand(16, 8, 8, 3).astype(np.float32)
        >>> pre = AutoencoderPretrainer("test_cnn", weights=None, max_epochs=1,
        ...                             random_state=0).fit(X)
        >>> emb = pre.transform(X)
        >>> emb.shape, emb.dtype
        ((16, 16), dtype('float32'))
        """
        check_is_fitted(self, "module_")
        X = self._validate_predict_input(X)
        net = self.module_
        net.eval()
        with preserved_global_state(self.device_):
            return check_finite_output(batched_features(
                net.features, make_source(X, self.input_spec_), self.device_,
                max(int(self.batch_size), 64), pad=self.input_spec_.kind == "vector",
            ))

    def save_weights(self, path):
        """Save the pretrained model as a folder that ``weights=path`` starts from.

        The folder is the one :func:`sktransfer.save` writes (JSON config and safetensors,
        no pickle): any estimator's ``weights=path`` loads its backbone stages, dropping the
        projection head or decoder, and :func:`sktransfer.load` reads it back as this
        pretrainer. Unlike :func:`sktransfer.save`, it also saves a pretrainer whose
        hyperparameters the safe format cannot hold, which the trained weights do not depend
        on: callbacks, a callable ``augment`` or a ``RandomState`` are written as their
        defaults (listed in the config's ``params_defaulted``), a callable backbone by its
        name.

        Parameters
        ----------
        path : str or path-like
            The folder; created if needed.

        Returns
        -------
        path : pathlib.Path
            The folder.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from sktransfer import TransferClassifier
        >>> from sktransfer.pretraining import ContrastivePretrainer
        >>> X = np.random.RandomState(0).rand(16, 8, 8, 3).astype(np.float32)
        >>> pre = ContrastivePretrainer("test_cnn", weights=None, max_epochs=1,
        ...                             random_state=0).fit(X)
        >>> folder = pre.save_weights(tempfile.mkdtemp())
        >>> clf = TransferClassifier("test_cnn", weights=folder, max_epochs=1,
        ...                          random_state=0).fit(X, [0, 1] * 8)
        >>> clf.weights_.startswith(f"{folder} (saved ContrastivePretrainer")
        True
        """
        check_is_fitted(self, "module_")
        return write_model_folder(path, *encode_estimator(self, lenient=True))

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class ContrastivePretrainer(_Pretrainer):
    """Contrastive self-supervised pretraining (SimCLR) of a backbone, scikit-learn style.

    Each image is seen as two random views (crop, flip, colour jitter, grayscale); the backbone
    and a projection head learn to map the two views of an image close together and away from
    the other images of the batch, with the NT-Xent loss. Labels are never used. The projection
    head is discarded when the backbone is transferred (``weights=`` a saved pretrainer loads
    the backbone's stages only), as in SimCLR.

    Parameters
    ----------
    backbone : str or callable, default="efficientnet_lite0"
        A registered name (:func:`~sktransfer.list_backbones`), a torchvision model name,
        ``"timm:<name>"``, or a callable returning an ``nn.Module``.
    weights : str, path-like or None, default="DEFAULT"
        Where pretraining starts: ``"DEFAULT"`` (or a weights name or file) continues from
        pretrained weights (domain-adaptive pretraining), a saved model folder from that
        model's backbone, ``None`` from random initialisation.
    freeze_depth : int or "all", default=0
        Stages left untouched, as in :class:`~sktransfer.TransferClassifier` (0 trains them
        all).
    temperature : float, default=0.5
        Temperature of the NT-Xent loss: lower values weigh the hardest negatives more.
    projection_dim : int, default=64
        Outputs of the projection head (``Linear(features, features)``, ReLU,
        ``Linear(features, projection_dim)``).
    augment : "simclr" or callable, default="simclr"
        How views are made. ``"simclr"``: per image, a random resized crop of 25-100 % of the
        area, a horizontal flip with probability 1/2, brightness, contrast and saturation
        jitter of 0.4 with probability 0.8, grayscale with probability 0.2, computed for the
        whole batch at once; for vectors, 30 % of the features replaced by those of other rows
        (SCARF). A callable (e.g. a ``torchvision.transforms.v2.Compose``) gets each image as
        a float ``(C, H, W)`` tensor in [0, 1] and returns one view of the same shape; it is
        applied image by image, twice per image.
    max_epochs : int, default=10
        Passes over X.
    batch_size : int, default=128
        Images per step (each step compares 2 x batch_size views).
    lr : float, default=1e-3
        Learning rate of the AdamW optimiser (weight decay 1e-4).
    input_size : int or None, default=None
        Resize every image to ``input_size x input_size`` inside the network.
    image_shape : tuple or None, default=None
        ``(H, W)`` or ``(H, W, C)``: each row of a 2-D X is an image of this shape.
    grayscale : {"repeat", "adapt"}, default="repeat"
        Single-channel images for an RGB backbone: repeated, or the stem adapted.
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling and views. Fits with the same value are identical.
    verbose : int, default=0
        0 is silent, 1 prints the epoch table, 2 adds a progress bar.
    callbacks : list or None, default=None
        Extra skorch callbacks.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained network: preprocessing, backbone stages, projection head.
    device_ : str
        Device the network lives on.
    stage_names_ : list of str
        The backbone's stages, input first.
    n_frozen_stages_ : int
        How many leading stages were frozen.
    n_features_out_ : int
        Size of the embeddings ``transform`` returns.
    history_ : list of dict
        Per-epoch ``train_loss`` and duration.
    n_iter_ : int
        Epochs run.
    interrupted_ : bool
        Whether Ctrl-C ended the fit (the last completed epoch is kept).
    n_features_in_ : int
        Values per sample seen in ``fit``.
    input_spec_ : InputSpec
        Layout, per-sample shape and scaling of the input seen in ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of X, set only when X is a DataFrame with string column names.
    backbone_name_ : str
        Name of the resolved backbone.
    weights_ : str or None
        Description of the weights pretraining started from.

    See Also
    --------
    AutoencoderPretrainer : Pretraining by reconstructing masked images.
    sktransfer.TransferClassifier : Fine-tune the pretrained backbone (``weights=`` the folder
        of :meth:`save_weights`), or pretrain inside ``fit`` with ``unlabeled="contrastive"``.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sktransfer import TransferClassifier
    >>> from sktransfer.pretraining import ContrastivePretrainer
    >>> rng = np.random.RandomState(0)
    >>> X_unlabeled = rng.rand(64, 8, 8, 3).astype(np.float32)
    >>> X, y = X_unlabeled[:16], np.array([0, 1] * 8)
    >>> pre = ContrastivePretrainer("test_cnn", weights=None, max_epochs=2, batch_size=32,
    ...                             random_state=0).fit(X_unlabeled)
    >>> pre.transform(X).shape
    (16, 16)
    >>> folder = pre.save_weights(tempfile.mkdtemp())
    >>> clf = TransferClassifier("test_cnn", weights=folder, max_epochs=2,
    ...                          random_state=0).fit(X, y)
    >>> probe = make_pipeline(pre, LogisticRegression()).fit(X, y)
    >>> probe.predict(X[:2]).shape
    (2,)
    """

    _parameter_constraints = {
        **_Pretrainer._parameter_constraints,
        "temperature": [Interval(numbers.Real, 0, None, closed="neither")],
        "projection_dim": [Interval(numbers.Integral, 1, None, closed="left")],
        "augment": [StrOptions({"simclr"}), callable],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="DEFAULT",
        freeze_depth=0,
        temperature=0.5,
        projection_dim=64,
        augment="simclr",
        max_epochs=10,
        batch_size=128,
        lr=1e-3,
        input_size=None,
        image_shape=None,
        grayscale="repeat",
        device="auto",
        random_state=None,
        verbose=0,
        callbacks=None,
    ):
        self.backbone = backbone
        self.weights = weights
        self.freeze_depth = freeze_depth
        self.temperature = temperature
        self.projection_dim = projection_dim
        self.augment = augment
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.input_size = input_size
        self.image_shape = image_shape
        self.grayscale = grayscale
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    @property
    def _n_outputs(self):
        return int(self.projection_dim)

    def _attach(self, net, sample):
        attach_projection_head(net)

    def _task(self, spec):
        views = None if self.augment == "simclr" else PerImageViews(self.augment)
        return ContrastiveTask(self.temperature, views)


class AutoencoderPretrainer(_Pretrainer):
    """Masked-autoencoder pretraining of a backbone, scikit-learn style.

    Random square patches covering ``mask_ratio`` of each image are blanked (set to the
    normalised mean); a light decoder on the backbone's last feature map (before global
    pooling) reconstructs the image, and the mean squared error on the blanked pixels trains
    both. Labels are never used. The decoder is discarded when the backbone is transferred
    (``weights=`` a saved pretrainer loads the backbone's stages only). For vector backbones,
    single features are blanked and a small MLP decodes the pooled features.

    Parameters
    ----------
    backbone : str or callable, default="efficientnet_lite0"
        A registered name, a torchvision model name, ``"timm:<name>"``, or a callable.
    weights : str, path-like or None, default="DEFAULT"
        Where pretraining starts: pretrained weights, a saved model folder, or ``None`` for
        random initialisation.
    freeze_depth : int or "all", default=0
        Stages left untouched (0 trains them all).
    mask_ratio : float, default=0.5
        Share of each image blanked (patches of about a seventh of the shorter side).
    max_epochs : int, default=10
        Passes over X.
    batch_size : int, default=128
        Images per step.
    lr : float, default=1e-3
        Learning rate of the AdamW optimiser (weight decay 1e-4).
    input_size : int or None, default=None
        Resize every image to ``input_size x input_size`` inside the network.
    image_shape : tuple or None, default=None
        ``(H, W)`` or ``(H, W, C)``: each row of a 2-D X is an image of this shape.
    grayscale : {"repeat", "adapt"}, default="repeat"
        Single-channel images for an RGB backbone: repeated, or the stem adapted.
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling and masks. Fits with the same value are identical.
    verbose : int, default=0
        0 is silent, 1 prints the epoch table, 2 adds a progress bar.
    callbacks : list or None, default=None
        Extra skorch callbacks.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained network: preprocessing, backbone stages and the decoder (``decoder``).
    device_ : str
        Device the network lives on.
    stage_names_ : list of str
        The backbone's stages, input first.
    n_frozen_stages_ : int
        How many leading stages were frozen.
    n_features_out_ : int
        Size of the embeddings ``transform`` returns.
    history_ : list of dict
        Per-epoch ``train_loss`` (the reconstruction error) and duration.
    n_iter_ : int
        Epochs run.
    interrupted_ : bool
        Whether Ctrl-C ended the fit (the last completed epoch is kept).
    n_features_in_ : int
        Values per sample seen in ``fit``.
    input_spec_ : InputSpec
        Layout, per-sample shape and scaling of the input seen in ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of X, set only when X is a DataFrame with string column names.
    backbone_name_ : str
        Name of the resolved backbone.
    weights_ : str or None
        Description of the weights pretraining started from.

    See Also
    --------
    ContrastivePretrainer : Pretraining by contrasting views of images.
    sktransfer.TransferClassifier : Fine-tune the pretrained backbone.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> from sktransfer.pretraining import AutoencoderPretrainer
    >>> X = np.random.RandomState(0).randint(0, 256, (32, 8, 8), dtype=np.uint8)
    >>> pre = AutoencoderPretrainer("test_cnn", weights=None, max_epochs=2,
    ...                             random_state=0).fit(X)
    >>> len(pre.history_), pre.transform(X[:4]).shape
    (2, (4, 16))
    >>> folder = pre.save_weights(tempfile.mkdtemp())
    >>> clf = TransferClassifier("test_cnn", weights=folder, max_epochs=1,
    ...                          random_state=0).fit(X[:8], [0, 1] * 4)
    """

    _parameter_constraints = {
        **_Pretrainer._parameter_constraints,
        "mask_ratio": [Interval(numbers.Real, 0, 1, closed="left")],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="DEFAULT",
        freeze_depth=0,
        mask_ratio=0.5,
        max_epochs=10,
        batch_size=128,
        lr=1e-3,
        input_size=None,
        image_shape=None,
        grayscale="repeat",
        device="auto",
        random_state=None,
        verbose=0,
        callbacks=None,
    ):
        self.backbone = backbone
        self.weights = weights
        self.freeze_depth = freeze_depth
        self.mask_ratio = mask_ratio
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.input_size = input_size
        self.image_shape = image_shape
        self.grayscale = grayscale
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    def _attach(self, net, sample):
        attach_decoder(net, sample)

    def _task(self, spec):
        return ReconstructionTask(self.mask_ratio)
