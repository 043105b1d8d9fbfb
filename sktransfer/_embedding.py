"""The embedding display of :mod:`sktransfer.inspection`: backbone features mapped to 2-D."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.utils.multiclass import type_of_target

from ._runtime import batched_features
from ._saliency import check_estimator, inspecting, network_input
from .plotting import _import_pyplot


class EmbeddingDisplay:
    """A 2-D map of a network's features, coloured by class (or by target value).

    Each point is an image; the map is a :class:`~sklearn.decomposition.PCA` or a
    :class:`~sklearn.manifold.TSNE` of the backbone's pooled features. Drawn for the
    pretrained and for the fine-tuned features of the same images, it shows where fine-tuning
    pulled the classes apart. The silhouette score in the title is computed on the features
    themselves (not on the 2-D map): from -1 to 1, higher when each class sits apart.

    Parameters
    ----------
    embedding : array-like of shape (n_samples, 2)
        The 2-D coordinates.
    y : array-like of shape (n_samples,)
        Class labels, or continuous targets (drawn with a colour bar).
    title : str, default=None
        Title of the axes.
    silhouette : float, default=None
        Silhouette score of the features, appended to the title when given.

    Attributes
    ----------
    figure_ : matplotlib.figure.Figure
        The figure.
    ax_ : matplotlib.axes.Axes
        The axes of the map.

    See Also
    --------
    sktransfer.TransferFeatures : Pretrained features for any scikit-learn model.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sktransfer.inspection import EmbeddingDisplay
    >>> features = np.r_[np.zeros((5, 3)), np.ones((5, 3))]
    >>> features += np.random.RandomState(0).rand(10, 3) * 0.1
    >>> disp = EmbeddingDisplay.from_features(features, ["a"] * 5 + ["b"] * 5, title="demo")
    >>> disp.embedding.shape, round(disp.silhouette, 2), disp.ax_.get_title()
    ((10, 2), 0.96, 'demo (silhouette 0.96)')
    """

    def __init__(self, embedding, y, *, title=None, silhouette=None):
        self.embedding = embedding
        self.y = y
        self.title = title
        self.silhouette = silhouette

    def plot(self, *, ax=None, legend=True, s=12, cmap="viridis"):
        """Draw the map.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, default=None
            Axes to draw on; ``None`` creates a figure.
        legend : bool, default=True
            Show the classes' legend (or the colour bar of continuous targets).
        s : float, default=12
            Marker size.
        cmap : str, default="viridis"
            Colormap of continuous targets (classes take the ``tab10``/``tab20`` colours).

        Returns
        -------
        display : EmbeddingDisplay
            With ``figure_`` and ``ax_`` set.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sktransfer.inspection import EmbeddingDisplay
        >>> disp = EmbeddingDisplay(np.eye(3, 2), ["x", "y", "y"]).plot()
        >>> [t.get_text() for t in disp.ax_.get_legend().get_texts()]
        ['x', 'y']
        """
        plt = _import_pyplot("EmbeddingDisplay", "inspect")
        embedding = np.asarray(self.embedding, dtype=np.float64)
        y = np.asarray(self.y)
        if embedding.ndim != 2 or embedding.shape[1] != 2 or len(embedding) != len(y):
            raise ValueError(
                f"embedding must have shape (n_samples, 2) with one row per entry of y "
                f"({len(y)}), got {embedding.shape}."
            )
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 4.2), layout="constrained")
        if _continuous(y):
            points = ax.scatter(*embedding.T, c=y.astype(float), s=s, cmap=cmap)
            if legend:
                ax.figure.colorbar(points, ax=ax, label="target")
        else:
            labels = np.unique(y)
            colours = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
            for j, label in enumerate(labels.tolist()):
                mask = y == label
                ax.scatter(*embedding[mask].T, s=s, color=colours(j % colours.N),
                           label=str(label))
            if legend:
                ax.legend(fontsize=8, markerscale=1.5, loc="best", framealpha=0.7)
        title = self.title or ""
        if self.silhouette is not None:
            title = f"{title} (silhouette {self.silhouette:.2f})".strip()
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        self.figure_, self.ax_ = ax.figure, ax
        return self

    @classmethod
    def from_features(cls, features, y, *, method="pca", random_state=None, title=None,
                      ax=None):
        """Map precomputed features to 2-D and plot them.

        Parameters
        ----------
        features : array-like of shape (n_samples, n_features)
            Features of the images, e.g. from :class:`~sktransfer.TransferFeatures`.
        y : array-like of shape (n_samples,)
            Class labels or continuous targets.
        method : {"pca", "tsne"}, default="pca"
            :class:`~sklearn.decomposition.PCA` (linear, fast, faithful to distances) or
            :class:`~sklearn.manifold.TSNE` (neighbourhoods, slower; the perplexity is
            lowered for small data sets).
        random_state : int, RandomState instance or None, default=None
            Seed of the 2-D map.
        title : str, default=None
            Title of the axes.
        ax : matplotlib.axes.Axes, default=None
            Axes to draw on; ``None`` creates a figure.

        Returns
        -------
        display : EmbeddingDisplay
            Plotted.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sktransfer.inspection import EmbeddingDisplay
        >>> features = np.random.RandomState(0).rand(30, 4)
        >>> disp = EmbeddingDisplay.from_features(features, features[:, 0], method="tsne",
        ...                                       random_state=0)
        >>> disp.embedding.shape, disp.silhouette is None
        ((30, 2), True)
        """
        features = np.asarray(features, dtype=np.float64)
        y = np.asarray(y)
        if features.ndim != 2 or len(features) != len(y):
            raise ValueError(
                f"features must be 2-D with one row per entry of y ({len(y)}), got shape "
                f"{features.shape}."
            )
        embedding = _embed(features, method, random_state)
        disp = cls(embedding, y, title=title, silhouette=_silhouette(features, y))
        return disp.plot(ax=ax)

    @classmethod
    def from_estimator(cls, estimator, X, y, *, features="fine-tuned", method="pca",
                       random_state=None, ax=None):
        """Map the backbone features of a fitted estimator, or of its pretrained backbone.

        Parameters
        ----------
        estimator : TransferClassifier or TransferRegressor
            A fitted estimator.
        X : array-like, list of paths or of PIL images
            Inputs in any form ``predict`` accepts.
        y : array-like of shape (n_samples,)
            Their labels (or targets), which colour the points.
        features : {"fine-tuned", "pretrained"}, default="fine-tuned"
            The features of the fitted network (what its head sees), or those of the
            network as ``fit`` built it from ``estimator.weights``, before training: the map
            before fine-tuning. (With ``weights=None`` that random network is drawn again from
            an integer ``random_state``; other values give another random draw.) Refused with
            a ValueError where ``weights`` no longer gives the weights the fit started from
            (``weights_``): after a semi-supervised fit (``unlabeled=...``, whose fine-tuning
            starts from its stage one, not kept), or when the weights folder was rewritten.
        method : {"pca", "tsne"}, default="pca"
            The 2-D map, as for :meth:`from_features`.
        random_state : int, RandomState instance or None, default=None
            Seed of the 2-D map.
        ax : matplotlib.axes.Axes, default=None
            Axes to draw on; ``None`` creates a figure.

        Returns
        -------
        display : EmbeddingDisplay
            Plotted, titled with the features used.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sktransfer import TransferClassifier
        >>> from sktransfer.inspection import EmbeddingDisplay
        >>> X = np.random.RandomState(0).rand(30, 16, 16, 3).astype(np.float32)
        >>> y = np.array(["cat", "dog", "fox"] * 10)
        >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=2, random_state=0)
        >>> disp = EmbeddingDisplay.from_estimator(clf.fit(X, y), X, y, random_state=0)
        >>> disp.embedding.shape, disp.ax_.get_title().startswith("fine-tuned features")
        ((30, 2), True)
        """
        check_estimator(estimator, images=False)
        if features not in ("fine-tuned", "pretrained"):
            raise ValueError(
                f"features={features!r} is not supported; use 'fine-tuned' or 'pretrained'."
            )
        y = np.asarray(y)
        feats = _backbone_features(estimator, X, pretrained=features == "pretrained")
        if len(y) != len(feats):
            raise ValueError(f"y has {len(y)} entries but X has {len(feats)} samples.")
        title = f"{features} features ({estimator.backbone_name_})"
        return cls.from_features(feats, y, method=method, random_state=random_state,
                                 title=title, ax=ax)


def _continuous(y):
    return y.dtype.kind in "fc" and type_of_target(y) == "continuous"


def _embed(features, method, random_state):
    if method not in ("pca", "tsne"):
        raise ValueError(f"method={method!r} is not supported; use 'pca' or 'tsne'.")
    n, d = features.shape
    if n < 3 or d < 2:
        raise ValueError(
            f"A 2-D map needs at least 3 samples with at least 2 features, got {n} samples "
            f"with {d}."
        )
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=random_state).fit_transform(features)
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (n - 1) / 3.0)
    return TSNE(n_components=2, perplexity=perplexity, init="pca",
                random_state=random_state).fit_transform(features)


def _silhouette(features, y):
    if _continuous(y):
        return None
    n_labels = len(np.unique(y))
    if not 2 <= n_labels < len(y):
        return None
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(features, y))


def _backbone_features(estimator, X, *, pretrained):
    """Pooled backbone features of the fitted network (what its head sees), or of the network
    its fit started from."""
    source, _ = network_input(estimator, X)
    with inspecting(estimator) as fitted, torch.no_grad():
        net = _starting_network(estimator, source) if pretrained else fitted
        return batched_features(net, source, estimator.device_, estimator._infer_batch_size())


def _starting_network(estimator, source):
    """The network as ``fit`` built it, before training: the estimator's own builder with its
    ``weights`` (with ``weights=None``, drawn as ``fit`` draws it from an integer
    ``random_state``). Refused when ``weights`` no longer gives the weights the fit started
    from (``weights_``): a semi-supervised fit, or a weights folder rewritten since."""
    if isinstance(estimator.random_state, numbers.Integral):
        # the caller's scope restores the global state after
        torch.default_generator.manual_seed(int(estimator.random_state))
    sample = source.batch(np.arange(min(len(source), 2)))
    built = estimator._build_network(estimator.input_spec_, estimator._n_outputs_fitted(),
                                     sample, weights=estimator.weights)
    if built.weights != estimator.weights_:
        if getattr(estimator, "unlabeled", None) is not None:
            raise ValueError(
                "features='pretrained' needs the network this fit started from: the backbone "
                f"that stage one of unlabeled={estimator.unlabeled!r} pretrained "
                f"(weights_={estimator.weights_!r}), which the estimator does not keep. To "
                "map it, pretrain in a step of your own (sktransfer.pretraining."
                "ContrastivePretrainer(...).fit(X), then .save_weights(folder)) and fit the "
                "classifier on the labeled rows with weights=folder; or use "
                "features='fine-tuned'."
            )
        raise ValueError(
            f"features='pretrained' rebuilds the network this fit started from, from "
            f"weights={estimator.weights!r}, which now gives {built.weights!r}, not the "
            f"{estimator.weights_!r} the fit started from. Refit, or restore those weights; "
            "or use features='fine-tuned'."
        )
    return built.net.to(estimator.device_).eval()
