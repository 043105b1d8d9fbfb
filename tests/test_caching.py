import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from functools import partial

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from torch import nn

from sktransfer import TransferClassifier, TransferFeatures
from sktransfer.caching import cache_info, clear_cache, set_cache_options
from sktransfer.datasets import load_textures


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test starts from an empty cache with the default options, and leaves them so."""
    options = cache_info()
    clear_cache()
    yield
    set_cache_options(max_bytes=options["max_bytes"], dtype=options["dtype"])
    clear_cache()


@pytest.fixture(scope="module")
def textures():
    """24 real texture patches (8 per class) to train on and 12 others, 32x32 uint8."""
    X, y = load_textures(patch_size=32, stride=96, return_X_y=True)
    rng = np.random.RandomState(0)
    train = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:8] for c in range(3)])
    test = np.setdiff1d(np.arange(len(y)), train)[::8][:12]
    return X[train], y[train], X[test]


def _lite0(**params):
    # a random head: the probe's start would add the full-depth prefix to what is counted
    defaults = dict(max_epochs=1, batch_size=6, lr=0.01, random_state=0, head_init="random")
    return TransferClassifier("efficientnet_lite0", **{**defaults, **params})


def _cnn(**params):
    defaults = dict(weights=None, max_epochs=1, batch_size=8, random_state=0, head_init="random")
    return TransferClassifier("test_cnn", **{**defaults, **params})


# -- caching never changes results ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("freeze_depth", [1, 2, 3, 4, 5, 6, 7, 8, 9, "all"])
def test_cache_does_not_change_predictions_at_any_depth(textures, freeze_depth, two_torch_threads):
    # Exact only where the frozen stages give the same bits in batches of any size, which
    # oneDNN's convolutions do here on 2 threads. On 1 thread, depths 4-6 differ by up to 0.12
    # in probability after one epoch: the cache computes the prefix in batches of 24, training
    # in batches of 6, last-bit differences that BatchNorm on 1x1 maps amplifies.
    X, y, X_new = textures
    cached = _lite0(freeze_depth=freeze_depth, cache=True).fit(X, y)
    assert cached.cache_key_ is not None
    assert cache_info()["computed"] == len(X)
    plain = _lite0(freeze_depth=freeze_depth, cache=False).fit(X, y)
    assert plain.cache_key_ is None
    # 4 optimiser steps with momentum: rounding differences would already have grown
    Z = np.concatenate([X, X_new])
    np.testing.assert_allclose(cached.predict_proba(Z), plain.predict_proba(Z), atol=1e-5)
    np.testing.assert_allclose(
        [row["train_loss"] for row in cached.history_],
        [row["train_loss"] for row in plain.history_],
        atol=1e-5,
    )


@pytest.mark.parametrize("freeze_depth", [1, 2, "all"])
def test_cache_does_not_change_predictions_at_any_depth_of_a_tiny_cnn(tiny_images,
                                                                       freeze_depth):
    X, y = tiny_images
    cached = _cnn(freeze_depth=freeze_depth, max_epochs=2, cache=True).fit(X, y)
    assert cache_info()["computed"] == len(X)
    plain = _cnn(freeze_depth=freeze_depth, max_epochs=2, cache=False).fit(X, y)
    np.testing.assert_array_equal(cached.predict_proba(X), plain.predict_proba(X))
    assert [row["train_loss"] for row in cached.history_] == [
        row["train_loss"] for row in plain.history_]


def test_training_and_the_cache_hold_the_activations_once(tiny_images):
    import torch

    from sktransfer import caching
    from sktransfer._data import make_source

    X, y = tiny_images
    clf = _cnn(freeze_depth=2, max_epochs=2).fit(X, y)
    net, k = clf.module_, clf.n_frozen_stages_
    src = make_source(X, clf.input_spec_)
    clear_cache()
    shared = caching.prefix_activations(net, k, src, key="k", device="cpu", batch_size=16,
                                        share=True)
    rows = caching._CACHE.get("k", src.digests())
    assert all(r.untyped_storage().data_ptr() == shared.untyped_storage().data_ptr()
               for r in rows)
    assert cache_info()["nbytes"] == shared.numel() * 4
    clear_cache()
    copied = caching.prefix_activations(net, k, src, key="k", device="cpu", batch_size=16)
    assert copied.untyped_storage().data_ptr() != rows[0].untyped_storage().data_ptr()
    torch.testing.assert_close(shared, copied, rtol=0, atol=0)
    # a fit that reads the cache filled by a fit that trained on it: the rows were not changed
    clear_cache()
    first = _cnn(freeze_depth=2, max_epochs=2).fit(X, y)
    again = _cnn(freeze_depth=2, max_epochs=2).fit(X, y)
    assert cache_info()["computed"] == len(X)
    np.testing.assert_array_equal(first.predict_proba(X), again.predict_proba(X))


# -- the cache is shared ---------------------------------------------------------------------


def test_grid_search_passes_each_sample_through_the_prefix_once(tiny_images):
    X, y = tiny_images
    search = GridSearchCV(_cnn(freeze_depth=-1), {"lr": [0.01, 0.1]}, cv=3).fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    info = cache_info()
    # 3 folds x 2 candidates (+ the refit) trained and scored on 40 distinct images
    assert info["computed"] == info["misses"] == len(X)
    assert info["prefixes"] == 1
    # each candidate reads every image 3 times (in two training folds, one test fold), the
    # refit once more: all of those reads but each image's first are hits
    assert info["hits"] == 2 * 3 * len(X) + len(X) - len(X)


def test_depths_are_cached_separately(tiny_images):
    X, y = tiny_images
    _cnn(freeze_depth=1).fit(X, y)
    _cnn(freeze_depth=2).fit(X, y)
    _cnn(freeze_depth=2, lr=0.1).fit(X, y)
    assert cache_info()["prefixes"] == 2
    assert cache_info()["computed"] == 2 * len(X)


def test_another_input_size_is_another_prefix(tiny_images):
    X, y = tiny_images
    _cnn(freeze_depth=1).fit(X, y)
    _cnn(freeze_depth=1, input_size=12).fit(X, y)
    assert cache_info()["prefixes"] == 2


def _two_stage_cnn(width):
    return nn.Sequential(OrderedDict(
        a=nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU()),
        b=nn.Sequential(nn.Conv2d(width, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten()),
        fc=nn.Linear(8, 2),
    ))


def test_two_factories_of_one_name_are_two_prefixes(tiny_images):
    X, y = tiny_images
    narrow, wide = partial(_two_stage_cnn, 4), partial(_two_stage_cnn, 6)
    _cnn(freeze_depth=1).set_params(backbone=narrow).fit(X, y)
    wide_clf = _cnn(freeze_depth=1).set_params(backbone=wide).fit(X, y)
    assert cache_info()["prefixes"] == 2
    plain = _cnn(freeze_depth=1, cache=False).set_params(backbone=wide).fit(X, y)
    np.testing.assert_allclose(wide_clf.predict_proba(X), plain.predict_proba(X), atol=1e-6)


def test_clones_of_a_factory_share_its_prefix(tiny_images):
    X, y = tiny_images
    clf = _cnn(freeze_depth=1).set_params(backbone=partial(_two_stage_cnn, 4))
    GridSearchCV(clf, {"lr": [0.01, 0.1]}, cv=2).fit(X, y)
    assert cache_info()["computed"] == len(X)


def test_head_only_classifier_reuses_linear_probe_features(textures):
    X, y, _ = textures
    TransferFeatures("efficientnet_lite0").fit(X).transform(X)
    assert cache_info()["computed"] == len(X)
    _lite0(freeze_depth="all").fit(X, y)
    assert cache_info()["computed"] == len(X)


# -- when the cache is not used --------------------------------------------------------------


def test_budget_too_small_trains_without_storing(tiny_images):
    X, y = tiny_images
    set_cache_options(max_bytes=1000)
    small = _cnn(freeze_depth=2, max_epochs=2).fit(X, y)
    info = cache_info()
    assert info["nbytes"] == 0
    assert info["prefixes"] == 0
    plain = _cnn(freeze_depth=2, max_epochs=2, cache=False).fit(X, y)
    np.testing.assert_array_equal(small.predict_proba(X), plain.predict_proba(X))


def test_budget_evicts_the_oldest_prefix(tiny_images):
    X, y = tiny_images
    _cnn(freeze_depth=2).fit(X, y)
    first = cache_info()["nbytes"]
    assert first == len(X) * 16 * 8 * 8 * 4  # block1's float32 output: 16 channels, 8x8
    set_cache_options(max_bytes=first + first // 2)
    _cnn(freeze_depth=2, input_size=14).fit(X, y)  # another prefix, smaller activations
    info = cache_info()
    assert info["prefixes"] == 1
    assert info["nbytes"] == len(X) * 16 * 7 * 7 * 4  # the new prefix alone: 7x7 at 14 px


def test_batchnorm_all_bypasses_the_cache(tiny_images):
    X, y = tiny_images
    clf = _cnn(freeze_depth=2, batchnorm="all").fit(X, y)
    assert clf.cache_key_ is None
    assert cache_info()["computed"] == 0
    assert cache_info()["prefixes"] == 0


def test_full_fine_tuning_bypasses_the_cache(tiny_images):
    X, y = tiny_images
    _cnn(freeze_depth=0).fit(X, y)
    assert cache_info()["computed"] == 0


def test_cache_false_bypasses_the_cache(tiny_images):
    X, y = tiny_images
    _cnn(freeze_depth=2, cache=False).fit(X, y).predict(X)
    assert cache_info()["computed"] == 0


# -- storage options -------------------------------------------------------------------------


def test_float16_storage_halves_memory_and_stays_close(textures):
    X, y, X_new = textures
    exact = _lite0(freeze_depth=-1).fit(X, y)
    nbytes32 = cache_info()["nbytes"]
    clear_cache()
    set_cache_options(dtype="float16")
    half = _lite0(freeze_depth=-1).fit(X, y)
    assert cache_info()["nbytes"] == nbytes32 // 2
    p_half, p_exact = half.predict_proba(X_new), exact.predict_proba(X_new)
    np.testing.assert_allclose(p_half, p_exact, atol=1e-2)
    assert not np.array_equal(p_half, p_exact)


def test_float16_rows_are_never_read_as_exact_ones(tiny_images, tmp_path):
    X, y = tiny_images
    set_cache_options(dtype="float16")
    _cnn(freeze_depth=2, cache=str(tmp_path)).fit(X, y)
    clear_cache()
    set_cache_options(dtype="float32")
    exact = _cnn(freeze_depth=2, cache=str(tmp_path)).fit(X, y)
    assert cache_info()["computed"] == len(X)  # the float16 files were not used
    plain = _cnn(freeze_depth=2, cache=False).fit(X, y)
    np.testing.assert_array_equal(exact.predict_proba(X), plain.predict_proba(X))


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float16'"):
        set_cache_options(dtype="int8")
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        set_cache_options(max_bytes=-1)


_SECOND_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from sktransfer import TransferClassifier
    from sktransfer.caching import cache_info

    X, y = np.load(sys.argv[1]), np.load(sys.argv[2])
    clf = TransferClassifier("test_cnn", weights=None, freeze_depth=2, max_epochs=1,
                             head_init="random",
                             batch_size=8, random_state=0, cache=sys.argv[3]).fit(X, y)
    np.save(sys.argv[4], clf.predict_proba(X))
    print(json.dumps(cache_info()))
    """
)


@pytest.mark.slow  # a second Python process
def test_memory_folder_shares_activations_between_processes(tiny_images, tmp_path):
    X, y = tiny_images
    folder = tmp_path / "acts"
    first = _cnn(freeze_depth=2, cache=str(folder)).fit(X, y)
    files = [f for _, _, fs in os.walk(folder) for f in fs]
    assert len(files) == len(X)
    assert all(f.endswith(".npy") for f in files)

    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    out = subprocess.run(
        [sys.executable, "-c", _SECOND_PROCESS, str(tmp_path / "X.npy"),
         str(tmp_path / "y.npy"), str(folder), str(tmp_path / "proba.npy")],
        capture_output=True, text=True, timeout=300, check=True,
    )
    import json

    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["computed"] == 0  # every activation was found in the folder
    np.testing.assert_allclose(np.load(tmp_path / "proba.npy"), first.predict_proba(X),
                               atol=1e-6)


def test_memory_folder_receives_rows_computed_before_it_was_given(tiny_images, tmp_path):
    X, y = tiny_images
    _cnn(freeze_depth=2).fit(X, y)  # fills the in-process cache only
    assert cache_info()["computed"] == len(X)
    folder = tmp_path / "acts"
    _cnn(freeze_depth=2, cache=str(folder)).fit(X, y)
    assert cache_info()["computed"] == len(X)  # nothing recomputed...
    files = [f for _, _, fs in os.walk(folder) for f in fs if f.endswith(".npy")]
    assert len(files) == len(X)  # ...and every row reached the folder for other processes


def test_rows_read_from_the_memory_folder_stay_in_memory(tiny_images, tmp_path):
    X, y = tiny_images
    folder = tmp_path / "acts"
    _cnn(freeze_depth=2, cache=str(folder)).fit(X, y)
    clear_cache()
    _cnn(freeze_depth=2, cache=str(folder)).fit(X, y)
    assert cache_info()["computed"] == 0
    assert cache_info()["nbytes"] == len(X) * 16 * 8 * 8 * 4  # every row, read from the folder
    for f in (p for p in folder.rglob("*.npy")):
        f.unlink()  # the folder is emptied: the next fit is served from memory
    plain = _cnn(freeze_depth=2, cache=False).fit(X, y)
    again = _cnn(freeze_depth=2, cache=str(folder)).fit(X, y)
    assert cache_info()["computed"] == 0
    np.testing.assert_array_equal(again.predict_proba(X), plain.predict_proba(X))
