"""The rows of the behaviour contract's "Inputs" and "Reproducibility" sections."""

import random
import urllib.error

import numpy as np
import pytest
import torch
from sklearn.exceptions import DataConversionWarning
from sklearn.utils._param_validation import InvalidParameterError
from skorch.callbacks import Callback

import sktransfer._network
from sktransfer import TransferClassifier, TransferRegressor
from sktransfer.backbones import _test_cnn

TINY = dict(weights=None, max_epochs=1, random_state=0, device="cpu")


def _cnn(**params):
    return TransferClassifier("test_cnn", **{**TINY, **params})


def _mlp(**params):
    return TransferClassifier("test_mlp", **{**TINY, **params})


def _images(n=12, shape=(8, 8, 3), seed=0):
    return np.random.RandomState(seed).rand(n, *shape).astype(np.float32)


def _vectors(n=12, d=5, seed=0):
    return np.random.RandomState(seed).rand(n, d).astype(np.float32)


Y2 = np.array([0, 1] * 6)


@pytest.fixture
def no_backbone(monkeypatch):
    """Fails the test if a backbone is resolved (its weights loaded)."""

    def get_backbone(*args, **kwargs):
        raise AssertionError("a backbone was built before the input was checked")

    monkeypatch.setattr(sktransfer._network, "get_backbone", get_backbone)


# ---------------------------------------------------------------------------------------------
# NaN / inf
# ---------------------------------------------------------------------------------------------

RANKS = {
    "2d": (_mlp, lambda: _vectors()),
    "3d": (_cnn, lambda: _images(shape=(8, 8))),
    "4d": (_cnn, lambda: _images()),
}


@pytest.mark.parametrize("rank", sorted(RANKS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_X_at_fit(rank, bad, request):
    make, data = RANKS[rank]
    X = data()
    X.flat[7] = bad
    request.getfixturevalue("no_backbone")
    with pytest.raises(ValueError, match="NaN|infinity"):
        make().fit(X, Y2)


@pytest.mark.parametrize("rank", sorted(RANKS))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_X_at_predict(rank, bad):
    make, data = RANKS[rank]
    X = data()
    est = make().fit(X, Y2)
    X_bad = X.copy()
    X_bad.flat[-1] = bad
    for method in (est.predict, est.predict_proba):
        with pytest.raises(ValueError, match="NaN|infinity"):
            method(X_bad)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_y(bad, no_backbone):
    X = _vectors()
    y = Y2.astype(float)
    y[3] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        _mlp().fit(X, y)
    with pytest.raises(ValueError, match="NaN or infinity"):
        TransferRegressor("test_mlp", **TINY).fit(X, y)


# ---------------------------------------------------------------------------------------------
# Degenerate shapes
# ---------------------------------------------------------------------------------------------


def test_zero_samples():
    with pytest.raises(ValueError, match=r"0 sample\(s\)"):
        _mlp().fit(_vectors()[:0], Y2[:0])
    with pytest.raises(ValueError, match=r"0 sample\(s\)"):
        _cnn().fit(_images()[:0], Y2[:0])


def test_zero_features():
    with pytest.raises(ValueError, match=r"0 feature\(s\)"):
        _mlp().fit(_vectors()[:, :0], Y2)
    with pytest.raises(ValueError, match=r"0 feature\(s\)"):
        _cnn().fit(_images(shape=(0, 8, 3)), Y2)


def test_one_dimensional_X():
    with pytest.raises(ValueError, match="Reshape your data"):
        _mlp().fit(_vectors()[:, 0], Y2)


@pytest.mark.parametrize("rank", sorted(RANKS))
def test_predict_on_a_single_sample_asks_to_reshape(rank):
    make, data = RANKS[rank]
    X = data()
    est = make().fit(X, Y2)
    with pytest.raises(ValueError, match="Reshape your data"):
        est.predict(X[0])
    assert est.predict(X[:1]).shape == (1,)


def test_one_training_sample():
    X = _vectors(1)
    reg = TransferRegressor("test_mlp", **TINY).fit(X, [3.0])
    assert reg.predict(X).shape == (1,)
    # the defaults make it a ridge probe on the frozen features; training BatchNorm is refused
    assert TransferRegressor("test_cnn", **TINY).fit(_images(1), [3.0]).n_iter_ == 0
    with pytest.raises(ValueError, match="1 sample"):
        TransferRegressor("test_cnn", **TINY, freeze_depth=0).fit(_images(1), [3.0])


def test_last_batch_of_one_sample_with_batchnorm():
    X, y = _images(10), np.array([0, 1] * 5)
    clf = _cnn(batch_size=3, freeze_depth=0).fit(X, y)  # batches 3, 3, 3, 1
    assert np.isfinite(clf.predict_proba(X)).all()


def test_batchnorm_on_one_value_per_channel_is_a_clear_error():
    X, y = _images(10, shape=(1, 1, 3)), np.array([0, 1] * 5)
    with pytest.raises(ValueError, match="1 sample") as info:
        _cnn(batch_size=1, freeze_depth=0).fit(X, y)
    assert "Expected more than 1 value per channel" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def test_one_class_is_refused_before_any_weights_are_loaded(no_backbone):
    with pytest.raises(ValueError, match="only one class"):
        _mlp().fit(_vectors(), np.zeros(12, dtype=int))
    with pytest.raises(ValueError, match="only one class"):
        _cnn().fit(_images(), np.array(["a"] * 12))


def test_continuous_y_to_the_classifier():
    y = np.random.RandomState(0).rand(12)
    with pytest.raises(ValueError, match="Unknown label type: .?continuous"):
        _mlp().fit(_vectors(), y)


@pytest.mark.parametrize(
    "labels",
    [np.array(["cat", "dog", "emu"]), np.array([1, 2]), np.array([-3, 0, 2])],
    ids=["str3", "1/2", "negative"],
)
def test_labels_of_any_kind(labels):
    X = _vectors(18)
    y = labels[np.arange(18) % len(labels)]
    clf = _mlp().fit(X, y)
    assert clf.classes_.dtype == y.dtype
    assert clf.classes_.tolist() == sorted(set(y.tolist()))
    pred = clf.predict(X)
    assert pred.dtype == y.dtype
    proba = clf.predict_proba(X)
    assert proba.shape == (18, len(clf.classes_))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(axis=1)])
    assert np.array_equal(clf.classes_[proba.argmax(axis=1)], pred)


def test_y_as_a_column_vector_warns_and_gives_the_same_model():
    X = _vectors()
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        column = _mlp().fit(X, Y2[:, None])
    flat = _mlp().fit(X, Y2)
    assert np.array_equal(column.predict_proba(X), flat.predict_proba(X))


# ---------------------------------------------------------------------------------------------
# Input shape at predict
# ---------------------------------------------------------------------------------------------


def test_predict_with_another_feature_count():
    clf = _mlp().fit(_vectors(), Y2)
    with pytest.raises(ValueError, match="X has 4 features, but .* is expecting 5 features"):
        clf.predict(_vectors(d=4))


def test_predict_with_another_channel_count():
    clf = _cnn().fit(_images(), Y2)
    with pytest.raises(ValueError, match=r"1 channel\(s\).*fitted on 3.*expected .*\(8, 8, 3\)"):
        clf.predict(_images(shape=(8, 8, 1)))


def test_predict_with_another_image_size():
    clf = _cnn().fit(_images(), Y2)
    with pytest.raises(ValueError, match=r"per-sample shape \(6, 6, 3\).*fitted on \(8, 8, 3\)"):
        clf.predict(_images(shape=(6, 6, 3)))
    resizing = _cnn(input_size=8).fit(_images(), Y2)
    assert resizing.predict(_images(shape=(6, 6, 3))).shape == (12,)


def test_grayscale_is_repeated_to_rgb():
    gray = _images(shape=(8, 8))
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    from_gray = _cnn().fit(gray, Y2)
    from_rgb = _cnn().fit(rgb, Y2)
    np.testing.assert_allclose(from_gray.predict_proba(gray), from_rgb.predict_proba(rgb),
                               atol=1e-6, rtol=0)
    one_channel = _cnn().fit(gray[..., None], Y2)
    np.testing.assert_allclose(one_channel.predict_proba(gray[..., None]),
                               from_rgb.predict_proba(rgb), atol=1e-6, rtol=0)


def test_rgba_drops_alpha():
    rgba = _images(shape=(8, 8, 4))
    from_rgba = _cnn().fit(rgba, Y2)
    from_rgb = _cnn().fit(rgba[..., :3], Y2)
    np.testing.assert_allclose(from_rgba.predict_proba(rgba),
                               from_rgb.predict_proba(rgba[..., :3]), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# Backbones and weights
# ---------------------------------------------------------------------------------------------


def test_unknown_weights_name_for_a_registered_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown weights 'nope'.*'DEFAULT', a local file"):
        _cnn(weights="nope").fit(_images(), Y2)


def test_pretrained_weights_not_available_offline(tmp_path, monkeypatch):
    """As on a machine without network: torch's cache is empty and the download fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # a set_dir() elsewhere

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    looked_for = str(tmp_path / "hub" / "checkpoints" / "resnet18-")
    with pytest.raises(ValueError, match="not available offline") as info:
        TransferClassifier("resnet18", weights="DEFAULT", device="cpu").fit(_images(), Y2)
    message = str(info.value)
    assert looked_for in message
    for remedy in ("TORCH_HOME", "local weights file", "weights=None"):
        assert remedy in message


# ---------------------------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param, value, message",
    [
        ("lr", -0.1, r"'lr' parameter .* range \(0.0, inf\)"),
        ("lr", 0.0, r"'lr' parameter .* range \(0.0, inf\)"),
        ("momentum", 1.0, r"'momentum' parameter .* range \[0.0, 1.0\)"),
        ("batch_size", 0, "'batch_size' parameter"),
        ("optimizer", "adam", r"'optimizer' parameter .*\{.*'adamw'.*'sgd'.*\}|'sgd'.*'adamw'"),
    ],
)
def test_invalid_hyperparameters(param, value, message):
    with pytest.raises(InvalidParameterError, match=message):
        _cnn(**{param: value}).fit(_images(), Y2)


# ---------------------------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------------------------


def _global_state():
    return (
        torch.get_rng_state().clone(),
        np.random.get_state()[1].copy(),
        random.getstate(),
        torch.get_num_threads(),
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
    )


def _same_state(a, b):
    return (
        torch.equal(a[0], b[0])
        and np.array_equal(a[1], b[1])
        and a[2] == b[2]
        and a[3:] == b[3:]
    )


@pytest.mark.parametrize(
    "random_state, mode",
    [(0, "grad"), (None, "grad"), (0, "no_grad"), (0, "inference_mode")],
)
def test_fit_and_predict_keep_thread_count_and_grad_mode(random_state, mode):
    """Also under a non-default thread count and inside no_grad / inference_mode blocks."""
    X = _images()
    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad,
               "inference_mode": torch.inference_mode}[mode]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with context():
            before = _global_state()
            clf = _cnn(max_epochs=2, random_state=random_state, freeze_depth=0).fit(X, Y2)
            assert _same_state(before, _global_state())
            assert clf.n_iter_ == len(clf.history_) == 2
            proba = clf.predict_proba(X)
            clf.predict(X)
            assert _same_state(before, _global_state())
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    finally:
        torch.set_num_threads(threads)


class _InitialState(Callback):
    """Records the network's state when training begins (a class attribute, as skorch works
    on a copy of the callback)."""

    states = []

    def on_train_begin(self, net, **kwargs):
        _InitialState.states.append(
            {k: v.detach().clone() for k, v in net.module_.state_dict().items()}
        )


@pytest.fixture
def local_weights(tmp_path):
    torch.manual_seed(123)
    path = tmp_path / "pretrained.pt"
    state = _test_cnn().state_dict()
    torch.save(state, path)
    _InitialState.states.clear()
    return str(path), state


def test_every_fit_starts_from_the_pretrained_weights_and_a_fresh_head(local_weights):
    path, pretrained = local_weights
    X = _images(20)
    y = np.array([0, 1] * 10)
    clf = _cnn(weights=path, max_epochs=2, freeze_depth=0, callbacks=[_InitialState()])
    first = clf.fit(X, y).predict_proba(X)
    second = clf.fit(X, y).predict_proba(X)
    assert np.array_equal(first, second)
    start1, start2 = _InitialState.states
    for key, value in pretrained.items():
        if key.startswith("fc."):
            continue  # the original head is replaced
        name = "stages." + key
        assert torch.equal(start1[name], value), name
    assert all(torch.equal(start1[k], start2[k]) for k in start1)


def test_warm_start_continues_from_the_previous_fit(local_weights):
    path, _ = local_weights
    X = _images(20)
    y = np.array([0, 1] * 10)
    clf = _cnn(weights=path, max_epochs=2, freeze_depth=0, warm_start=True,
               callbacks=[_InitialState()])
    clf.fit(X, y)
    after_first = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    clf.fit(X, y)
    start2 = _InitialState.states[1]
    assert all(torch.equal(start2[k], after_first[k]) for k in after_first)
    assert not all(
        torch.equal(clf.module_.state_dict()[k], after_first[k]) for k in after_first
    )
