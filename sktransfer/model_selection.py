"""Successive-halving searches whose surviving candidates resume instead of refitting.

Layer 3. :class:`HalvingGridSearchCV` and :class:`HalvingRandomSearchCV` are scikit-learn's
searches of the same names with the epochs (``max_epochs``) as the resource by default. In
scikit-learn, every round fits fresh clones: a candidate that survives a round of 3 epochs is
trained again from its pretrained weights for 9. Here a fit of a round continues the state that
the fit of the same candidate on the same training rows left in the round before (weights,
optimizer state with its momentum buffers, the random number generators, the history), so that
it trains only the epochs it lacks.

How it fits scikit-learn's machinery: for the length of ``fit``, the search works on a copy of
``estimator`` that carries a *store* (an attribute the estimators keep through
:func:`~sklearn.base.clone`, never a hyperparameter). Every clone that the search fits looks in
the store for a state of its own fit, under a key made of its hyperparameters except
``max_epochs``, its training data and targets, and the epochs that state ran; it resumes the
state with the most epochs below its own ``max_epochs`` and leaves its own state for the next
round. Fits in this process share the store in memory; with ``n_jobs`` other than 1 it is a
folder that worker processes share (a temporary one, or one inside the estimator's ``cache``
folder). Each state is taken out of the store when it is resumed, the states of eliminated
candidates go at the start of each round, and all of them (the folder included) when the
rounds end, before the refit. scikit-learn's own searches never see a store, so they fit
exactly as before.

The learning-rate schedule of every fit of a search spans the epochs of the last round, so that
a resumed fit continues the schedule of an uninterrupted one: a fit of the last round is the
same fit as a plain one with that ``max_epochs`` (the refit too), and the earlier rounds score
their candidates part-way through it, at a learning rate not yet decayed.
"""

from __future__ import annotations

import numbers
import os
import warnings
from math import floor, log

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import HalvingGridSearchCV as _SkHalvingGridSearchCV
from sklearn.model_selection import HalvingRandomSearchCV as _SkHalvingRandomSearchCV

from ._compat import _fit_context
from ._resume import FolderStates, MemoryStates, ResumePoint

__all__ = ["HalvingGridSearchCV", "HalvingRandomSearchCV"]

_RESOURCE = "max_epochs"


# ---------------------------------------------------------------------------------------------
# A search's store, and what a fit looks up in it
# ---------------------------------------------------------------------------------------------


class _SearchStore:
    """The store of one search: the states of its fits (``MemoryStates`` or ``FolderStates``
    of :mod:`sktransfer._resume`) under ``"<candidate>-<data>"`` keys, and the epochs of its
    last round (``final``), which every schedule spans."""

    def __init__(self, states):
        self.states = states
        self.final = None
        self.plan = None
        self.active = True

    def resume_point(self, estimator, X, y):
        """What the fit of ``estimator`` on ``X`` and (encoded) ``y`` continues: a
        :class:`~sktransfer._resume.ResumePoint`, or ``None`` for a plain fit. The
        estimators' ``fit`` calls it."""
        epochs = getattr(estimator, _RESOURCE, None)
        if (not self.active or self.final is None or not _resumable(estimator)
                or not isinstance(epochs, numbers.Integral) or not 0 < epochs <= self.final):
            return None
        key = _fit_key(estimator, X, y)
        if key is None:
            return None
        state = self.states.pop(key, before=int(epochs))
        if state is None and epochs == self.final:
            return None  # a whole fit: its schedule spans the last round's epochs anyway
        return ResumePoint(self, key, epochs, state, schedule_epochs=self.final)

    def put(self, key, epochs, state):
        if self.active:
            self.states.put(key, epochs, state)

    def retain(self, candidates):
        """Drop the states of every candidate (first part of the key) not in ``candidates``."""
        for key, epochs in self.states.keys():
            if key.split("-")[0] not in candidates:
                self.states.discard(key, epochs)

    def release(self):
        """Resume and keep nothing more; free every state (and the folder)."""
        self.active = False
        self.states.release()


def _resumable(estimator):
    """Fits that a later round can continue exactly: not early stopping (its patience and best
    epoch), not through accelerate, not semi-supervised (stage one runs ``max_epochs`` too),
    not continuing a previous fit of the same estimator (``warm_start``)."""
    return (not estimator.early_stopping and estimator.accelerator is None
            and getattr(estimator, "unlabeled", None) is None
            and not (estimator.warm_start and hasattr(estimator, "module_")))


def _candidate_key(estimator):
    """A digest of the hyperparameters except ``max_epochs`` (``None`` if they cannot be
    hashed)."""
    params = {k: v for k, v in estimator.get_params(deep=False).items() if k != _RESOURCE}
    try:
        return joblib.hash((type(estimator).__module__, type(estimator).__qualname__, params))
    except Exception:  # noqa: BLE001 - e.g. a callback that cannot be pickled: no resuming
        return None


def _fit_key(estimator, X, y):
    candidate = _candidate_key(estimator)
    if candidate is None:
        return None
    try:
        return f"{candidate}-{joblib.hash((X, y))}"
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------------------------
# The searches
# ---------------------------------------------------------------------------------------------


def _owner(estimator, resource):
    """The estimator whose ``max_epochs`` is the resource, if it can resume, else ``None``."""
    if resource == _RESOURCE:
        owner = estimator
    elif resource.endswith("__" + _RESOURCE):
        owner = estimator.get_params(deep=True).get(resource[: -len(_RESOURCE) - 2])
    else:
        return None
    return owner if hasattr(type(owner), "_resume_store") else None


def _planned_resources(search, n_candidates):
    """The resource of each round, as scikit-learn's ``_run_search`` computes it."""
    factor, max_r = search.factor, search.max_resources_
    n_required = 1 + floor(log(n_candidates, factor))
    min_r = search.min_resources_
    if search.min_resources == "exhaust":
        min_r = max(min_r, max_r // factor ** (n_required - 1))
    n_possible = 1 + floor(log(max_r // min_r, factor))
    aggressive = search.aggressive_elimination
    n_iterations = n_required if aggressive else min(n_possible, n_required)
    powers = [max(0, i - n_required + n_possible) if aggressive else i
              for i in range(n_iterations)]
    return [min(int(factor ** p * min_r), max_r) for p in powers]


class _ResumingHalvingMixin:
    """What the two searches add to scikit-learn's: ``max_resources="auto"`` for epochs, and
    a store through which the survivors of each round resume."""

    def _check_input_parameters(self, X, y, split_params):
        params = self.estimator.get_params()
        if self.max_resources != "auto" or self.resource not in params:
            return super()._check_input_parameters(X, y, split_params)
        epochs = params[self.resource]
        if not isinstance(epochs, numbers.Integral) or isinstance(epochs, bool) or epochs < 1:
            raise ValueError(
                f"max_resources='auto' takes the estimator's {self.resource}, which is "
                f"{epochs!r}: give the largest number of epochs as max_resources=..."
            )
        self.max_resources = int(epochs)
        try:
            return super()._check_input_parameters(X, y, split_params)
        finally:
            self.max_resources = "auto"

    def _make_store(self, owner):
        if self.resume is not True:
            return _SearchStore(FolderStates(os.fspath(self.resume)))
        if joblib.effective_n_jobs(self.n_jobs) == 1:
            return _SearchStore(MemoryStates())
        cache = owner.get_params().get("cache")
        root = getattr(cache, "location", cache)
        if isinstance(root, (str, os.PathLike)):
            root = os.path.join(os.fspath(root), "sktransfer_resume")
        else:
            root = None
        return _SearchStore(FolderStates(root))

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, **params):
        """Run the search: every candidate for a few epochs, the best ones for more, each
        survivor continuing its fit of the round before.

        Parameters
        ----------
        X : array-like
            Images or vectors, as the estimator's ``fit`` takes them.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs), default=None
            Targets.
        **params : dict
            Passed to the estimator's ``fit``, the scorer and the splitter, as in
            scikit-learn's searches.

        Returns
        -------
        self : object
            The fitted search.

        Examples
        --------
        >>> import numpy as np
        >>> from sktransfer import TransferClassifier
        >>> from sktransfer.model_selection import HalvingGridSearchCV
        >>> X = np.random.RandomState(0).rand(30, 16, 16, 3).astype(np.float32)
        >>> y = np.array([0, 1, 2] * 10)
        >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=3, freeze_depth=1,
        ...                          random_state=0)
        >>> search = HalvingGridSearchCV(clf, {"lr": [0.1, 0.01, 0.001]}, cv=2).fit(X, y)
        >>> search.n_resources_, search.best_estimator_.n_iter_
        ([1, 3], 3)
        """
        owner = _owner(self.estimator, self.resource)
        if self.resume is False or owner is None:
            return super().fit(X, y, **params)
        original, estimator = self.estimator, clone(self.estimator)
        store = self._make_store(owner)
        _owner(estimator, self.resource)._resume_store = store
        self.estimator = estimator  # for this fit only: base of every clone the search fits
        try:
            return super().fit(X, y, **params)
        finally:
            self.estimator = original
            store.release()
            best = getattr(self, "best_estimator_", None)
            if best is not None:
                vars(_owner(best, self.resource)).pop("_resume_store", None)

    def _run_search(self, evaluate_candidates, *, callback_ctx=None):
        owner = _owner(self.estimator, self.resource)
        store = vars(owner).get("_resume_store") if owner is not None else None
        if store is None:
            return super()._run_search(evaluate_candidates, callback_ctx=callback_ctx)
        try:
            return super()._run_search(self._resuming(evaluate_candidates, store),
                                       callback_ctx=callback_ctx)
        finally:
            store.release()  # before the refit, which starts from nothing stored

    def _resuming(self, evaluate_candidates, store):
        """``evaluate_candidates`` with the store told the plan of rounds and, at the start of
        each round, rid of the states of the candidates that did not survive."""
        base = self.estimator

        def evaluate(candidate_params, cv=None, more_results=None, callback_ctx=None):
            candidate_params = list(candidate_params)
            itr, n_resources = more_results["iter"][0], more_results["n_resources"][0]
            if itr == 0:
                plan = _planned_resources(self, len(candidate_params))
                store.plan, store.final = plan, plan[-1]
            if itr >= len(store.plan) or store.plan[itr] != n_resources:
                if store.active:
                    warnings.warn("The rounds of this search differ from the plan the "
                                  "resuming store was given; its fits no longer resume.",
                                  RuntimeWarning, stacklevel=2)
                store.release()
            elif itr > 0:
                store.retain({
                    _candidate_key(_owner(clone(base).set_params(**params), self.resource))
                    for params in candidate_params
                })
            return evaluate_candidates(candidate_params, cv, more_results=more_results,
                                       callback_ctx=callback_ctx)

        return evaluate


_COMMON_PARAMETERS = """
    factor : int or float, default=3
        The proportion of candidates kept after each round (``1 / factor``), and the growth of
        the resource from round to round.
    resource : str, default="max_epochs"
        The hyperparameter that grows from round to round. ``"max_epochs"`` (or
        ``"<step>__max_epochs"`` in a pipeline) resumes the survivors; another hyperparameter,
        or ``"n_samples"``, makes this scikit-learn's search.
    max_resources : int or "auto", default="auto"
        The most epochs a candidate trains. ``"auto"``: the estimator's own ``max_epochs``
        (with ``resource="n_samples"``: the number of samples, as in scikit-learn).
    min_resources : {"exhaust", "smallest"} or int, default="MIN_DEFAULT"
        The epochs of the first round; ``"exhaust"`` chooses them so that the last round
        trains as close to ``max_resources`` as the factor allows, ``"smallest"`` is 1.
    aggressive_elimination : bool, default=False
        Keep the first round's resource for as many rounds as it takes to leave ``factor``
        candidates by the last round (see scikit-learn's search).
    cv : int, cross-validation generator or iterable, default=5
        As in scikit-learn; its splits must be the same on every call (a ``random_state``
        with ``shuffle=True``).
    scoring : str, callable or None, default=None
        A single score (the estimator's ``score`` for ``None``).
    refit : bool or callable, default=True
        Refit the best candidate of the last round on the whole data (from the start, with
        the ``max_epochs`` of the last round) as ``best_estimator_``.
    error_score : "raise" or float, default=np.nan
        The score of a fit that raised; ``"raise"`` raises.
    return_train_score : bool, default=True
        Also score the training folds (as scikit-learn's halving searches do by default).
    random_state : int, RandomState instance or None, default=None
        Seeds the subsampling of ``resource="n_samples"``RANDOM_EXTRA.
    n_jobs : int or None, default=None
        Fits in parallel (joblib). With more than one, the states pass between worker
        processes through a folder.
    verbose : int, default=0
        Messages about the rounds and the fits.
    resume : bool, str or path-like, default=True
        ``True``: each survivor continues its fit of the previous round; the states are kept
        in memory when the fits run in this process, else in a temporary folder (inside the
        estimator's ``cache`` folder when it has one). A folder: the states are kept in a new
        folder inside it (for worker processes on other machines, a folder they share).
        ``False``: every round fits from the start, as scikit-learn does. The states are
        released when the rounds end, before the refit."""

_COMMON_NOTES = """
    A fit of a round continues the state that the fit of the same candidate (hyperparameters
    except ``max_epochs``, ``random_state`` included) on the same training rows left in the
    previous round: weights, optimizer state (momentum buffers), data-loader and global random
    generators, history. Its ``lr_schedule`` spans the epochs of the last round, so that a fit
    of the last round is the same fit as a plain one with that ``max_epochs`` (as the refit
    is), while the earlier rounds score the candidates before the learning rate has decayed.
    Fits with ``early_stopping``, ``accelerator`` or ``unlabeled`` start over in each round;
    with ``lr="auto"`` the range test reruns in each round (with the same result).
    ``cv_results_["mean_fit_time"]`` of a resumed fit counts only the epochs it trained."""

_ATTRIBUTES = """
    Attributes
    ----------
    cv_results_ : dict of numpy arrays
        One row per candidate and round, as in scikit-learn's search (``iter`` and
        ``n_resources`` name the round).
    best_estimator_ : estimator
        The best candidate of the last round, refitted on the whole data (``refit=True``).
    best_params_ : dict
        Its hyperparameters, with the ``max_epochs`` of the last round.
    best_score_ : float
        Its mean cross-validated score in the last round.
    n_resources_ : list of int
        The epochs of each round.
    n_candidates_ : list of int
        The candidates of each round."""


class HalvingGridSearchCV(_ResumingHalvingMixin, _SkHalvingGridSearchCV):
    __doc__ = """Successive halving over a grid, the surviving candidates resuming their fits.

    scikit-learn's :class:`~sklearn.model_selection.HalvingGridSearchCV`, with the epochs as
    the resource by default. The first round fits every candidate of ``param_grid`` for a few
    epochs; each round keeps the best ``1 / factor`` of them and trains them for ``factor``
    times as many epochs, up to ``max_resources``. Each survivor trains only the epochs it
    lacks. See :ref:`hyperparameter-search`.

    Parameters
    ----------
    estimator : estimator object
        A :class:`~sktransfer.TransferClassifier` or :class:`~sktransfer.TransferRegressor`
        (or a pipeline ending in one, with ``resource="<step>__max_epochs"``).
    param_grid : dict or list of dicts
        The hyperparameters to try, as for :class:`~sklearn.model_selection.GridSearchCV`
        (never ``max_epochs``: it is the resource).""" + _COMMON_PARAMETERS.replace(
        "MIN_DEFAULT", "exhaust").replace("RANDOM_EXTRA", "") + _ATTRIBUTES + """

    See Also
    --------
    HalvingRandomSearchCV : The same over sampled candidates.

    Notes
    -----""" + _COMMON_NOTES + """

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> from sktransfer.model_selection import HalvingGridSearchCV
    >>> X = np.random.RandomState(0).rand(30, 16, 16, 3).astype(np.float32)
    >>> y = np.array([0, 1, 2] * 10)
    >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=3, random_state=0)
    >>> search = HalvingGridSearchCV(clf, {"lr": [0.1, 0.01, 0.001]}, cv=2).fit(X, y)
    >>> search.n_candidates_, search.n_resources_
    ([3, 1], [1, 3])
    >>> sorted(search.best_params_)
    ['lr', 'max_epochs']
    """

    _parameter_constraints = {
        **_SkHalvingGridSearchCV._parameter_constraints,
        "resume": ["boolean", str, os.PathLike],
    }

    def __init__(self, estimator, param_grid, *, factor=3, resource=_RESOURCE,
                 max_resources="auto", min_resources="exhaust", aggressive_elimination=False,
                 cv=5, scoring=None, refit=True, error_score=np.nan, return_train_score=True,
                 random_state=None, n_jobs=None, verbose=0, resume=True):
        super().__init__(
            estimator, param_grid, factor=factor, resource=resource,
            max_resources=max_resources, min_resources=min_resources,
            aggressive_elimination=aggressive_elimination, cv=cv, scoring=scoring,
            refit=refit, error_score=error_score, return_train_score=return_train_score,
            random_state=random_state, n_jobs=n_jobs, verbose=verbose,
        )
        self.resume = resume


class HalvingRandomSearchCV(_ResumingHalvingMixin, _SkHalvingRandomSearchCV):
    __doc__ = """Successive halving over sampled candidates, the survivors resuming their fits.

    scikit-learn's :class:`~sklearn.model_selection.HalvingRandomSearchCV`, with the epochs as
    the resource by default, and rounds as in :class:`HalvingGridSearchCV`.

    Parameters
    ----------
    estimator : estimator object
        A :class:`~sktransfer.TransferClassifier` or :class:`~sktransfer.TransferRegressor`
        (or a pipeline ending in one, with ``resource="<step>__max_epochs"``).
    param_distributions : dict or list of dicts
        Lists or scipy.stats distributions to sample candidates from, as for
        :class:`~sklearn.model_selection.RandomizedSearchCV` (never ``max_epochs``).
    n_candidates : int or "exhaust", default="exhaust"
        Candidates of the first round; ``"exhaust"``: as many as let the last round use
        ``max_resources``.""" + _COMMON_PARAMETERS.replace(
        "MIN_DEFAULT", "smallest").replace(
        "RANDOM_EXTRA", " and the sampling of the candidates") + _ATTRIBUTES + """

    See Also
    --------
    HalvingGridSearchCV : The same over a grid.

    Notes
    -----""" + _COMMON_NOTES + """

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> from sktransfer.model_selection import HalvingRandomSearchCV
    >>> X = np.random.RandomState(0).rand(30, 16, 16, 3).astype(np.float32)
    >>> y = np.array([0, 1, 2] * 10)
    >>> clf = TransferClassifier("test_cnn", weights=None, max_epochs=3, random_state=0)
    >>> search = HalvingRandomSearchCV(clf, {"lr": [0.1, 0.03, 0.01, 0.001]}, n_candidates=3,
    ...                                cv=2, random_state=0).fit(X, y)
    >>> search.n_candidates_, search.n_resources_
    ([3, 1], [1, 3])
    """

    _parameter_constraints = {
        **_SkHalvingRandomSearchCV._parameter_constraints,
        "resume": ["boolean", str, os.PathLike],
    }

    def __init__(self, estimator, param_distributions, *, n_candidates="exhaust", factor=3,
                 resource=_RESOURCE, max_resources="auto", min_resources="smallest",
                 aggressive_elimination=False, cv=5, scoring=None, refit=True,
                 error_score=np.nan, return_train_score=True, random_state=None, n_jobs=None,
                 verbose=0, resume=True):
        super().__init__(
            estimator, param_distributions, n_candidates=n_candidates, factor=factor,
            resource=resource, max_resources=max_resources, min_resources=min_resources,
            aggressive_elimination=aggressive_elimination, cv=cv, scoring=scoring,
            refit=refit, error_score=error_score, return_train_score=return_train_score,
            random_state=random_state, n_jobs=n_jobs, verbose=verbose,
        )
        self.resume = resume
