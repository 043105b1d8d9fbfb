"""TransferRegressor: fine-tune a pretrained backbone for regression."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler

from ._base import TransferEstimatorMixin
from ._compat import Interval, StrOptions, _fit_context
from ._domain import fit_with_unlabeled

__all__ = ["TransferRegressor"]


class TransferRegressor(TransferEstimatorMixin, RegressorMixin, BaseEstimator):
    """Fine-tune a pretrained network for regression, scikit-learn style.

    The classification head is replaced by a linear layer with one output per target, trained
    on mean squared error. Targets are standardised internally (``y_scaler_``, and predictions
    mapped back), so the learning rate does not depend on their scale.

    Parameters
    ----------
    backbone : str or callable, default="efficientnet_lite0"
        A registered name, a torchvision model name, ``"timm:<name>"`` or a callable.
    weights : str, path-like or None, default="DEFAULT"
        Pretrained weights (see :class:`TransferClassifier`).
    freeze_depth : int, "auto" or "all", default="auto"
        ``k >= 0`` freezes the first ``k`` stages (0 fine-tunes everything); ``-k`` trains only
        the last ``k`` stages; ``"all"`` trains the new head alone (a linear probe).
        ``"auto"`` adapts to the data: with fewer than 20 labels per class (a regressor:
        200 rows) every stage is frozen and the model is a linear probe on the pretrained
        features; with more, the second half of the stages is fine-tuned from the probe
        (LP-FT) on 80 % of the rows, and kept only if they beat the probe on the other 20 % by
        2 rows at least (else the model is the probe, refitted on every row). The choice is in
        ``freeze_depth_`` (see the user guide, "How much data do I need?").
    lr : float or "auto", default=0.05
        Learning rate; ``"auto"`` runs a range test first (see :class:`TransferClassifier`).
    lr_schedule : {"constant", "cosine", "onecycle"}, default="cosine"
        Learning-rate schedule over the epochs (see :class:`TransferClassifier`).
    layer_decay : float in (0, 1], default=1.0
        Per-stage learning-rate decay, counting back from the head.
    head_init : {"auto", "random", "linear_probe"}, default="auto"
        ``"linear_probe"`` starts from a ridge regression fitted on the frozen features.
        ``"auto"`` is ``"linear_probe"`` (``head_init_``).
    momentum : float, default=0.9
        SGD momentum.
    optimizer : {"sgd", "adamw"}, default="sgd"
        The optimiser.
    weight_decay : float, default=0.0
        L2 penalty.
    l2_sp : float, default=0.01
        Pull of the trained stages towards their pretrained weights (L2-SP); when on,
        ``weight_decay`` applies to the head only.
    max_epochs : int or "auto", default="auto"
        Passes over the training data. ``"auto"`` gives fine-tuning a budget of about 160
        optimizer steps, as 3 to 12 epochs (``max_epochs_``; 0 when the model is the linear
        probe and no epoch runs).
    batch_size : int, default=32
        Samples per optimiser step.
    input_size : int or None, default=None
        Square resize of every image.
    image_shape : tuple or None, default=None
        Each row of a 2-D X is an ``(H, W)`` or ``(H, W, C)`` image (reshaped, not resized).
    grayscale : {"repeat", "adapt"}, default="repeat"
        Single-channel images for an RGB backbone.
    augment : {"flip", "light"}, callable or None, default=None
        Training-time augmentation (see :class:`TransferClassifier`).
    batchnorm : {"trained", "all", "checkpoint"} or float, default="trained"
        Which BatchNorm layers update their statistics (see :class:`TransferClassifier`).
    early_stopping : bool, default=False
        Stop on a held-out validation loss; restores the best epoch.
    validation_fraction : float, default=0.1
        Share held out for early stopping.
    n_iter_no_change : int, default=5
        Early-stopping patience in epochs.
    tol : float, default=1e-4
        Minimum improvement of the validation loss.
    cache : bool, str, path-like or joblib.Memory, default=True
        Reuse frozen-stage outputs (exact); a folder also shares them between processes.
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
        Seed of initialisation, shuffling, dropout and augmentation; the global generators
        are left as found (fits in threads of one process share torch's: run parallel
        searches in processes to keep them reproducible).
    verbose : int, default=0
        0 silent, 1 what the ``"auto"`` values became and the epoch table, 2 progress bar.
    callbacks : list or None, default=None
        Extra skorch callbacks.
    warm_start : bool, default=False
        Continue from the previous fit.
    tta : bool, default=False
        Average predictions over the images and their left-right flips.
    unlabeled : {"adabn", "coral", "dann"} or None, default=None
        What the unlabeled rows of ``fit`` (y NaN, or ``sample_domain`` negative) are for:
        domain adaptation to them, by BatchNorm statistics alone, Deep CORAL or a domain
        discriminator (see :class:`TransferClassifier`). ``None``: NaN in y is refused.
    unlabeled_weight : float, default=1.0
        Strength of the domain adaptation (see :class:`TransferClassifier`).

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
    freeze_depth_ : int or "all"
        The ``freeze_depth`` trained with: ``freeze_depth``, or what ``"auto"`` chose.
    head_init_ : str
        The ``head_init`` trained with: ``head_init``, or what ``"auto"`` chose.
    max_epochs_ : int
        The ``max_epochs`` trained with: ``max_epochs``, or what ``"auto"`` chose (0: no
        epoch, the model is the linear probe).
    selection_scores_ : dict or None
        When ``freeze_depth="auto"`` fine-tuned and compared: the held-out scores of the
        linear probe and of the fine-tuned network (accuracy; a regressor: minus the mean
        squared error of the scaled targets), ``{"linear_probe": ..., "fine_tuned": ...}``.
        The fine-tuned network is kept only if its score is higher by 2 held-out rows'
        worth. ``None`` otherwise.
    lr_ : float or None
        The learning rate trained with (``None`` when no epoch ran).
    lr_range_test_ : dict or None
        The range test's curve for ``lr="auto"``.
    n_features_in_ : int
        Values per sample seen in ``fit``.
    input_spec_ : InputSpec
        Layout and scaling of the training input.
    y_scaler_ : sklearn.pipeline.Pipeline
        The target scaling: ``MaxAbsScaler`` then ``StandardScaler`` (the first keeps targets
        near the float64 limit from overflowing the second), fitted on y as 2-D.
    y_ndim_ : int
        Dimensions of y in ``fit`` (``predict`` returns the same).
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of X, set only when X is a DataFrame with string column names.
    interrupted_ : bool
        Whether Ctrl-C ended the last fit.
    cache_key_ : str or None
        Key of the frozen stages' outputs in the activation cache.
    backbone_name_ : str
        Name of the resolved backbone.
    weights_ : str or None
        Description of the weights loaded.

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

    _parameter_constraints = {
        **TransferEstimatorMixin._parameter_constraints,
        "unlabeled": [StrOptions({"adabn", "coral", "dann"}), None],
        "unlabeled_weight": [Interval(numbers.Real, 0, None, closed="left")],
    }
    # sample_domain reaches fit when metadata routing is on, without set_fit_request
    __metadata_request__fit = {"sample_domain": True}
    _persisted = {
        **TransferEstimatorMixin._persisted,
        "n_outputs_": "positive",
        "y_ndim_": "positive",
        "y_scaler_": "target_scaler",
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="DEFAULT",
        freeze_depth="auto",
        lr=0.05,
        lr_schedule="cosine",
        layer_decay=1.0,
        head_init="auto",
        momentum=0.9,
        optimizer="sgd",
        weight_decay=0.0,
        l2_sp=0.01,
        max_epochs="auto",
        batch_size=32,
        input_size=None,
        image_shape=None,
        grayscale="repeat",
        augment=None,
        batchnorm="trained",
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        tol=1e-4,
        cache=True,
        device="auto",
        precision="float32",
        compile=False,
        accelerator=None,
        num_workers=0,
        random_state=None,
        verbose=0,
        callbacks=None,
        warm_start=False,
        tta=False,
        unlabeled=None,
        unlabeled_weight=1.0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.freeze_depth = freeze_depth
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.layer_decay = layer_decay
        self.head_init = head_init
        self.momentum = momentum
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.l2_sp = l2_sp
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.input_size = input_size
        self.image_shape = image_shape
        self.grayscale = grayscale
        self.augment = augment
        self.batchnorm = batchnorm
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.cache = cache
        self.device = device
        self.precision = precision
        self.compile = compile
        self.accelerator = accelerator
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.warm_start = warm_start
        self.tta = tta
        self.unlabeled = unlabeled
        self.unlabeled_weight = unlabeled_weight

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
        if np.isnan(y).any():
            raise ValueError(
                "Input y contains NaN or infinity (NaN in "
                f"{int(np.isnan(y).any(axis=-1).sum())} row(s)). NaN "
                "marks unlabeled rows: to adapt the model to them (images of the domain to "
                "predict) pass unlabeled='coral'; otherwise drop those rows."
            )
        if not np.all(np.isfinite(y)):
            raise ValueError("Input y contains NaN or infinity.")
        y2 = y.reshape(len(y), -1)
        scaler = make_pipeline(MaxAbsScaler(), StandardScaler()).fit(y2)
        y_enc = scaler.transform(y2).astype(np.float32)
        return y_enc, {"n_outputs_": y2.shape[1], "y_ndim_": y.ndim, "y_scaler_": scaler}

    @classmethod
    def _check_persisted(cls, attrs):
        super()._check_persisted(attrs)
        if attrs["y_ndim_"] not in (1, 2) or attrs["y_scaler_"].n_features_in_ != attrs[
            "n_outputs_"
        ] or (attrs["y_ndim_"] == 1 and attrs["n_outputs_"] != 1):
            raise ValueError("the target scaling does not match n_outputs_")

    def _n_outputs(self, y):
        return y.shape[1]

    def _n_outputs_fitted(self):
        return self.n_outputs_

    def _criterion(self, y, attrs):
        return torch.nn.MSELoss

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_domain=None):
        """Fine-tune on X and continuous targets y.

        Parameters
        ----------
        X : array-like
            Images or vectors, as for :class:`TransferClassifier`.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Targets; with ``unlabeled`` set, NaN marks the unlabeled rows.
        sample_domain : array-like of shape (n_samples,) or None, default=None
            The domain of each row: positive for a source domain, negative for a target
            domain (unlabeled); see :meth:`TransferClassifier.fit`.

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
        >>> reg = TransferRegressor("test_cnn", weights=None, max_epochs=2, freeze_depth=1,
        ...                         random_state=0).fit(X, y)
        >>> reg.n_outputs_, len(reg.history_), sorted(reg.history_[-1])[:3]
        (1, 2, ['dur', 'epoch', 'train_loss'])
        """
        return fit_with_unlabeled(self, X, y, sample_domain)

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
        out = self._forward(X).astype(np.float64).mean(0)
        out = self.y_scaler_.inverse_transform(out)
        return out.ravel() if self.y_ndim_ == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
