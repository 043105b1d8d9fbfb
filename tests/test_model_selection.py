"""sktransfer.model_selection: successive halving whose survivors resume their fits.

Every check is exact: a resumed fit against an uninterrupted one, a resuming search against
scikit-learn's, the epochs trained counted by a callback. Nothing times anything.
"""

import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import FitFailedWarning
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.model_selection import HalvingGridSearchCV as SkHalvingGridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from skorch.callbacks import Callback

from sktransfer import TransferClassifier, TransferRegressor
from sktransfer._resume import FolderStates, MemoryStates
from sktransfer._schedules import StepSchedule
from sktransfer.model_selection import HalvingGridSearchCV, HalvingRandomSearchCV, _SearchStore

EPOCHS = []  # one entry per epoch trained by a fit with an EpochCounter (this process only)


class EpochCounter(Callback):
    """Counts the epochs that fits train (deep-copied into each fit, the list is shared)."""

    def on_epoch_end(self, net, **kwargs):
        EPOCHS.append(len(net.history))


@pytest.fixture(autouse=True)
def _no_epochs_counted():
    EPOCHS.clear()
    yield
    EPOCHS.clear()


def _cnn(**params):
    # a depth and a head that train whatever the data size ("auto" may pick the probe)
    defaults = dict(weights=None, max_epochs=5, batch_size=8, random_state=0, freeze_depth=1,
                    head_init="random", callbacks=[EpochCounter()])
    return TransferClassifier("test_cnn", **{**defaults, **params})


def _store(states=None, final=5):
    store = _SearchStore(MemoryStates() if states is None else states)
    store.final = store.plan = final
    return store


def _with_store(est, store):
    est = clone(est)
    est._resume_store = store
    return est


CV = StratifiedKFold(2, shuffle=True, random_state=0)
GRID = {"lr": [0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 3e-4, 1e-4, 3e-5]}


# -- the schedule --------------------------------------------------------------------------


def test_a_schedule_resumed_at_start_epoch_continues_the_rates():
    def rates(schedule_epochs, start_epoch, epochs):
        optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
        net = SimpleNamespace(batch_size=4, max_epochs=epochs, optimizer_=optimizer,
                              history=[])
        cb = StepSchedule("cosine", 0.9, schedule_epochs=schedule_epochs,
                          start_epoch=start_epoch).initialize()
        cb.on_train_begin(net, X=np.zeros(10))
        out = []
        for _ in range(3 * epochs):  # 3 batches per epoch
            out.append(optimizer.param_groups[0]["lr"])
            cb.on_batch_end(net, training=True)
        return out

    assert rates(None, 0, 5) == pytest.approx(rates(5, 0, 2) + rates(5, 2, 3))
    assert rates(None, 0, 2) != pytest.approx(rates(5, 0, 2))  # 2 epochs of a 5-epoch one


# -- one resumed fit -----------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {},  # the defaults: cosine schedule with warm-up, L2-SP, label smoothing
    {"freeze_depth": 0, "momentum": 0.5},
    {"lr_schedule": "onecycle", "freeze_depth": 1},
    {"lr_schedule": "constant", "optimizer": "adamw", "layer_decay": 0.5},
    {"augment": "flip", "freeze_depth": 1},
    {"augment": "light", "freeze_depth": 1},
    {"head_init": "linear_probe", "freeze_depth": 1},
])
@pytest.mark.parametrize("states", [MemoryStates, FolderStates])
def test_a_resumed_fit_equals_an_uninterrupted_one(tiny_images, params, states):
    X, y = tiny_images
    store = _store(states())
    base = _with_store(_cnn(**params), store)
    clone(base).set_params(max_epochs=2).fit(X, y)
    assert len(EPOCHS) == 2 and [e for _, e in store.states.keys()] == [2]
    resumed = clone(base).set_params(max_epochs=5).fit(X, y)
    assert EPOCHS == [1, 2, 3, 4, 5]  # the resumed fit trained epochs 3 to 5 only
    assert store.states.keys() == []  # taken out; the final round leaves nothing
    straight = _cnn(**params).fit(X, y)
    np.testing.assert_allclose(resumed.predict_proba(X), straight.predict_proba(X),
                               rtol=0, atol=1e-7)
    assert resumed.n_iter_ == straight.n_iter_ == 5
    assert [r["epoch"] for r in resumed.history_] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r["train_loss"] for r in resumed.history_],
                               [r["train_loss"] for r in straight.history_], rtol=1e-6)
    store.release()


def test_a_regressor_resumes_too(tiny_vectors):
    X, y = tiny_vectors
    y = y + X[:, 2]
    store = _store()
    base = _with_store(TransferRegressor("test_mlp", weights=None, max_epochs=5,
                                         random_state=0), store)
    clone(base).set_params(max_epochs=2).fit(X, y)
    resumed = clone(base).fit(X, y)
    straight = TransferRegressor("test_mlp", weights=None, max_epochs=5, random_state=0)
    np.testing.assert_allclose(resumed.predict(X), straight.fit(X, y).predict(X),
                               rtol=0, atol=1e-6)


def test_without_random_state_the_resumed_fit_keeps_the_seed_of_the_first(tiny_images):
    X, y = tiny_images
    store = _store()
    base = _with_store(_cnn(random_state=None, freeze_depth=0), store)
    clone(base).set_params(max_epochs=2).fit(X, y)
    ((key, epochs),) = store.states.keys()
    state = store.states.pop(key, before=5)
    store.states.put(key, epochs, state)
    resumed = clone(base).fit(X, y)
    straight = _cnn(random_state=state["seed"], freeze_depth=0).fit(X, y)
    np.testing.assert_allclose(resumed.predict_proba(X), straight.predict_proba(X),
                               rtol=0, atol=1e-7)


def test_a_state_is_found_only_by_its_own_candidate_and_rows(tiny_images):
    X, y = tiny_images
    store = _store()
    base = _with_store(_cnn(), store)
    clone(base).set_params(max_epochs=2).fit(X, y)
    clone(base).set_params(lr=0.01).fit(X, y)  # another candidate
    clone(base).fit(X[:-2], y[:-2])  # other training rows
    clone(base).set_params(random_state=1).fit(X, y)  # another seed
    assert len(EPOCHS) == 2 + 3 * 5
    assert len(store.states.keys()) == 1


def test_early_stopping_fits_start_over(tiny_images):
    X, y = tiny_images
    store = _store()
    base = _with_store(_cnn(early_stopping=True, n_iter_no_change=10), store)
    clone(base).set_params(max_epochs=2).fit(X, y)
    clone(base).fit(X, y)
    assert len(EPOCHS) == 2 + 5 and store.states.keys() == []


def test_a_warm_started_estimator_continues_its_own_fit_not_a_stored_one(tiny_images):
    X, y = tiny_images
    store = _store()
    est = _with_store(_cnn(warm_start=True), store).set_params(max_epochs=2).fit(X, y)
    assert len(store.states.keys()) == 1  # a first fit is a fit like any other
    est.set_params(max_epochs=5).fit(X, y)
    assert len(EPOCHS) == 2 + 5 and len(store.states.keys()) == 1


def test_a_released_store_resumes_and_keeps_nothing(tiny_images, tmp_path):
    X, y = tiny_images
    states = FolderStates(str(tmp_path))
    store = _store(states)
    clone(_with_store(_cnn(), store)).set_params(max_epochs=2).fit(X, y)
    assert os.listdir(states.path)
    store.release()
    assert not os.path.exists(states.path) and os.listdir(tmp_path) == []
    clone(_with_store(_cnn(), store)).set_params(max_epochs=2).fit(X, y)
    assert len(EPOCHS) == 4


def test_an_unreadable_state_starts_the_fit_over(tiny_images, tmp_path):
    X, y = tiny_images
    states = FolderStates(str(tmp_path))
    base = _with_store(_cnn(), _store(states))
    clone(base).set_params(max_epochs=2).fit(X, y)
    (name,) = os.listdir(states.path)
    with open(os.path.join(states.path, name), "wb") as fh:
        fh.write(b"not a state")
    with pytest.warns(RuntimeWarning, match="could not be read"):
        resumed = clone(base).fit(X, y)
    assert len(EPOCHS) == 2 + 5
    np.testing.assert_allclose(resumed.predict_proba(X), _cnn().fit(X, y).predict_proba(X),
                               rtol=0, atol=1e-7)


# -- the searches --------------------------------------------------------------------------


def test_survivors_resume_and_score_as_refitting_would(tiny_images):
    # constant learning rate: a resumed fit is the fit scikit-learn repeats from the start
    X, y = tiny_images
    est = _cnn(max_epochs=9, lr_schedule="constant")
    theirs = SkHalvingGridSearchCV(est, GRID, resource="max_epochs", max_resources=9, cv=CV,
                                   refit=False).fit(X, y)
    n_theirs = len(EPOCHS)
    EPOCHS.clear()
    ours = HalvingGridSearchCV(est, GRID, cv=CV, refit=False).fit(X, y)
    n_ours = len(EPOCHS)
    assert ours.n_resources_ == theirs.n_resources_ == [1, 3, 9]
    assert ours.n_candidates_ == theirs.n_candidates_ == [9, 3, 1]
    assert n_theirs == 2 * (9 * 1 + 3 * 3 + 1 * 9)
    assert n_ours == 2 * (9 * 1 + 3 * 2 + 1 * 6)  # each survivor trains the epochs it lacks
    for key in ("params", "iter", "n_resources"):
        assert list(ours.cv_results_[key]) == list(theirs.cv_results_[key])
    for key in ("split0_test_score", "split1_test_score", "mean_train_score"):
        np.testing.assert_allclose(ours.cv_results_[key], theirs.cv_results_[key], atol=1e-12)
    assert ours.best_params_ == theirs.best_params_


def test_with_the_cosine_schedule_the_last_round_is_a_plain_search(tiny_images):
    # every schedule spans the last round: its fits, and the refit, are plain 9-epoch fits
    X, y = tiny_images
    est = _cnn(max_epochs=9)
    ours = HalvingGridSearchCV(est, GRID, cv=CV, return_train_score=False).fit(X, y)
    last = ours.cv_results_["iter"] == 2
    finalists = [{k: v for k, v in p.items() if k != "max_epochs"}
                 for p in np.asarray(ours.cv_results_["params"])[last]]
    grid = GridSearchCV(est, [{k: [v] for k, v in p.items()} for p in finalists], cv=CV)
    grid.fit(X, y)
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"][last],
                               grid.cv_results_["mean_test_score"], atol=1e-12)
    plain = clone(est).set_params(**ours.best_params_).fit(X, y)
    np.testing.assert_allclose(ours.best_estimator_.predict_proba(X), plain.predict_proba(X),
                               rtol=0, atol=1e-7)
    assert ours.best_estimator_.n_iter_ == 9


def test_plain_scikit_learn_searches_fit_every_round_from_the_start(tiny_images):
    X, y = tiny_images
    est = _cnn(max_epochs=3)
    grid = {"lr": [0.1, 0.01, 0.001]}
    theirs = SkHalvingGridSearchCV(est, grid, resource="max_epochs", max_resources=3, cv=CV,
                                   refit=False).fit(X, y)
    assert len(EPOCHS) == 2 * (3 * 1 + 1 * 3)
    assert vars(est).get("_resume_store") is None
    # each row is the score of fresh clones fitted with that row's max_epochs
    for params, score in zip(theirs.cv_results_["params"],
                             theirs.cv_results_["mean_test_score"]):
        scores = [clone(est).set_params(**params).fit(X[tr], y[tr]).score(X[te], y[te])
                  for tr, te in CV.split(X, y)]
        assert score == pytest.approx(np.mean(scores), abs=1e-12)
    EPOCHS.clear()
    ours = HalvingGridSearchCV(est, grid, cv=CV, refit=False, resume=False).fit(X, y)
    assert len(EPOCHS) == 2 * (3 * 1 + 1 * 3)
    np.testing.assert_array_equal(ours.cv_results_["mean_test_score"],
                                  theirs.cv_results_["mean_test_score"])
    plain = GridSearchCV(est, grid, cv=CV).fit(X, y)
    assert len(EPOCHS) == 2 * (3 * 1 + 1 * 3) + 2 * 3 * 3 + 3
    last = theirs.cv_results_["iter"] == 1
    (finalist,) = np.asarray(theirs.cv_results_["params"])[last]
    row = [p["lr"] for p in plain.cv_results_["params"]].index(finalist["lr"])
    assert plain.cv_results_["mean_test_score"][row] == (
        theirs.cv_results_["mean_test_score"][last][0])


def test_the_states_are_released_and_the_best_estimator_carries_no_store(tiny_images,
                                                                         tmp_path):
    X, y = tiny_images
    est = _cnn(max_epochs=3, callbacks=None)
    search = HalvingGridSearchCV(est, {"lr": [0.1, 0.01, 0.001]}, cv=CV,
                                 resume=str(tmp_path)).fit(X, y)
    assert os.listdir(tmp_path) == []  # its folder inside tmp_path is gone
    assert "_resume_store" not in vars(search.best_estimator_)
    assert search.estimator is est and "_resume_store" not in vars(est)
    assert "_resume_store" not in vars(clone(search.best_estimator_))
    pickle.loads(pickle.dumps(search)).predict(X)
    # and the memory store: released with the search
    HalvingGridSearchCV(est, {"lr": [0.1, 0.01, 0.001]}, cv=CV).fit(X, y)


def test_error_score_is_honoured(tiny_images):
    X, y = tiny_images
    est = _cnn(max_epochs=3, callbacks=None)
    grid = {"lr": [0.1, 0.01], "freeze_depth": [1, 99]}  # freeze_depth=99 fails in fit
    with pytest.warns(FitFailedWarning, match="fits failed"):
        search = HalvingGridSearchCV(est, grid, cv=CV, factor=2).fit(X, y)
    failed = [p["freeze_depth"] == 99 for p in search.cv_results_["params"]]
    assert np.isnan(search.cv_results_["mean_test_score"][failed]).all()
    assert search.best_params_["freeze_depth"] == 1 and search.n_resources_ == [1, 2]
    last = search.cv_results_["iter"] == 1
    assert not np.isnan(search.cv_results_["mean_test_score"][last]).any()
    with pytest.raises(ValueError, match="freeze_depth"):
        HalvingGridSearchCV(est, grid, cv=CV, factor=2, error_score="raise").fit(X, y)


def test_rounds_that_leave_the_plan_stop_the_resuming(tiny_images, monkeypatch):
    import sktransfer.model_selection as model_selection

    X, y = tiny_images
    monkeypatch.setattr(model_selection, "_planned_resources", lambda search, n: [1, 2])
    search = HalvingGridSearchCV(_cnn(max_epochs=3), {"lr": [0.1, 0.01, 0.001]}, cv=CV,
                                 refit=False)
    with pytest.warns(RuntimeWarning, match="differ from the plan"):
        search.fit(X, y)
    assert search.n_resources_ == [1, 3]
    assert len(EPOCHS) == 2 * (3 * 1 + 1 * 3)  # the second round fitted from the start


def test_max_resources_auto_is_the_estimators_max_epochs(tiny_images):
    X, y = tiny_images
    search = HalvingGridSearchCV(_cnn(max_epochs=4), {"lr": [0.1, 0.01]}, cv=CV, factor=2,
                                 refit=False).fit(X, y)
    assert search.max_resources_ == 4 and search.n_resources_ == [2, 4]
    assert search.max_resources == "auto"
    assert len(EPOCHS) == 2 * (2 * 2 + 1 * 2)
    with pytest.raises(ValueError, match="max_epochs"):
        HalvingGridSearchCV(_cnn(), {"max_epochs": [1, 2]}, cv=CV).fit(X, y)


def test_the_resource_of_a_pipeline_step_resumes(tiny_images):
    X, y = tiny_images
    pipe = make_pipeline(FunctionTransformer(), _cnn(max_epochs=3))
    grid = {"transferclassifier__lr": [0.1, 0.01, 0.001]}
    search = HalvingGridSearchCV(pipe, grid, resource="transferclassifier__max_epochs",
                                 max_resources=3, cv=CV, refit=False).fit(X, y)
    assert search.n_resources_ == [1, 3]
    assert len(EPOCHS) == 2 * (3 * 1 + 1 * 2)


def test_other_resources_make_it_scikit_learns_search(tiny_images):
    X, y = tiny_images
    ours = HalvingGridSearchCV(_cnn(max_epochs=2), {"lr": [0.1, 0.01]}, cv=CV, factor=2,
                               resource="batch_size", max_resources=8, refit=False).fit(X, y)
    assert ours.n_resources_ == [4, 8] and len(EPOCHS) == 2 * 2 * 3


def test_random_search_resumes(tiny_images):
    X, y = tiny_images
    search = HalvingRandomSearchCV(_cnn(max_epochs=3), {"lr": [0.3, 0.1, 0.01, 0.001]},
                                   n_candidates=3, cv=CV, random_state=0, refit=False)
    search.fit(X, y)
    assert search.n_resources_ == [1, 3] and search.n_candidates_ == [3, 1]
    assert len(EPOCHS) == 2 * (3 * 1 + 1 * 2)


def test_scikit_learn_callbacks_see_the_same_tasks(tiny_images):
    pytest.importorskip("sklearn.callback")

    class Tasks:
        def __init__(self):
            self.seen = []

        def setup(self, estimator, context):
            self.seen.append("setup")

        def teardown(self, estimator, context):
            self.seen.append("teardown")

        def on_fit_task_begin(self, estimator, context, **kwargs):
            self.seen.append(("begin", context.task_name, context.task_id))

        def on_fit_task_end(self, estimator, context, **kwargs):
            self.seen.append(("end", context.task_name, context.task_id))

    X, y = tiny_images
    est = _cnn(max_epochs=3)
    grid = {"lr": [0.1, 0.01, 0.001]}
    theirs, ours = Tasks(), Tasks()
    SkHalvingGridSearchCV(est, grid, resource="max_epochs", max_resources=3,
                          cv=CV).set_callbacks(theirs).fit(X, y)
    HalvingGridSearchCV(est, grid, cv=CV).set_callbacks(ours).fit(X, y)
    assert ours.seen == theirs.seen and theirs.seen[0] == "setup"


class EpochFiles(Callback):
    """Writes a file per epoch trained into ``folder``: counts epochs across processes."""

    def __init__(self, folder):
        self.folder = folder

    def on_epoch_end(self, net, **kwargs):
        open(os.path.join(self.folder, f"{os.getpid()}-{id(net)}-{len(net.history)}"),
             "w").close()


@pytest.mark.slow  # n_jobs=2 starts worker processes
def test_worker_processes_share_the_states_through_a_folder(tiny_images, tmp_path):
    X, y = tiny_images
    (tmp_path / "epochs").mkdir()
    (tmp_path / "cache").mkdir()
    est = _cnn(max_epochs=9, lr_schedule="constant", cache=str(tmp_path / "cache"),
               callbacks=[EpochFiles(str(tmp_path / "epochs"))])
    two = HalvingGridSearchCV(est, GRID, cv=CV, refit=False, n_jobs=2).fit(X, y)
    assert len(os.listdir(tmp_path / "epochs")) == 2 * (9 * 1 + 3 * 2 + 1 * 6)
    assert os.listdir(tmp_path / "cache" / "sktransfer_resume") == []
    one = HalvingGridSearchCV(est, GRID, cv=CV, refit=False).fit(X, y)
    np.testing.assert_array_equal(one.cv_results_["mean_test_score"],
                                  two.cv_results_["mean_test_score"])
    theirs = SkHalvingGridSearchCV(est, GRID, resource="max_epochs", max_resources=9, cv=CV,
                                   refit=False, n_jobs=2).fit(X, y)
    np.testing.assert_allclose(two.cv_results_["mean_test_score"],
                               theirs.cv_results_["mean_test_score"], atol=1e-12)
