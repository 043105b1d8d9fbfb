"""TransferClassifier: fine-tune a pretrained backbone for classification."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import column_or_1d

from ._base import TransferEstimatorMixin
from ._compat import HasMethods, Interval, StrOptions, _fit_context
from ._domain import fit_with_unlabeled
from ._semi_supervised import refuse_unlabeled_marker

__all__ = ["TransferClassifier"]


class WeightedCrossEntropy(torch.nn.Module):
    """Cross-entropy with per-class weights that scale each sample's loss, averaged over the
    batch (scikit-learn's meaning of ``class_weight``; torch's weighted mean divides by the
    batch's total weight instead, which undoes the weighting in single-class batches), and
    optional label smoothing."""

    def __init__(self, weight=None, label_smoothing=0.0):
        super().__init__()
        self.class_weights = None if weight is None else np.asarray(weight, dtype=np.float64)
        self.label_smoothing = float(label_smoothing)
        if weight is None:
            self.weight = None
        else:
            self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits, target):
        # the weight of each sample's class scales its whole (smoothed) loss; torch's
        # ``weight=`` would also weight each class's share of the smoothing term
        losses = torch.nn.functional.cross_entropy(
            logits, target, reduction="none", label_smoothing=self.label_smoothing,
        )
        if self.weight is not None:
            losses = losses * self.weight[target]
        return losses.mean()


class _Criterion:
    """A picklable factory of :class:`WeightedCrossEntropy` that tells the fit recipe the
    class weights (the linear-probe head start weights the classes the same way)."""

    def __init__(self, class_weights, label_smoothing):
        self.class_weights = class_weights
        self.label_smoothing = label_smoothing

    def __call__(self):
        return WeightedCrossEntropy(self.class_weights, self.label_smoothing)


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
        Learning rate of the new head (the peak rate with a schedule). ``"auto"`` runs a
        learning-rate range test on the training data first (as fastai's ``lr_find``, on a
        copy of the network: up to 100 batches with the rate growing from 1e-7 to 10; see the
        user guide for its cost) and trains with the rate where the loss fell fastest
        (``lr_``).
    lr_schedule : {"constant", "cosine", "onecycle"}, default="cosine"
        How the learning rate moves over the ``max_epochs`` epochs, set before every batch:
        constant; cosine decay to 0 after a linear warm-up over the first 10 % of the steps
        (timm); or fastai's one-cycle (from ``lr / 25`` up to ``lr`` over the first 25 %,
        then down to ``lr / 1e5``, with the momentum cycling inversely down to 0.85/0.95 of
        its value).
    layer_decay : float in (0, 1], default=1.0
        Discriminative learning rates: the trainable stages, counting back from the head, get
        ``lr x layer_decay ** i`` (the last stage ``i = 1``), as timm's layer decay over the
        stages that ``freeze_depth`` counts. 1.0 trains every stage at ``lr``.
    head_init : {"auto", "random", "linear_probe"}, default="auto"
        How the new head starts. ``"linear_probe"`` fits a linear model (multinomial logistic
        regression, ridge for the regressor) on the frozen pretrained features of the training
        images first and starts from it (LP-FT, Kumar et al. 2022), so the first gradients
        do not reach the pretrained stages at full strength. The features come from the
        activation cache. With ``freeze_depth="all"`` the probe is the trained head: no
        epoch runs.
        ``"auto"`` is ``"linear_probe"`` (``head_init_``).
    momentum : float, default=0.9
        SGD momentum (for ``optimizer="adamw"``: the first Adam beta).
    optimizer : {"sgd", "adamw"}, default="sgd"
        The optimiser.
    weight_decay : float, default=0.0
        L2 penalty (decoupled for AdamW).
    l2_sp : float, default=0.01
        Strength of L2-SP (Li et al. 2018): a penalty ``l2_sp / 2 x ||w - w0||^2`` that pulls
        the trained stages' weights towards those they started from (the pretrained ones)
        instead of towards 0. When it is on, ``weight_decay`` applies to the head only.
    max_epochs : int or "auto", default="auto"
        Passes over the training data. ``"auto"`` gives fine-tuning a budget of about 160
        optimizer steps, as 3 to 12 epochs (``max_epochs_``; 0 when the model is the linear
        probe and no epoch runs).
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
    augment : {"flip", "light"}, callable or None, default=None
        Data augmentation while training (never in ``predict``): ``"flip"`` flips each image
        horizontally half of the time (on the activation cache: the frozen stages' outputs of
        both views are stored once, so it costs no more epochs of the frozen stages);
        ``"light"`` takes a random crop of 70-100 % of each image's area, resized back, and
        flips it horizontally half of the time; a callable (e.g. a torchvision transform) gets
        each image as a float32 ``(C, H, W)`` tensor in [0, 1] and returns one of the same
        shape. Seeded by ``random_state``. Except for ``"flip"``, frozen-stage outputs change
        with every draw, so the ``cache`` is bypassed. See :mod:`sktransfer.augment`.
    batchnorm : {"trained", "all", "checkpoint"} or float, default="trained"
        Which BatchNorm layers update their running statistics, and how fast. ``"trained"``:
        those of trained stages, with momentum 0.1 (checkpoints converted from TensorFlow carry
        0.01, too slow to settle in a short fine-tuning run); frozen stages stay in eval mode.
        ``"all"``: frozen stages' BatchNorm layers update their statistics too (adapting them
        to a new domain). ``"checkpoint"``: trained layers keep the checkpoint's momentum. A
        float: ``"trained"`` with that momentum.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss.
    label_smoothing : float in [0, 1), default=0.1
        Share of each target's probability spread evenly over the classes in the
        cross-entropy (Szegedy et al. 2016), which keeps the network from growing
        over-confident on few images.
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
        Seeds head initialisation, shuffling, splits, dropout and augmentation (a callable
        ``augment`` drawing from numpy or ``random`` too). Fits with the same value are
        bitwise identical on CPU. The global generators are left as found; fits run in
        threads of one process share torch's, so run parallel searches in processes
        (joblib's default backend) to keep them reproducible.
    verbose : int, default=0
        0 is silent, 1 prints what the ``"auto"`` values became and the epoch table, 2 adds a
        progress bar.
    callbacks : list or None, default=None
        Extra skorch callbacks (instances or ``(name, callback)`` tuples).
    warm_start : bool, default=False
        Continue from the previous fit instead of the pretrained weights and a fresh head.
    tta : bool, default=False
        Test-time augmentation: ``predict``, ``predict_proba`` and ``score`` average over the
        images as given and flipped left-right (twice the prediction time).
    unlabeled : {"adabn", "coral", "mcc", "dann", "contrastive", "autoencoder"}, pretrainer \
            or None, \
            default=None
        What the unlabeled rows of ``fit`` are for: rows of y labelled -1 (scikit-learn's
        marker of unlabeled samples, as in :mod:`sklearn.semi_supervised`, and skada's), and
        the rows that ``sample_domain`` puts in a target domain (negative values).

        Domain adaptation (the unlabeled rows are images of the domain to predict, whose
        look differs from the labeled ones'; see the user guide, "Adapting to another
        domain"): ``"coral"`` (Deep CORAL: the covariances of the backbone's pooled
        features made alike), ``"mcc"`` (Minimum Class Confusion of the predictions on the
        unlabeled rows) or ``"dann"`` (a domain discriminator trained against the backbone
        through gradient reversal). Each training batch of labeled rows is joined by as many
        unlabeled rows, each domain normalised by its own batch statistics;
        ``unlabeled_weight`` sets the strength. At the end the BatchNorm statistics of the
        trained stages are recomputed on the unlabeled rows (AdaBN), so the model is for the
        target domain; ``"adabn"`` does only that, at the cost of a source-only fit. The
        frozen stages' outputs of all rows are cached as usual. ``freeze_depth="auto"`` then
        always fine-tunes the last stages.

        Semi-supervised pretraining: ``fit`` runs stage
        one, self-supervised pretraining of the backbone on every row of X (starting from
        ``weights``; see :mod:`sktransfer.pretraining`), and fine-tunes the pretrained
        backbone on the labeled rows. ``"contrastive"`` and ``"autoencoder"`` use
        :class:`~sktransfer.pretraining.ContrastivePretrainer` or
        :class:`~sktransfer.pretraining.AutoencoderPretrainer` with their defaults (and
        this classifier's ``max_epochs`` unless it is ``"auto"``); a pretrainer instance
        sets stage one's own hyperparameters (its
        ``backbone``, ``weights``, ``input_size``, ``image_shape``, ``grayscale`` and
        ``device`` are this classifier's, so the stages fit). With ``warm_start`` and a
        previous fit, stage one is skipped. ``None``: every row is
        labeled, and integer (or integral float) y holding -1 beside two or more other
        labels is refused with a ``ValueError`` rather than -1 taken for a class (binary
        ``{-1, 1}`` labels are classes as usual).
    unlabeled_weight : float, default=1.0
        Strength of the domain adaptation: the training loss is the labeled rows'
        cross-entropy plus ``unlabeled_weight`` times the adaptation loss (for ``"dann"``,
        the weight of the reversed gradient, ramped up from 0 over the fit). Choose it
        without target labels with the scorers of :mod:`sktransfer.adaptation`. Unused
        unless ``unlabeled`` is an adaptation method.

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
        The learning rate trained with: ``lr``, or the range test's suggestion for
        ``lr="auto"``; ``None`` when no epoch ran (``head_init="linear_probe"`` with
        ``freeze_depth="all"``).
    lr_range_test_ : dict or None
        For ``lr="auto"``: the range test's curve, ``{"lr": [...], "loss": [...]}`` (the
        smoothed training loss at each rate); ``None`` otherwise.
    n_features_in_ : int
        Values per sample seen in ``fit``.
    input_spec_ : InputSpec
        Layout, per-sample shape and scaling of the training input.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
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
        "label_smoothing": [Interval(numbers.Real, 0, 1, closed="left")],
        "unlabeled": [StrOptions({"contrastive", "autoencoder", "adabn", "coral", "mcc", "dann"}),
                      HasMethods(["fit", "transform", "save_weights"]), None],
        "unlabeled_weight": [Interval(numbers.Real, 0, None, closed="left")],
    }
    # sample_domain reaches fit when metadata routing is on, without set_fit_request
    __metadata_request__fit = {"sample_domain": True}
    _persisted = {**TransferEstimatorMixin._persisted, "classes_": "labels"}
    _is_classifier = True

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
        class_weight=None,
        label_smoothing=0.1,
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
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing
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
        refuse_unlabeled_marker(y)
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
        if weights is None and not self.label_smoothing:
            return torch.nn.CrossEntropyLoss
        return _Criterion(weights, self.label_smoothing)

    # -- public API -----------------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_domain=None):
        """Fine-tune on images (or vectors) X and labels y.

        Parameters
        ----------
        X : array-like
            Images ``(N, H, W, C)``, ``(N, C, H, W)`` or ``(N, H, W)``; or ``(N, F)`` vectors.
        y : array-like of shape (n_samples,)
            Labels of any type. With ``unlabeled`` set, -1 marks the unlabeled rows.
        sample_domain : array-like of shape (n_samples,) or None, default=None
            The domain of each row (skada's convention): a positive integer for a source
            domain, a negative one for a target domain, whose rows count as unlabeled
            whatever y holds. ``None``: the rows labelled -1 are the target domain. Routed
            to ``fit`` by scikit-learn's metadata routing when it is on (requested by
            default); passed as a fit parameter otherwise (``GridSearchCV.fit(X, y,
            sample_domain=...)``).

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
        return fit_with_unlabeled(self, X, y, sample_domain)

    def predict_proba(self, X, sample_domain=None):
        """Class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : array-like
            Inputs shaped like those given to ``fit``.
        sample_domain : array-like or None, default=None
            Ignored: accepted for domain-aware scorers (skada's) that pass it.

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
        logits = torch.from_numpy(self._forward(X)).double()
        return torch.softmax(logits, dim=2).mean(0).numpy()

    def predict_log_proba(self, X, sample_domain=None):
        """Log of :meth:`predict_proba`, computed without underflow.

        Parameters
        ----------
        X : array-like
            Inputs shaped like those given to ``fit``.
        sample_domain : array-like or None, default=None
            Ignored: accepted for domain-aware scorers (skada's) that pass it.

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
        logits = torch.from_numpy(self._forward(X)).double()
        log_proba = torch.log_softmax(logits, dim=2)
        return (torch.logsumexp(log_proba, dim=0) - np.log(len(log_proba))).numpy()

    def predict(self, X, sample_domain=None):
        """Predicted labels, from ``classes_``.

        Parameters
        ----------
        X : array-like
            Inputs shaped like those given to ``fit``.
        sample_domain : array-like or None, default=None
            Ignored: accepted for domain-aware scorers (skada's) that pass it.

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
        if len(scores) > 1:  # test-time augmentation: the mean probability decides
            scores = torch.softmax(torch.from_numpy(scores).double(), dim=2).mean(0).numpy()
        else:
            scores = scores[0]
        return self.classes_[np.argmax(scores, axis=1)]
