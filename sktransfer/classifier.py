"""TransferClassifier: fine-tune a pretrained backbone for classification."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import _safe_indexing
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import column_or_1d

from ._base import TransferEstimatorMixin
from ._compat import HasMethods, StrOptions, _fit_context
from ._model_folder import saved_stages_of
from ._runtime import seed_from
from .pretraining import AutoencoderPretrainer, ContrastivePretrainer

__all__ = ["TransferClassifier"]


class WeightedCrossEntropy(torch.nn.Module):
    """Cross-entropy with per-class weights that scale each sample's loss, averaged over the
    batch (scikit-learn's meaning of ``class_weight``; torch's weighted mean divides by the
    batch's total weight instead, which undoes the weighting in single-class batches)."""

    def __init__(self, weight):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits, target):
        losses = torch.nn.functional.cross_entropy(
            logits, target, weight=self.weight, reduction="none"
        )
        return losses.mean()


class TransferClassifier(TransferEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained network for classification, scikit-learn style.

    The backbone keeps its pretrained structure and weights; its classification head is
    replaced by a new linear layer with one output per class, and the last stages (or all of
    them) are trained with SGD and momentum on cross-entropy.

    Parameters
    ----------
    backbone : str or callable, default="efficientnet_lite0"
        A registered name (:func:`~sktransfer.list_backbones`), a torchvision classification
        model name, ``"timm:<name>"``, or a callable returning an ``nn.Module``.
    weights : str, path-like or None, default="DEFAULT"
        ``"DEFAULT"`` (or a torchvision weights name) for the pretrained weights, a local
        ``.safetensors``/``.pt``/``.pth`` file, a model folder written by
        :func:`~sktransfer.save` or a pretrainer's ``save_weights`` (its backbone stages, its
        head dropped), or ``None`` for random initialisation.
    freeze_depth : int or "all", default=-1
        ``k >= 0`` freezes the first ``k`` stages (0 fine-tunes everything); ``-k`` trains only
        the last ``k`` stages; ``"all"`` trains the new head alone (a linear probe).
    lr : float, default=0.01
        Learning rate.
    momentum : float, default=0.9
        SGD momentum (for ``optimizer="adamw"``: the first Adam beta).
    optimizer : {"sgd", "adamw"}, default="sgd"
        The optimiser.
    weight_decay : float, default=0.0
        L2 penalty (decoupled for AdamW).
    max_epochs : int, default=10
        Passes over the training data.
    batch_size : int, default=32
        Samples per optimiser step.
    input_size : int or None, default=None
        Resize every image to ``input_size x input_size`` (per batch, bilinear, antialiased).
        ``None`` keeps array images at their own size.
    image_shape : tuple or None, default=None
        ``(H, W)`` or ``(H, W, C)``: each row of a 2-D X is an image of this shape (reshaped,
        never resized; ``input_size`` resizes), so that e.g. ``load_digits().data`` works with
        ``image_shape=(8, 8)``.
    grayscale : {"repeat", "adapt"}, default="repeat"
        Single-channel images for an RGB backbone: repeat the channel three times, or adapt
        the stem convolution by summing its RGB weights (as timm's ``adapt_input_conv``).
    augment : {"light"}, callable or None, default=None
        Data augmentation while training (never in ``predict``): ``"light"`` takes a random
        crop of 70-100 % of each image's area, resized back, and flips it horizontally half of
        the time; a callable (e.g. a torchvision transform) gets each image as a float32
        ``(C, H, W)`` tensor in [0, 1] and returns one of the same shape. Seeded by
        ``random_state``. Frozen-stage outputs change with every draw, so the ``cache`` is
        bypassed. See :mod:`sktransfer.augment`.
    batchnorm : {"trained", "all", "checkpoint"} or float, default="trained"
        Which BatchNorm layers update their running statistics, and how fast. ``"trained"``:
        those of trained stages, with momentum 0.1 (checkpoints converted from TensorFlow carry
        0.01, too slow to settle in a short fine-tuning run); frozen stages stay in eval mode.
        ``"all"``: frozen stages' BatchNorm layers update their statistics too (adapting them
        to a new domain). ``"checkpoint"``: trained layers keep the checkpoint's momentum. A
        float: ``"trained"`` with that momentum.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (stratified, seeded) and stop
        when the validation loss has not improved by ``tol`` for ``n_iter_no_change`` epochs;
        the best epoch's weights are restored.
    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping.
    n_iter_no_change : int, default=5
        Patience of early stopping, in epochs.
    tol : float, default=1e-4
        Minimum improvement of the validation loss.
    cache : bool, str, path-like or joblib.Memory, default=True
        Compute the outputs of frozen stages once and train the rest on them (exact; see
        :mod:`sktransfer.caching`), in this process's memory; a folder (or a
        ``joblib.Memory``) also shares them between processes, e.g. the workers of a grid
        search. ``False`` recomputes them every epoch. Bypassed automatically when it would
        not be exact.
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    precision : {"float32", "bfloat16", "float16"}, default="float32"
        Arithmetic of the forward passes in ``fit`` and ``predict``: ``"bfloat16"`` and
        ``"float16"`` run them under ``torch.autocast`` (automatic mixed precision; weights,
        gradients and returned predictions stay float32). ``"float16"`` needs CUDA and trains
        with a gradient scaler; ``"bfloat16"`` works on CUDA and on the CPU.
    compile : bool, default=False
        Compile the network with ``torch.compile`` for training and prediction. The first
        batches then take the compilation time (a minute or more on a CPU); worth it for long
        runs on a GPU.
    accelerator : "auto", dict or None, default=None
        Train through Hugging Face accelerate (``pip install 'sktransfer[accelerate]'``):
        ``"auto"`` builds ``accelerate.Accelerator()`` in ``fit``, a dict gives its keyword
        arguments (e.g. ``{"gradient_accumulation_steps": 4}``). Started with
        ``accelerate launch``, each process trains on its own GPU in data parallel. The
        accelerator chooses the GPU; mixed precision still comes from ``precision``.
    num_workers : int, default=0
        Worker processes that decode and augment batches (``torch.utils.data.DataLoader``);
        0 does it in the main process. Useful with image files. A callable ``augment`` must
        then be picklable; with augmentation, results depend on ``num_workers``.
    random_state : int, RandomState instance or None, default=None
        Seeds head initialisation, shuffling and splits. Fits with the same value are
        bitwise identical on CPU.
    verbose : int, default=0
        0 is silent, 1 prints the epoch table, 2 adds a progress bar.
    callbacks : list or None, default=None
        Extra skorch callbacks (instances or ``(name, callback)`` tuples).
    warm_start : bool, default=False
        Continue from the previous fit instead of the pretrained weights and a fresh head.
    unlabeled : {"contrastive", "autoencoder"}, pretrainer or None, default=None
        Semi-supervised fitting: rows of y labelled -1 (scikit-learn's marker of unlabeled
        samples, as in :mod:`sklearn.semi_supervised`) are unlabeled. ``fit`` then runs stage
        one, self-supervised pretraining of the backbone on every row of X (starting from
        ``weights``; see :mod:`sktransfer.pretraining`), and fine-tunes the pretrained
        backbone on the labeled rows. ``"contrastive"`` and ``"autoencoder"`` use
        :class:`~sktransfer.pretraining.ContrastivePretrainer` or
        :class:`~sktransfer.pretraining.AutoencoderPretrainer` with their defaults and
        ``max_epochs``; a pretrainer instance sets stage one's own hyperparameters (its
        ``backbone``, ``weights``, ``input_size``, ``image_shape``, ``grayscale`` and
        ``device`` are this classifier's, so the stages fit). With ``warm_start`` and a
        previous fit, stage one is skipped. ``None``: every row is
        labeled, and integer (or integral float) y holding -1 beside two or more other
        labels is refused with a ``ValueError`` rather than -1 taken for a class (binary
        ``{-1, 1}`` labels are classes as usual).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, in their original dtype.
    net_ : skorch.NeuralNet
        The trained skorch net (its ``history`` has the per-epoch log).
    module_ : torch.nn.Module
        The trained network: preprocessing, backbone stages, new head.
    device_ : str
        Device the model lives on.
    stage_names_ : list of str
        The backbone's stages, input first.
    n_frozen_stages_ : int
        How many leading stages were frozen.
    n_features_out_ : int
        Size of the backbone features feeding the head.
    history_ : list of dict
        Per-epoch ``train_loss`` (and ``valid_loss``, ``valid_acc`` with early stopping).
    n_iter_ : int
        Epochs run.
    n_features_in_ : int
        Values per sample seen in ``fit``.
    input_spec_ : InputSpec
        Layout, per-sample shape and scaling of the training input.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of X, set only when X is a DataFrame with string column names.
    interrupted_ : bool
        Whether Ctrl-C ended the last fit (the last completed epoch is kept).
    cache_key_ : str or None
        Key of the frozen stages' outputs in the activation cache (``None``: not cached).
    backbone_name_ : str
        Name of the resolved backbone.
    weights_ : str or None
        Description of the weights loaded.

    See Also
    --------
    TransferRegressor : The same for regression.
    TransferFeatures : Frozen backbone features for any scikit-learn model.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(40, 16, 16, 3).astype(np.float32)
    >>> y = np.array(["cat", "dog"] * 20)
    >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=2, random_state=0)
    >>> clf.fit(X, y).classes_.tolist()
    ['cat', 'dog']
    >>> set(clf.predict(X[:3])) <= {"cat", "dog"}
    True
    >>> clf.predict_proba(X[:1]).shape
    (1, 2)
    """

    _parameter_constraints = {
        **TransferEstimatorMixin._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "unlabeled": [StrOptions({"contrastive", "autoencoder"}),
                      HasMethods(["fit", "transform", "save_weights"]), None],
    }
    _persisted = {**TransferEstimatorMixin._persisted, "classes_": "labels"}
    _is_classifier = True

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
        image_shape=None,
        grayscale="repeat",
        augment=None,
        batchnorm="trained",
        class_weight=None,
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
        unlabeled=None,
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
        self.image_shape = image_shape
        self.grayscale = grayscale
        self.augment = augment
        self.batchnorm = batchnorm
        self.class_weight = class_weight
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
        self.unlabeled = unlabeled

    # -- labels ---------------------------------------------------------------------------

    def _encode_y(self, y, n_samples):
        y = np.asarray(y) if not hasattr(y, "iloc") else y.to_numpy()
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        elif y.ndim != 1:
            raise ValueError(
                f"y must be 1-D (one label per sample), got shape {y.shape}. Multi-output "
                "classification is not supported."
            )
        if len(y) != n_samples:
            raise ValueError(
                f"Found input variables with inconsistent numbers of samples: [{n_samples}, "
                f"{len(y)}]"
            )
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            raise ValueError("Input y contains NaN or infinity.")
        _refuse_unlabeled_marker(y)
        check_classification_targets(y)
        if type_of_target(y) not in ("binary", "multiclass"):
            raise ValueError(f"Unknown label type: {type_of_target(y)!r}.")
        encoder = LabelEncoder()
        y_enc = encoder.fit_transform(y).astype(np.int64)
        classes = encoder.classes_
        if len(classes) < 2:
            raise ValueError(
                f"The training data has only one class ({classes[0]!r}); a classifier needs "
                "at least 2 classes."
            )
        self._class_weights(classes, y_enc)  # unknown labels fail before weights are loaded
        return y_enc, {"classes_": classes}

    def _class_weights(self, classes, y_enc):
        if self.class_weight is None:
            return None
        if self.class_weight == "balanced":
            return compute_class_weight("balanced", classes=np.arange(len(classes)), y=y_enc)
        unknown = [k for k in self.class_weight if k not in set(classes.tolist())]
        if unknown:
            raise ValueError(
                f"class_weight names labels {unknown} that are not in y; classes are "
                f"{classes.tolist()}."
            )
        return np.array([float(self.class_weight.get(c, 1.0)) for c in classes.tolist()])

    def _n_outputs(self, y):
        return int(y.max()) + 1

    def _n_outputs_fitted(self):
        return len(self.classes_)

    def _criterion(self, y, attrs):
        weights = None if y is None else self._class_weights(attrs["classes_"], y)
        if weights is None:
            return torch.nn.CrossEntropyLoss
        return lambda: WeightedCrossEntropy(weights)

    # -- public API -----------------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fine-tune on images (or vectors) X and labels y.

        Parameters
        ----------
        X : array-like
            Images ``(N, H, W, C)``, ``(N, C, H, W)`` or ``(N, H, W)``; or ``(N, F)`` vectors.
        y : array-like of shape (n_samples,)
            Labels of any type. With ``unlabeled`` set, -1 marks the unlabeled rows.

        Returns
        -------
        self : TransferClassifier
            The fitted estimator.

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer import TransferClassifier
        >>> X = np.random.RandomState(0).randint(0, 256, (20, 16, 16, 3), dtype=np.uint8)
        >>> y = np.array(["cat", "dog"] * 10)
        >>> clf = TransferClassifier("test_cnn", weights=None, freeze_depth=1, max_epochs=2,
        ...                          random_state=0).fit(X, y)
        >>> clf.classes_.tolist(), clf.n_features_in_, len(clf.history_)
        (['cat', 'dog'], 768, 2)

        Semi-supervised: contrastive pretraining on all 20 rows, fine-tuning on the 6 labeled:

        >>> y = np.array([0, 1, 2] * 2 + [-1] * 14)
        >>> clf = TransferClassifier("test_cnn", weights=None, unlabeled="contrastive",
        ...                          max_epochs=2, random_state=0).fit(X, y)
        >>> clf.classes_.tolist(), clf.weights_.startswith("ContrastivePretrainer on 20 rows")
        ([0, 1, 2], True)
        """
        if self.unlabeled is None:
            return self._fit(X, y)
        return self._fit_semi_supervised(X, y)

    # -- semi-supervised fits -------------------------------------------------------------

    def _fit_semi_supervised(self, X, y):
        """Stage one (self-supervised pretraining on every row), then fine-tuning on the
        labeled rows, starting from the stages of stage one."""
        y = np.asarray(y) if not hasattr(y, "iloc") else y.to_numpy()
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if y.ndim != 1 or len(y) != _num_samples(X):
            return self._fit(X, y)  # which says what is wrong with y
        unlabeled = _unlabeled_rows(y)
        labeled = np.flatnonzero(~unlabeled)
        if len(labeled) == 0:
            raise ValueError(
                f"Every row of y is -1 (unlabeled): unlabeled={self.unlabeled!r} fine-tunes on "
                "the labeled rows after pretraining on all of them, and there are none. Label "
                "some rows, or pretrain alone with sktransfer.pretraining.ContrastivePretrainer."
            )
        if self.warm_start and hasattr(self, "module_"):  # continues the previous fit
            return self._fit(_safe_indexing(X, labeled), y[labeled])
        self._encode_y(y[labeled], n_samples=len(labeled))  # label errors before stage one
        pretrainer = self._stage_one_pretrainer(seed_from(self.random_state))
        pretrainer.fit(X)
        self._stage_one_weights = saved_stages_of(
            pretrainer.module_.state_dict(), backbone_name=pretrainer.backbone_name_,
            stage_names=pretrainer.stage_names_,
            source=f"{type(pretrainer).__name__} on {len(y)} rows ({int(unlabeled.sum())} "
                   "unlabeled)",
            origin=f"starting from {pretrainer.weights_ or 'random initialisation'}",
            grayscale=self.grayscale,
        )
        try:
            return self._fit(_safe_indexing(X, labeled), y[labeled])
        finally:
            del self._stage_one_weights

    def _stage_one_pretrainer(self, seed):
        """The pretrainer of stage one: this classifier's network settings, the method's
        hyperparameters."""
        network = {
            "backbone": self.backbone, "weights": self.weights, "input_size": self.input_size,
            "image_shape": self.image_shape, "grayscale": self.grayscale,
            "device": self.device,
        }
        if isinstance(self.unlabeled, str):
            cls = {"contrastive": ContrastivePretrainer,
                   "autoencoder": AutoencoderPretrainer}[self.unlabeled]
            return cls(**network, max_epochs=self.max_epochs, random_state=seed,
                       verbose=self.verbose)
        pretrainer = clone(self.unlabeled).set_params(**network)
        if pretrainer.get_params().get("random_state") is None:
            pretrainer.set_params(random_state=seed)
        return pretrainer

    def _starting_weights(self):
        return getattr(self, "_stage_one_weights", None) or self.weights

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : array-like
            Inputs shaped like those given to ``fit``.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Rows sum to 1.

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer import TransferClassifier
        >>> X = np.random.RandomState(0).randint(0, 256, (20, 16, 16, 3), dtype=np.uint8)
        >>> y = np.array(["cat", "dog"] * 10)
        >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=1, random_state=0)
        >>> proba = clf.fit(X, y).predict_proba(X[:4])
        >>> proba.shape, np.allclose(proba.sum(axis=1), 1.0)
        ((4, 2), True)
        """
        logits = torch.from_numpy(self._forward(X))
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`, computed without underflow.

        Parameters
        ----------
        X : array-like
            Inputs shaped like those given to ``fit``.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer import TransferClassifier
        >>> X = np.random.RandomState(0).randint(0, 256, (20, 16, 16, 3), dtype=np.uint8)
        >>> y = np.array(["cat", "dog"] * 10)
        >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=1, random_state=0)
        >>> clf.fit(X, y)
        TransferClassifier(...)
        >>> np.allclose(np.exp(clf.predict_log_proba(X[:4])), clf.predict_proba(X[:4]))
        True
        """
        logits = torch.from_numpy(self._forward(X))
        return torch.log_softmax(logits.double(), dim=1).numpy()

    def predict(self, X):
        """Predicted labels, from ``classes_``.

        Parameters
        ----------
        X : array-like
            Inputs shaped like those given to ``fit``.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            Labels in the original dtype.

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer import TransferClassifier
        >>> X = np.random.RandomState(0).randint(0, 256, (20, 16, 16, 3), dtype=np.uint8)
        >>> y = np.array(["cat", "dog"] * 10)
        >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=1, random_state=0)
        >>> pred = clf.fit(X, y).predict(X[:4])
        >>> pred.shape, set(pred) <= {"cat", "dog"}
        ((4,), True)
        """
        scores = self._forward(X)
        return self.classes_[np.argmax(scores, axis=1)]


def _num_samples(X):
    return X.shape[0] if hasattr(X, "shape") and len(X.shape) else len(X)


def _integral_labels(y):
    """Whether y holds integers (of an integer dtype, or integral floats or Python numbers)."""
    if y.dtype.kind in "iu":
        return True
    if y.dtype.kind == "O":
        if not all(isinstance(v, (int, float, np.integer, np.floating))
                   and not isinstance(v, (bool, np.bool_)) for v in y):
            return False
        y = y.astype(float)
    return y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (y == np.round(y))))


def _unlabeled_rows(y):
    """Rows whose label is -1 (scikit-learn's marker of unlabeled samples) in integral y."""
    if not len(y) or not _integral_labels(y):
        return np.zeros(len(y), dtype=bool)
    return np.asarray(y == -1, dtype=bool)


def _refuse_unlabeled_marker(y):
    """Integer (or integral float) y with -1 beside two or more other labels follows the
    semi-supervised convention; fitted without ``unlabeled``, -1 would silently become a class.
    (Binary {-1, 1} labels pass: -1 is then a class, as everywhere in scikit-learn.)"""
    marked = _unlabeled_rows(y)
    if not marked.any():
        return
    others = np.unique(y[~marked])
    if len(others) >= 2 or len(others) == 0:
        shown = ", ".join(str(v) for v in others[:5]) + (" ..." if len(others) > 5 else "")
        where = (f"in {int(marked.sum())} row(s) beside the labels {shown}" if len(others)
                 else f"in every row ({len(y)})")
        raise ValueError(
            f"y holds -1 {where}: scikit-learn marks unlabeled "
            "rows with -1 (sklearn.semi_supervised). To use them, pass unlabeled='contrastive' "
            "(or 'autoencoder', or a pretrainer): the backbone is pretrained on every row, then "
            "fine-tuned on the labeled ones. To ignore them, drop those rows. If -1 is a class "
            "of its own, give the labels another type (e.g. y.astype(str))."
        )
