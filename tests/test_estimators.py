"""Core behaviour of TransferClassifier and TransferRegressor on tiny backbones."""

import pickle
import random
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from sktransfer import TransferClassifier, TransferFeatures, TransferRegressor, get_backbone
from sktransfer._compat import InvalidParameterError


def _clf(**kw):
    # a depth and a head that train whatever the data size ("auto" may pick the probe)
    params = dict(weights=None, max_epochs=2, batch_size=8, random_state=0, freeze_depth=1,
                  head_init="random")
    params.update(kw)
    return TransferClassifier("test_cnn", **params)


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# -- freezing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "freeze_depth,frozen",
    [(0, []), (1, ["stem"]), (2, ["stem", "block1"]), (-1, ["stem", "block1"]),
     (-3, []), ("all", ["stem", "block1", "block2"])],
)
def test_freeze_depth_freezes_exactly_the_leading_stages(tiny_images, freeze_depth, frozen):
    X, y = tiny_images
    clf = _clf(freeze_depth=freeze_depth, lr=0.5, cache=False).fit(X, y)
    assert clf.n_frozen_stages_ == len(frozen)
    torch.manual_seed(0)  # random_state=0 seeds the initialisation: the same stages as before fit
    initial = get_backbone("test_cnn").stages
    for stage in clf.stage_names_:
        moved = any(
            not torch.equal(p, q)
            for p, q in zip(getattr(clf.module_.stages, stage).parameters(),
                            initial[stage].parameters())
        )
        assert moved == (stage not in frozen), stage


def test_freeze_depth_out_of_range_lists_stage_names(tiny_images):
    X, y = tiny_images
    stages = r"\['stem', 'block1', 'block2'\]"
    with pytest.raises(ValueError, match=r"freeze_depth=4 exceeds.*" + stages):
        _clf(freeze_depth=4).fit(X, y)
    with pytest.raises(ValueError, match=r"freeze_depth=-4.*'stem'"):
        _clf(freeze_depth=-4).fit(X, y)
    with pytest.raises(InvalidParameterError, match="freeze_depth"):
        _clf(freeze_depth="most").fit(X, y)


def test_batchnorm_statistics_of_frozen_stages_do_not_move(tiny_images):
    X, y = tiny_images
    clf = _clf(freeze_depth=2, lr=0.1, max_epochs=3, cache=False).fit(X, y)
    fresh = _clf(freeze_depth=2, lr=1e-30, max_epochs=1, cache=False).fit(X, y)
    for stage in ("stem", "block1"):
        bn_a = getattr(clf.module_.stages, stage)[1]
        bn_b = getattr(fresh.module_.stages, stage)[1]
        torch.testing.assert_close(bn_a.running_mean, bn_b.running_mean, atol=0, rtol=0)
        torch.testing.assert_close(bn_a.running_var, bn_b.running_var, atol=0, rtol=0)
        assert int(bn_a.num_batches_tracked) == 0
    # the trainable stage's statistics did move
    assert int(clf.module_.stages.block2[1].num_batches_tracked) > 0


def test_batchnorm_all_lets_frozen_batchnorm_statistics_move(tiny_images):
    X, y = tiny_images
    clf = _clf(freeze_depth=2, batchnorm="all").fit(X, y)
    assert int(clf.module_.stages.stem[1].num_batches_tracked) > 0
    assert clf.cache_key_ is None  # inexact, so no cache


def test_trainable_batchnorm_gets_momentum_0_1(tiny_images):
    X, y = tiny_images
    clf = _clf(freeze_depth=1).fit(X, y)
    assert clf.module_.stages.block1[1].momentum == 0.1
    clf = _clf(freeze_depth=1, batchnorm=0.3).fit(X, y)
    assert clf.module_.stages.block2[1].momentum == 0.3


# -- labels -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [["a", "b"], [-1, 1], [3, 5, 7], [True, False], np.array(["x", "y"], dtype=object),
     [1.0, 2.0]],
    ids=["str", "pm1", "357", "bool", "object", "float"],
)
def test_predict_returns_original_labels(tiny_vectors, labels):
    X, y = tiny_vectors
    labels = np.asarray(labels)
    y_lab = labels[np.arange(len(X)) % len(labels)]
    clf = TransferClassifier("test_mlp", weights=None, max_epochs=2, random_state=0)
    clf.fit(X, y_lab)
    np.testing.assert_array_equal(clf.classes_, np.unique(y_lab))
    pred = clf.predict(X)
    assert pred.dtype == clf.classes_.dtype
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), len(clf.classes_))
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(1)])


def test_class_weight_balanced_and_dict_change_the_fit(tiny_vectors):
    X, y = tiny_vectors
    y = y.copy()
    y[:45] = 0
    base = TransferClassifier("test_mlp", weights=None, max_epochs=3, random_state=0)
    p0 = base.fit(X, y).predict_proba(X)
    p1 = clone(base).set_params(class_weight="balanced").fit(X, y).predict_proba(X)
    p2 = clone(base).set_params(class_weight={1: 5.0}).fit(X, y).predict_proba(X)
    assert p1[:, 1].mean() > p0[:, 1].mean()
    assert p2[:, 1].mean() > p0[:, 1].mean()
    with pytest.raises(ValueError, match="not in y"):
        clone(base).set_params(class_weight={7: 1.0}).fit(X, y)


# -- regression -----------------------------------------------------------------------------------


def test_regressor_single_and_multi_output(tiny_vectors):
    X, _ = tiny_vectors
    y1 = X @ np.arange(5.0) * 100 + 1000  # scale does not matter: targets are standardised
    reg = TransferRegressor("test_mlp", weights=None, max_epochs=40, lr=0.05, freeze_depth=0,
                            random_state=0).fit(X, y1)
    assert reg.predict(X).shape == (len(X),)
    assert reg.score(X, y1) > 0.8
    y2 = np.c_[y1, -y1]
    reg2 = clone(reg).fit(X, y2)
    assert reg2.predict(X).shape == (len(X), 2)
    assert reg2.n_outputs_ == 2


# -- input layouts --------------------------------------------------------------------------------


def test_nhwc_nchw_and_grayscale_layouts_give_consistent_models(tiny_images):
    X, y = tiny_images
    a = _clf().fit(X, y).predict_proba(X)
    b = _clf().fit(X.transpose(0, 3, 1, 2), y).predict_proba(X.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(a, b, atol=1e-5)
    gray = X.mean(-1)
    clf = _clf().fit(gray, y)
    assert clf.input_spec_["layout"] == "nhw"
    assert clf.predict(gray).shape == (len(X),)


def test_uint8_means_0_255(tiny_images):
    X, y = tiny_images
    Xu = np.round(X * 255).astype(np.uint8)
    a = _clf().fit(Xu, y).predict_proba(Xu)
    b = _clf().fit(Xu / 255.0, y).predict_proba(Xu / 255.0)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_digits_as_2d_rows_with_image_shape():
    d = load_digits()
    X = d.data.astype(np.uint8) * 16
    clf = TransferClassifier("test_cnn", weights=None, image_shape=(8, 8), max_epochs=4,
                             lr=0.05, freeze_depth=0, random_state=0)
    clf.fit(X[:600], d.target[:600])
    assert clf.score(X[600:900], d.target[600:900]) > 0.5
    with pytest.raises(ValueError, match="image_shape"):
        TransferClassifier("test_cnn", weights=None).fit(X[:50], d.target[:50])


def test_input_size_resizes_per_batch(tiny_images):
    X, y = tiny_images
    clf = _clf(input_size=24).fit(X, y)
    seen = {}
    h = clf.module_.stages.stem.register_forward_pre_hook(
        lambda m, inp: seen.update(shape=tuple(inp[0].shape)))
    clf.set_params(cache=False).predict(X[:3])
    h.remove()
    assert seen["shape"][-2:] == (24, 24)


# -- search, clone, restarts --------------------------------------------------------------------


@pytest.mark.slow  # n_jobs=2 starts worker processes
def test_gridsearch_over_freeze_depth_lr_momentum_n_jobs_1_equals_2(tiny_images):
    X, y = tiny_images
    grid = {"freeze_depth": ["all", -1], "lr": [0.1, 0.01], "momentum": [0.9, 0.0]}
    est = _clf(max_epochs=1)
    s1 = GridSearchCV(est, grid, cv=2, n_jobs=1).fit(X, y)
    s2 = GridSearchCV(est, grid, cv=2, n_jobs=2).fit(X, y)
    np.testing.assert_array_equal(s1.cv_results_["mean_test_score"],
                                  s2.cv_results_["mean_test_score"])
    assert s1.best_estimator_.predict(X).shape == (len(X),)


def test_gridsearch_inside_a_pipeline(tiny_images):
    X, y = tiny_images
    pipe = Pipeline([("scale", FunctionTransformer(lambda a: a * 0.9)), ("clf", _clf())])
    search = GridSearchCV(pipe, {"clf__freeze_depth": [0, "all"], "clf__lr": [0.1, 0.01]},
                          cv=2).fit(X, y)
    assert set(search.cv_results_["param_clf__freeze_depth"]) == {0, "all"}


def test_clone_is_unfitted_and_shares_no_tensors(tiny_images):
    X, y = tiny_images
    clf = _clf().fit(X, y)
    c = clone(clf)
    assert not hasattr(c, "module_")
    c.fit(X, y)
    ids = {p.data_ptr() for p in clf.module_.parameters()}
    assert not ids & {p.data_ptr() for p in c.module_.parameters()}


def test_each_fit_restarts_unless_warm_start(tiny_images):
    X, y = tiny_images
    clf = _clf()
    p1 = clf.fit(X, y).predict_proba(X)
    p2 = clf.fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(p1, p2)
    clf.set_params(warm_start=True)
    p3 = clf.fit(X, y).predict_proba(X)
    assert not np.allclose(p1, p3)


def test_same_random_state_gives_bitwise_identical_predictions(tiny_images):
    X, y = tiny_images
    a = _clf(random_state=3).fit(X, y).predict_proba(X)
    b = clone(_clf(random_state=3)).fit(X, y).predict_proba(X)
    c = _clf(random_state=4).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fit_and_predict_leave_global_rng_state_as_found(tiny_images, two_torch_threads):
    X, y = tiny_images
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    threads = torch.get_num_threads()  # 2: a fit that set torch to 1 thread would show
    clf = _clf(random_state=None).fit(X, y)
    clf.predict_proba(X)
    assert torch.equal(torch.get_rng_state(), states[0])
    np.testing.assert_array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]
    assert torch.get_num_threads() == threads


# -- persistence and devices ----------------------------------------------------------------------


def test_pickle_and_joblib_round_trip_keep_predict_proba(tiny_images, tmp_path):
    X, y = tiny_images
    clf = _clf().fit(X, y.astype(str))
    p = clf.predict_proba(X)
    clf2 = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clf2.predict_proba(X), p)
    joblib.dump(clf, tmp_path / "m.joblib")
    clf3 = joblib.load(tmp_path / "m.joblib")
    np.testing.assert_array_equal(clf3.predict_proba(X), p)
    np.testing.assert_array_equal(clf3.predict(X), clf.predict(X))
    assert clf3.net_.history[-1]["epoch"] == 2


def test_model_fitted_on_cuda_loads_on_cpu_only_machine(tiny_images, monkeypatch):
    X, y = tiny_images
    clf = _clf().fit(X, y)
    p = clf.predict_proba(X)
    clf.device_ = "cuda"  # as if fitted on a GPU machine; the stored arrays are on the CPU
    blob = pickle.dumps(clf)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        loaded = pickle.loads(blob)
    assert loaded.device_ == "cpu"
    np.testing.assert_allclose(loaded.predict_proba(X), p, atol=1e-5)


def test_device_auto_resolves_and_unavailable_cuda_is_an_error(tiny_images, monkeypatch):
    X, y = tiny_images
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _clf(device="auto").fit(X, y).device_ == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        _clf(device="cuda").fit(X, y)


def test_fit_on_each_device(tiny_images, device):
    X, y = tiny_images
    clf = _clf(device=device).fit(X, y)
    assert clf.device_.startswith(device)
    assert clf.predict(X).shape == (len(X),)


# -- verbosity and optimisers ---------------------------------------------------------------------


def test_verbose_0_is_silent_and_1_prints_the_epoch_table(tiny_images, capsys):
    X, y = tiny_images
    _clf(verbose=0).fit(X, y)
    assert capsys.readouterr().out == ""
    _clf(verbose=1).fit(X, y)
    out = capsys.readouterr().out
    assert "epoch" in out and "train_loss" in out


def test_adamw_optimizer_trains(tiny_images):
    X, y = tiny_images
    clf = _clf(optimizer="adamw", lr=0.01, max_epochs=3).fit(X, y)
    assert clf.history_[-1]["train_loss"] < clf.history_[0]["train_loss"] + 1e-3
    assert isinstance(clf.net_.optimizer_, torch.optim.AdamW)


def test_pretrained_fit_does_not_depend_on_what_the_process_built_before(tmp_path):
    """A pretrained backbone may come from the process's store of built backbones (no random
    draws) or be built afresh (random draws before its weights load): the fit is the same."""
    from sktransfer import backbones as B

    rng = np.random.RandomState(0)
    X = rng.rand(24, 16, 16, 3).astype(np.float32)
    y = np.array([0, 1, 2] * 8)
    path = tmp_path / "cnn.pt"

    def factory():
        return B._test_cnn()

    torch.manual_seed(2)
    torch.save(factory().state_dict(), path)
    B.register_backbone("_seeded_cnn", factory, overwrite=True)
    try:
        params = dict(weights=str(path), freeze_depth=1, max_epochs=2, random_state=0)
        B._BUILT.clear()
        first = TransferClassifier("_seeded_cnn", **params).fit(X, y)  # built afresh
        second = TransferClassifier("_seeded_cnn", **params).fit(X, y)  # from the store
        np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    finally:
        B._REGISTRY.pop("_seeded_cnn", None)
        B._BUILT.clear()


# -- scikit-learn hygiene -----------------------------------------------------------------------

ESTIMATORS = {
    "classifier": lambda: TransferClassifier("test_mlp", weights=None, max_epochs=1,
                                             random_state=0),
    "regressor": lambda: TransferRegressor("test_mlp", weights=None, max_epochs=1,
                                           random_state=0),
    "features": lambda: TransferFeatures("test_mlp", weights=None),
}


def _fit(est, X, y):
    if isinstance(est, TransferFeatures):
        return est.fit(X)
    return est.fit(X, y.astype(float) if isinstance(est, TransferRegressor) else y)


ESTIMATOR_FITS = {kind: (lambda X, y, make=make: _fit(make(), X, y))
                  for kind, make in ESTIMATORS.items()}


@pytest.mark.parametrize("kind", sorted(ESTIMATOR_FITS))
def test_fit_writes_only_attributes_ending_in_underscore(kind, tiny_vectors):
    X, y = tiny_vectors
    est = ESTIMATOR_FITS[kind](X, y)
    params = set(est.get_params(deep=False))
    written = set(vars(est)) - params
    assert written and all(name.endswith("_") for name in written), sorted(written)
    # the safe format stores exactly the declared fitted state (the network is the weights)
    assert written - {"net_", "module_"} == set(type(est)._persisted) - {"feature_names_in_"}


@pytest.mark.parametrize("kind", sorted(ESTIMATOR_FITS))
def test_feature_names_in_is_set_from_a_dataframe_and_checked_in_predict(kind, tiny_vectors):
    pd = pytest.importorskip("pandas")
    X, y = tiny_vectors
    columns = [f"f{i}" for i in range(X.shape[1])]
    est = ESTIMATOR_FITS[kind](pd.DataFrame(X, columns=columns), y)
    assert est.feature_names_in_.tolist() == columns
    renamed = pd.DataFrame(X, columns=[f"g{i}" for i in range(X.shape[1])])
    method = est.transform if kind == "features" else est.predict
    with pytest.raises(ValueError, match="feature names should match"):
        method(renamed)
    with pytest.warns(UserWarning, match="fitted with feature names"):
        method(X)
    _fit(est, X, y)  # refitted on an array: no names, the old ones go
    assert not hasattr(est, "feature_names_in_")


def test_feature_names_survive_the_safe_format(tiny_vectors, tmp_path):
    pd = pytest.importorskip("pandas")
    import sktransfer

    X, y = tiny_vectors
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    clf = ESTIMATOR_FITS["classifier"](df, y)
    loaded = sktransfer.load(sktransfer.save(clf, tmp_path / "m"))
    assert loaded.feature_names_in_.tolist() == clf.feature_names_in_.tolist()
    plain = sktransfer.load(sktransfer.save(ESTIMATOR_FITS["classifier"](X, y), tmp_path / "p"))
    assert not hasattr(plain, "feature_names_in_")


def test_float_images_above_one_warn_with_the_fix(tiny_images):
    from sktransfer._data import FloatScaleWarning

    X, y = tiny_images  # floats in [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FloatScaleWarning)
        clf = _clf(max_epochs=1).fit(X, y)
        clf.predict(X)
    with pytest.warns(FloatScaleWarning, match=r"values up to 2\d\d.*X / 255"):
        _clf(max_epochs=1).fit(X * 255.0, y)
    with pytest.warns(FloatScaleWarning, match=r"X / 255"):
        clf.predict(X * 255.0)


def _cnn_momentum_0_05():
    from sktransfer.backbones import _test_cnn

    net = _test_cnn()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.05
    return net


def test_batchnorm_checkpoint_keeps_the_checkpoint_momentum(tiny_images):
    X, y = tiny_images
    params = dict(weights=None, freeze_depth=-1, max_epochs=1, batch_size=8, random_state=0)
    kept = TransferClassifier(_cnn_momentum_0_05, batchnorm="checkpoint", **params).fit(X, y)
    moved = TransferClassifier(_cnn_momentum_0_05, **params).fit(X, y)
    assert kept.module_.stages.block2[1].momentum == 0.05
    assert moved.module_.stages.block2[1].momentum == 0.1
    assert kept.module_.stages.stem[1].momentum == moved.module_.stages.stem[1].momentum == 0.05


@pytest.mark.parametrize("value", ["frozen", -0.1, 1.5, None])
def test_batchnorm_is_validated(value, tiny_images):
    X, y = tiny_images
    with pytest.raises(InvalidParameterError, match="batchnorm"):
        _clf(batchnorm=value).fit(X, y)


@pytest.mark.parametrize("value", [1, None, 0.5])
def test_cache_is_validated(value, tiny_images):
    X, y = tiny_images
    with pytest.raises(InvalidParameterError, match="cache"):
        _clf(cache=value).fit(X, y)
