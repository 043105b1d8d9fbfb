"""TransferRegressor: fine-tune a pretrained backbone for regression."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin

from ._base import TransferEstimatorMixin
from ._compat import _fit_context

__all__ = ["TransferRegressor"]


class TransferRegressor(TransferEstimatorMixin, RegressorMixin, BaseEstimator):
    """Fine-tune a pretrained network for regression, scikit-learn style.

    The classification head is replaced by a linear layer with one output per target, trained
    on mean squared error. Targets are standardised internally (and predictions mapped back),
    so the learning rate does not depend on their scale.

    Parameters
    ----------
    backbone : str or callable, default="efficientnet_lite0"
        A registered name, a torchvision model name, ``"timm:<name>"`` or a callable.
    weights : str, path-like or None, default="DEFAULT"
        Pretrained weights (see :class:`TransferClassifier`).
    freeze_depth : int or "all", default=-1
        Frozen stages (see :class:`TransferClassifier`).
    lr : float, default=0.01
        Learning rate.
    momentum : float, default=0.9
        SGD momentum.
    optimizer : {"sgd", "adamw"}, default="sgd"
        The optimiser.
    weight_decay : float, default=0.0
        L2 penalty.
    max_epochs : int, default=10
        Passes over the training data.
    batch_size : int, default=32
        Samples per optimiser step.
    input_size : int or None, default=None
        Square resize of every image.
    input_shape : tuple or None, default=None
        Reshape rows of a 2-D X into ``(H, W)`` or ``(H, W, C)`` images.
    grayscale : {"repeat", "adapt"}, default="repeat"
        Single-channel images for an RGB backbone.
    augment : {"light"}, callable or None, default=None
        Training-time augmentation (see :class:`TransferClassifier`).
    on_bad_image : {"raise", "skip"}, default="raise"
        Unreadable image files in ``fit``: one error listing all, or skip them with a warning.
    train_bn : bool, default=False
        Let BatchNorm layers of frozen stages update their statistics.
    bn_momentum : float or None, default=0.1
        Momentum of trainable BatchNorm layers.
    early_stopping : bool, default=False
        Stop on a held-out validation loss; restores the best epoch.
    validation_fraction : float, default=0.1
        Share held out for early stopping.
    n_iter_no_change : int, default=5
        Early-stopping patience in epochs.
    tol : float, default=1e-4
        Minimum improvement of the validation loss.
    cache : bool, default=True
        Reuse frozen-stage outputs (exact).
    memory : str, joblib.Memory or None, default=None
        Folder sharing frozen-stage outputs between processes.
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    precision : {"float32", "bfloat16", "float16"}, default="float32"
        Forward passes under ``torch.autocast`` to this type in ``fit`` and ``predict``
        (mixed precision; predictions stay float32). ``"float16"`` needs CUDA (trained with a
        gradient scaler); ``"bfloat16"`` also runs on the CPU.
    compile : bool, default=False
        Compile the network with ``torch.compile`` (slow first batches; for long GPU runs).
    accelerator : "auto", dict or None, default=None
        Train through Hugging Face accelerate: ``"auto"`` builds ``accelerate.Accelerator()``
        in ``fit``, a dict gives its keyword arguments. See :class:`TransferClassifier`.
    num_workers : int, default=0
        DataLoader worker processes decoding and augmenting batches.
    random_state : int, RandomState instance or None, default=None
        Seed of initialisation and shuffling.
    verbose : int, default=0
        0 silent, 1 epoch table, 2 progress bar.
    callbacks : list or None, default=None
        Extra skorch callbacks.
    warm_start : bool, default=False
        Continue from the previous fit.

    Attributes
    ----------
    net_ : skorch.NeuralNet
        The trained skorch net.
    module_ : torch.nn.Module
        The trained network.
    device_ : str
        Device the model lives on.
    n_outputs_ : int
        Number of targets.
    stage_names_ : list of str
        The backbone's stages.
    n_frozen_stages_ : int
        Frozen leading stages.
    n_features_out_ : int
        Size of the backbone features.
    history_ : list of dict
        Per-epoch losses (on standardised targets).
    n_iter_ : int
        Epochs run.
    n_features_in_ : int
        Values per sample seen in ``fit``.
    input_spec_ : dict
        Layout and scaling of the training input.

    See Also
    --------
    TransferClassifier : The same for classification.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import TransferRegressor
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(40, 6).astype(np.float32)
    >>> y = X @ np.arange(6.0)
    >>> reg = TransferRegressor("test_mlp", weights=None, max_epochs=3, random_state=0)
    >>> reg.fit(X, y).predict(X[:2]).shape
    (2,)
    """

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="DEFAULT",
        freeze_depth=-1,
        lr=0.01,
        momentum=0.9,
        optimizer="sgd",
        weight_decay=0.0,
        max_epochs=10,
        batch_size=32,
        input_size=None,
        input_shape=None,
        grayscale="repeat",
        augment=None,
        on_bad_image="raise",
        train_bn=False,
        bn_momentum=0.1,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        tol=1e-4,
        cache=True,
        memory=None,
        device="auto",
        precision="float32",
        compile=False,
        accelerator=None,
        num_workers=0,
        random_state=None,
        verbose=0,
        callbacks=None,
        warm_start=False,
    ):
        self.backbone = backbone
        self.weights = weights
        self.freeze_depth = freeze_depth
        self.lr = lr
        self.momentum = momentum
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.input_size = input_size
        self.input_shape = input_shape
        self.grayscale = grayscale
        self.augment = augment
        self.on_bad_image = on_bad_image
        self.train_bn = train_bn
        self.bn_momentum = bn_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.cache = cache
        self.memory = memory
        self.device = device
        self.precision = precision
        self.compile = compile
        self.accelerator = accelerator
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.warm_start = warm_start

    def _encode_y(self, y, n_samples):
        y = np.asarray(y) if not hasattr(y, "to_numpy") else y.to_numpy()
        if y.dtype == object:
            try:
                y = y.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"y must be numeric for regression: {exc}") from exc
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
            raise ValueError(f"y must be numeric for regression, got dtype {y.dtype}.")
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D or 2-D, got shape {y.shape}.")
        if len(y) != n_samples:
            raise ValueError(
                f"Found input variables with inconsistent numbers of samples: [{n_samples}, "
                f"{len(y)}]"
            )
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError("Input y contains NaN or infinity.")
        y2 = y.reshape(len(y), -1)
        with np.errstate(over="ignore", invalid="ignore"):
            mean = y2.mean(axis=0)
            scale = y2.std(axis=0)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale))):
            # values near the float64 limit overflow the sums: standardise y / max|y| instead
            top = np.abs(y2).max(axis=0)
            top[top == 0] = 1.0
            z = y2 / top
            z_mean, z_scale = z.mean(axis=0), z.std(axis=0)
            mean, scale = z_mean * top, np.where(z_scale == 0, 1.0, z_scale * top)
            z_scale[z_scale == 0] = 1.0
            y_enc = ((z - z_mean) / z_scale).astype(np.float32)
        else:
            scale[scale == 0] = 1.0
            y_enc = ((y2 - mean) / scale).astype(np.float32)
        meta = {"n_outputs_": y2.shape[1], "_y_ndim": y.ndim, "_y_mean": mean, "_y_scale": scale}
        return y_enc, meta

    def _n_outputs(self, y):
        return y.shape[1] if y is not None else self.n_outputs_

    def _n_outputs_fitted(self):
        return self.n_outputs_

    def _criterion(self, y):
        return torch.nn.MSELoss

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fine-tune on X and continuous targets y.

        Parameters
        ----------
        X : array-like
            Images or vectors, as for :class:`TransferClassifier`.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Targets.

        Returns
        -------
        self : TransferRegressor
            The fitted estimator.

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer import TransferRegressor
        >>> X = np.random.RandomState(0).rand(20, 16, 16, 3).astype(np.float32)
        >>> y = X.mean(axis=(1, 2, 3))
        >>> reg = TransferRegressor("test_cnn", weights=None, max_epochs=2,
        ...                         random_state=0).fit(X, y)
        >>> reg.n_outputs_, len(reg.history_), sorted(reg.history_[-1])[:3]
        (1, 2, ['dur', 'epoch', 'train_loss'])
        """
        return self._fit(X, y)

    def predict(self, X):
        """Predicted targets, shaped like ``y`` in ``fit``.

        Parameters
        ----------
        X : array-like
            Inputs shaped like those given to ``fit``.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_targets)
            Predictions.

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer import TransferRegressor
        >>> X = np.random.RandomState(0).rand(20, 16, 16, 3).astype(np.float32)
        >>> Y = np.c_[X.mean(axis=(1, 2, 3)), X.std(axis=(1, 2, 3))]
        >>> reg = TransferRegressor("test_cnn", weights=None, max_epochs=1, random_state=0)
        >>> reg.fit(X, Y).predict(X[:3]).shape
        (3, 2)
        >>> reg.fit(X, Y[:, 0]).predict(X[:3]).shape
        (3,)
        """
        out = self._forward(X).astype(np.float64) * self._y_scale + self._y_mean
        return out.ravel() if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
