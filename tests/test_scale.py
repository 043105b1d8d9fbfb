"""Scaling out: mixed precision, torch.compile, Hugging Face accelerate, device memory after
fit, and hyperparameter search on a real Dask cluster of worker processes.

Everything here runs on the CPU; the tests marked ``gpu`` run only where CUDA is available.
"""

import contextlib
import gc
import os
import pickle
import subprocess
import sys
import types
import weakref
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from scipy.stats import loguniform
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from skorch.callbacks import Callback

from sktransfer import TransferClassifier, TransferFeatures, TransferRegressor
from sktransfer._compat import InvalidParameterError
from sktransfer.caching import cache_info, clear_cache

REPO = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


def _clf(**kw):
    params = dict(weights=None, max_epochs=2, batch_size=8, random_state=0, device="cpu",
                  freeze_depth=1, head_init="random")  # trained, whatever the data size
    params.update(kw)
    return TransferClassifier("test_cnn", **params)


@contextlib.contextmanager
def _one_thread():
    """Run as a Dask worker started with threads_per_worker=1 does (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- mixed precision ------------------------------------------------------------------------------


def test_bfloat16_fits_and_predicts_close_to_float32(tiny_images):
    X, y = tiny_images
    full = _clf().fit(X, y)
    half = _clf(precision="bfloat16").fit(X, y)
    proba = half.predict_proba(X)
    assert proba.dtype == full.predict_proba(X).dtype
    np.testing.assert_allclose(proba, full.predict_proba(X), atol=2e-2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert all(p.dtype == torch.float32 for p in half.module_.parameters())


def test_bfloat16_regressor_predicts_float_values_close_to_float32(tiny_vectors):
    X, _ = tiny_vectors
    y = X[:, 0] - 2 * X[:, 1]
    params = dict(weights=None, max_epochs=3, random_state=0, device="cpu")
    full = TransferRegressor("test_mlp", **params).fit(X, y)
    half = TransferRegressor("test_mlp", precision="bfloat16", **params).fit(X, y)
    assert half.predict(X).dtype == full.predict(X).dtype
    np.testing.assert_allclose(half.predict(X), full.predict(X), atol=0.1 * y.std())


def test_bfloat16_cache_stores_float32_and_matches_uncached_training(tiny_images, tmp_path):
    X, y = tiny_images
    clear_cache()  # rows found in the process's cache are not written to the folder again
    cached = _clf(precision="bfloat16", cache=str(tmp_path)).fit(X, y)
    uncached = _clf(precision="bfloat16", cache=False).fit(X, y)
    files = list((tmp_path / "sktransfer_activations").glob("*/*.npy"))
    assert len(files) == len(X)
    assert {np.load(f).dtype for f in files} == {np.dtype("float32")}
    np.testing.assert_array_equal(cached.predict_proba(X), uncached.predict_proba(X))


def test_bfloat16_activations_are_cached_apart_from_float32_ones(tiny_images):
    X, _ = tiny_images
    clear_cache()
    full = TransferFeatures("test_cnn", weights=None, device="cpu").fit_transform(X)
    half = TransferFeatures("test_cnn", weights=None, device="cpu", precision="bfloat16")
    half_features = half.fit_transform(X)
    assert half_features.dtype == np.float32
    assert not np.array_equal(half_features, full)
    np.testing.assert_allclose(half_features, full, atol=2e-2 * np.abs(full).max())
    again = TransferFeatures("test_cnn", weights=None, device="cpu").fit_transform(X)
    np.testing.assert_array_equal(again, full)


@pytest.mark.parametrize("make", [
    lambda: _clf(precision="float16"),
    lambda: TransferRegressor("test_cnn", weights=None, device="cpu", precision="float16"),
    lambda: TransferFeatures("test_cnn", weights=None, device="cpu", precision="float16"),
])
def test_float16_on_the_cpu_is_refused_with_the_remedy(tiny_images, make):
    X, y = tiny_images
    with pytest.raises(ValueError, match=r"float16.*needs a CUDA device.*bfloat16"):
        make().fit(X, y)


def test_precision_is_validated(tiny_images):
    X, y = tiny_images
    with pytest.raises(InvalidParameterError, match="precision"):
        _clf(precision="half").fit(X, y)


def test_float16_training_steps_through_a_gradient_scaler(tiny_vectors, monkeypatch):
    """The float16 path (autocast, scaled backward, scaler step), run on the CPU's float16
    autocast with the CUDA requirement lifted: the code a GPU runs, checked without one."""
    import sktransfer._base

    monkeypatch.setattr(sktransfer._base, "check_precision", lambda precision, device: None)
    steps = []
    real_step = torch.amp.GradScaler.step

    def step(self, optimizer, *args, **kwargs):
        steps.append(self.get_scale())
        return real_step(self, optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "step", step)
    X, y = tiny_vectors
    params = dict(weights=None, max_epochs=3, batch_size=20, random_state=0, device="cpu",
                  freeze_depth=0, head_init="random")  # trained, whatever the data size
    full = TransferClassifier("test_mlp", **params).fit(X, y)
    half = TransferClassifier("test_mlp", precision="float16", **params).fit(X, y)
    assert len(steps) == 3 * 3 and steps[0] > 1  # every step, with the loss scaled up
    np.testing.assert_allclose(half.predict_proba(X), full.predict_proba(X), atol=1e-2)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_on_cuda_predicts_close_to_float32(tiny_images, precision):
    X, y = tiny_images
    full = _clf(device="cuda").fit(X, y)
    half = _clf(device="cuda", precision=precision).fit(X, y)
    np.testing.assert_allclose(half.predict_proba(X), full.predict_proba(X), atol=2e-2)


# -- what a fitted estimator keeps ----------------------------------------------------------------


def _reachable_tensors(root):
    """Tensors reachable from ``root`` through containers and instance attributes (functions,
    classes and modules are not followed: their globals reach everything)."""
    skip = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType)
    seen, stack, found = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            found.append(obj)
            if obj.grad is not None:
                stack.append(obj.grad)
            continue
        stack.extend(gc.get_referents(obj))
    return found


@pytest.mark.parametrize("early_stopping", [False, True])
def test_fit_keeps_no_second_copy_of_the_weights(tiny_images, early_stopping):
    """No snapshot, gradient, momentum or best-epoch copy outlives fit: on a GPU the estimator
    then holds the model and nothing else."""
    X, y = tiny_images
    clf = _clf(freeze_depth=0, early_stopping=early_stopping, cache=False).fit(X, y)
    state = list(clf.module_.state_dict().values())
    own = {t.data_ptr() for t in state}
    shapes = {tuple(p.shape) for p in clf.module_.parameters() if p.requires_grad}
    copies = [
        tuple(t.shape) for t in _reachable_tensors(clf)
        if t.data_ptr() not in own and tuple(t.shape) in shapes and t.numel() > 1
    ]
    assert copies == []


class _TrackNetworks(Callback):
    networks = []

    def on_train_begin(self, net, **kwargs):
        _TrackNetworks.networks.append(weakref.ref(net.module_))


def test_grid_search_frees_each_network_when_its_fit_is_done(tiny_images):
    X, y = tiny_images
    _clf(max_epochs=1).fit(X, y)  # torch's lazy imports keep the frames of their first caller
    _TrackNetworks.networks.clear()
    gc.collect()
    gc.disable()  # freed by reference counting alone, as soon as the fit is scored
    try:
        search = GridSearchCV(
            _clf(max_epochs=1, callbacks=[_TrackNetworks()]), {"lr": [0.01, 0.1]}, cv=2
        ).fit(X, y)
        alive = [ref() for ref in _TrackNetworks.networks if ref() is not None]
    finally:
        gc.enable()
    assert len(_TrackNetworks.networks) == 5  # 2 candidates x 2 folds, then the refit
    assert alive == [search.best_estimator_.module_]


@pytest.mark.gpu
@cuda
def test_cuda_fit_leaves_only_the_model_on_the_gpu(tiny_images):
    X, y = tiny_images
    torch.cuda.synchronize()
    gc.collect()
    before = torch.cuda.memory_allocated()
    clf = _clf(device="cuda", freeze_depth=0, early_stopping=True).fit(X, y)
    model = sum(t.numel() * t.element_size() for t in clf.module_.state_dict().values())
    # the allocator rounds each tensor up to 512 bytes
    assert torch.cuda.memory_allocated() - before <= model + 512 * len(clf.module_.state_dict())
    del clf
    gc.collect()
    assert torch.cuda.memory_allocated() == before


# -- torch.compile --------------------------------------------------------------------------------


@pytest.fixture
def eager_compile(monkeypatch):
    """``torch.compile`` with the eager backend: the same graph capture without the C++
    compilation of inductor, which takes minutes on a busy CPU."""
    real, compiled = torch.compile, []

    def compile_eager(model, **kwargs):
        compiled.append(model)
        return real(model, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", compile_eager)
    yield compiled
    torch._dynamo.reset()


def test_compile_trains_and_predicts_like_the_eager_network(tiny_vectors, eager_compile):
    X, y = tiny_vectors
    params = dict(weights=None, max_epochs=2, random_state=0, device="cpu")
    eager = TransferClassifier("test_mlp", **params).fit(X, y)
    compiled = TransferClassifier("test_mlp", compile=True, **params).fit(X, y)
    assert eager_compile, "the network was not compiled"
    np.testing.assert_allclose(compiled.predict_proba(X), eager.predict_proba(X), atol=1e-6)
    loaded = pickle.loads(pickle.dumps(compiled))
    np.testing.assert_allclose(loaded.predict_proba(X), eager.predict_proba(X), atol=1e-6)


def test_compile_is_validated(tiny_vectors):
    X, y = tiny_vectors
    with pytest.raises(InvalidParameterError, match="compile"):
        TransferClassifier("test_mlp", weights=None, compile="yes").fit(X, y)


# -- Hugging Face accelerate ----------------------------------------------------------------------


def test_accelerator_trains_like_a_plain_fit(tiny_images):
    X, y = tiny_images
    plain = _clf().fit(X, y)
    accelerated = _clf(accelerator="auto").fit(X, y)
    assert type(accelerated.net_).__name__ == "_AcceleratedSkorchNet"
    assert accelerated.device_ == "cpu"
    np.testing.assert_allclose(accelerated.predict_proba(X), plain.predict_proba(X), atol=1e-6)
    loaded = pickle.loads(pickle.dumps(accelerated))
    np.testing.assert_array_equal(loaded.predict_proba(X), accelerated.predict_proba(X))


def test_accelerator_takes_its_precision_from_the_precision_parameter(tiny_images):
    X, y = tiny_images
    with pytest.raises(ValueError, match=r"precision='bfloat16'.*not with accelerator="):
        _clf(accelerator={"mixed_precision": "bf16"}).fit(X, y)
    with pytest.raises(InvalidParameterError, match="accelerator"):
        _clf(accelerator="yes").fit(X, y)


# -- hyperparameter search on a Dask cluster ------------------------------------------------------


@pytest.fixture(scope="module")
def dask_client():
    from dask.distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        client.run(_import_sktransfer)  # each worker pays its imports before the timed tests
        yield client


def _import_sktransfer():
    import sktransfer  # noqa: F401

    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # torch's lazy imports


@pytest.fixture
def images():
    rng = np.random.RandomState(0)
    X = rng.rand(24, 12, 12, 3).astype(np.float32) * 0.5
    y = np.array([0, 1, 2] * 8)
    X[y == 1, :6] += 0.5
    X[y == 2, :, :6] += 0.5
    return X, y


@pytest.mark.slow  # a cluster of two worker processes
def test_grid_search_on_dask_workers_matches_one_process(dask_client, images, tmp_path):
    X, y = images
    base = _clf(max_epochs=1)
    grid = {"lr": [0.03, 0.3]}
    options = dict(cv=2, scoring="neg_log_loss", refit=False)
    with _one_thread():
        local = GridSearchCV(base, grid, **options).fit(X, y)

    # the workers share the frozen stages' outputs through the folder
    shared = clone(base).set_params(cache=str(tmp_path))
    remote = GridSearchCV(shared, grid, n_jobs=-1, **options)
    with joblib.parallel_backend("dask"):
        remote.fit(X, y)
    pids = dask_client.run(os.getpid)
    assert len(set(pids.values()) | {os.getpid()}) == 3  # two worker processes besides this one

    for key in ("split0_test_score", "split1_test_score", "mean_test_score"):
        np.testing.assert_array_equal(remote.cv_results_[key], local.cv_results_[key])
    files = list((tmp_path / "sktransfer_activations").glob("*/*.npy"))
    assert len(files) == len(X)  # one file per image, whichever worker wrote it
    clear_cache()
    computed = cache_info()["computed"]
    clone(shared).fit(X, y)
    assert cache_info()["computed"] == computed  # read from the workers' folder


@pytest.mark.slow  # a cluster of two worker processes
def test_randomized_search_on_dask_workers_matches_one_process(dask_client, images):
    X, y = images
    base = _clf(max_epochs=1, freeze_depth=0)  # nothing frozen, nothing cached
    space = {"lr": loguniform(1e-3, 0.3), "momentum": [0.0, 0.9]}
    options = dict(n_iter=2, cv=2, scoring="neg_log_loss", refit=False, random_state=0)
    with _one_thread():
        local = RandomizedSearchCV(base, space, **options).fit(X, y)
    remote = RandomizedSearchCV(base, space, n_jobs=-1, **options)
    with joblib.parallel_backend("dask"):
        remote.fit(X, y)
    assert remote.cv_results_["params"] == local.cv_results_["params"]
    np.testing.assert_array_equal(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
    )


# -- the GPU check script -------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess that imports everything and runs several fits
def test_gpu_check_runs_its_cpu_part_and_says_what_was_not_measured():
    # one thread: the figures are not the point here, and on a busy machine OpenMP threads
    # waiting on each other slow tiny batches down tenfold
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--quick"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "No CUDA device: GPU figures not measured" in out
    assert "pickled model reloaded on the CPU: max |difference| = 0.0e+00" in out
    assert "bfloat16" in out and "images/s" in out
