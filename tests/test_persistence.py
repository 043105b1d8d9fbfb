"""Persistence: the safe folder format (config.json + safetensors), pickle and joblib."""

import hashlib
import json
import pickle
import re
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn
import torch
from safetensors.torch import load_file, save_file
from sklearn.base import clone
from sklearn.exceptions import InconsistentVersionWarning

import sktransfer
from sktransfer import TransferClassifier, TransferRegressor, get_backbone
from sktransfer._base import TransferEstimatorMixin
from sktransfer.backbones import _test_cnn, load_weights_file

TINY = dict(weights=None, max_epochs=2, random_state=0, device="cpu")


def _images(n=24, size=8, seed=0):
    return np.random.RandomState(seed).rand(n, size, size, 3).astype(np.float32)


def _vectors(n=24, seed=0):
    return np.random.RandomState(seed).randn(n, 5).astype(np.float32)


@pytest.fixture(scope="module")
def fitted_cnn():
    X = _images()
    y = np.array(["cat", "dog", "emu"] * 8)
    trained = dict(freeze_depth=1, head_init="random")  # epochs run, whatever the data size
    return TransferClassifier("test_cnn", **TINY, **trained).fit(X, y), X, y


@pytest.fixture
def saved_cnn(fitted_cnn, tmp_path):
    clf, X, y = fitted_cnn
    folder = sktransfer.save(clf, tmp_path / "model")
    return folder, clf, X, y


def _rewrite_config(folder, edit):
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _rewrite_weights(folder, edit):
    """Change the tensors and record the new file's hash, as a careful forger would."""
    path = Path(folder) / "weights.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))
    _record_hash(folder)


def _record_hash(folder):
    data = (Path(folder) / "weights.safetensors").read_bytes()

    def edit(config):
        config["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
        config["weights"]["bytes"] = len(data)

    _rewrite_config(folder, edit)


# ---------------------------------------------------------------------------------------------
# Safe format: round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        np.array(["cat", "dog", "emu"]),
        np.array([-1, 1]),
        np.array([3, 5, 7]),
        np.array([False, True]),
        np.array(["no", "yes"], dtype=object),
    ],
    ids=["str", "int", "int3", "bool", "object"],
)
def test_save_load_classifier_round_trip(labels, tmp_path):
    X = _vectors()
    y = labels[np.arange(len(X)) % len(labels)]
    clf = TransferClassifier("test_mlp", **TINY).fit(X, y)
    loaded = sktransfer.load(sktransfer.save(clf, tmp_path / "m"))
    assert type(loaded) is TransferClassifier
    assert np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.classes_.dtype == clf.classes_.dtype
    assert loaded.classes_.tolist() == clf.classes_.tolist()
    pred = loaded.predict(X)
    assert pred.dtype == clf.predict(X).dtype
    assert np.array_equal(pred, clf.predict(X))
    assert loaded.get_params() == clf.get_params()
    assert loaded.history_ == clf.history_
    assert loaded.input_spec_ == clf.input_spec_
    assert loaded.n_features_in_ == clf.n_features_in_
    assert loaded.n_frozen_stages_ == clf.n_frozen_stages_
    assert loaded.stage_names_ == clf.stage_names_
    assert loaded.n_features_out_ == clf.n_features_out_


def test_save_load_image_classifier_round_trip(saved_cnn):
    folder, clf, X, y = saved_cnn
    loaded = sktransfer.load(folder)
    assert np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.predict(X).tolist() == clf.predict(X).tolist()
    # the BatchNorm running statistics travel too
    own, back = clf.module_.state_dict(), loaded.module_.state_dict()
    assert all(torch.equal(own[k], back[k]) for k in own)


@pytest.mark.parametrize("n_targets", [None, 2])
def test_save_load_regressor_round_trip(n_targets, tmp_path):
    X = _images(20)
    rng = np.random.RandomState(1)
    y = rng.randn(20) * 100 + 7 if n_targets is None else rng.randn(20, n_targets) * 100
    reg = TransferRegressor("test_cnn", **TINY).fit(X, y)
    loaded = sktransfer.load(sktransfer.save(reg, tmp_path / "m"))
    assert type(loaded) is TransferRegressor
    assert np.array_equal(loaded.predict(X), reg.predict(X))
    assert loaded.predict(X).shape == y.shape


def test_save_load_features_transformer_round_trip(tmp_path):
    X = _images(10)
    features = sktransfer.TransferFeatures("test_cnn", weights=None, stage="block1").fit(X)
    loaded = sktransfer.load(sktransfer.save(features, tmp_path / "m"))
    assert loaded.stage_ == "block1"
    assert np.array_equal(loaded.transform(X), features.transform(X))


def test_save_load_unfitted(tmp_path):
    est = TransferClassifier(
        "resnet18", image_shape=(8, 8), class_weight={1: 2.0, "b": 0.5}, weights=tmp_path / "w.pt"
    )
    loaded = sktransfer.load(sktransfer.save(est, tmp_path / "m"))
    assert loaded.get_params() == est.get_params()
    assert isinstance(loaded.get_params()["image_shape"], tuple)
    assert not hasattr(loaded, "module_")
    assert not (tmp_path / "m" / "weights.safetensors").exists()


def test_loaded_model_can_be_refitted(saved_cnn):
    folder, clf, X, y = saved_cnn
    loaded = sktransfer.load(folder)
    refit = loaded.fit(X, y)
    assert refit.predict(X).shape == (len(X),)


def test_config_records_versions_metadata_and_weights_hash(saved_cnn):
    folder, clf, *_ = saved_cnn
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 1
    assert config["estimator"] == "TransferClassifier"
    assert config["versions"]["sktransfer"] == sktransfer.__version__
    assert config["versions"]["torch"] == torch.__version__
    assert config["versions"]["sklearn"] == sklearn.__version__
    assert config["params"]["backbone"] == "test_cnn"
    assert config["fitted"]["classes_"] == {"dtype": "<U3", "values": ["cat", "dog", "emu"]}
    assert config["fitted"]["stage_names_"] == ["stem", "block1", "block2"]
    assert config["fitted"]["device_"] == "cpu"
    assert [row["epoch"] for row in config["fitted"]["history_"]] == [1, 2]
    data = (folder / "weights.safetensors").read_bytes()
    assert config["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert b"pickle" not in (folder / "config.json").read_bytes()


def test_save_overwrites_an_earlier_save(saved_cnn, tmp_path):
    folder, clf, X, y = saved_cnn
    other = clone(clf).set_params(random_state=1).fit(X, y)
    sktransfer.save(other, folder)
    assert np.array_equal(sktransfer.load(folder).predict_proba(X), other.predict_proba(X))


@pytest.mark.parametrize(
    "param, value",
    [
        ("backbone", _test_cnn),
        ("callbacks", [object()]),
        ("random_state", np.random.RandomState(0)),
        ("cache", joblib.Memory(None, verbose=0)),
        ("tol", float("nan")),
    ],
    ids=["callable-backbone", "callbacks", "RandomState", "Memory", "nan"],
)
def test_save_refuses_hyperparameters_it_cannot_represent(param, value, tmp_path):
    est = TransferClassifier("test_cnn").set_params(**{param: value})
    with pytest.raises(ValueError, match=rf"hyperparameter {param}=.*cannot represent"):
        sktransfer.save(est, tmp_path / "m")
    assert not (tmp_path / "m" / "config.json").exists()


def test_save_refuses_other_objects(tmp_path):
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(ValueError, match="save\\(\\) stores .*TransferClassifier"):
        sktransfer.save(LogisticRegression(), tmp_path / "m")


def test_load_needs_no_network_and_no_pretrained_file(tmp_path, monkeypatch):
    X = _images(16)
    y = np.array([0, 1] * 8)
    weights_file = tmp_path / "pretrained.pt"
    torch.save(_test_cnn().state_dict(), weights_file)
    clf = TransferClassifier("test_cnn", **{**TINY, "weights": str(weights_file)}).fit(X, y)
    folder = sktransfer.save(clf, tmp_path / "m")
    weights_file.unlink()

    def no_network(*args, **kwargs):
        raise AssertionError("load() tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    loaded = sktransfer.load(folder)
    assert np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))


# ---------------------------------------------------------------------------------------------
# Safe format: refusals
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_build(monkeypatch):
    """Fails the test if an architecture is built."""

    def build(*args, **kwargs):
        raise AssertionError("an architecture was built before the config was accepted")

    monkeypatch.setattr(TransferEstimatorMixin, "_build_network", build)


@pytest.mark.parametrize("name", ["builtins.eval", "LogisticRegression", "Pipeline", None])
def test_load_refuses_estimator_classes_outside_the_allow_list(saved_cnn, name, no_build):
    folder, *_ = saved_cnn
    _rewrite_config(folder, lambda c: c.update(estimator=name))
    with pytest.raises(ValueError, match="Refusing to load estimator class"):
        sktransfer.load(folder)


@pytest.mark.parametrize("backbone", ["not_a_backbone", "os.system", "../evil", 42])
def test_load_refuses_backbones_outside_the_allow_list(saved_cnn, backbone, no_build):
    folder, *_ = saved_cnn
    _rewrite_config(folder, lambda c: c["params"].update(backbone=backbone))
    with pytest.raises(ValueError, match="Refusing to load backbone"):
        sktransfer.load(folder)


def test_load_accepts_registered_torchvision_and_timm_names(tmp_path):
    for name in ["test_mlp", "resnet18", "timm:resnet18"]:
        est = sktransfer.load(sktransfer.save(TransferClassifier(name), tmp_path / name))
        assert est.backbone == name


def test_load_detects_a_tampered_weights_file(saved_cnn):
    folder, *_ = saved_cnn
    path = folder / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        sktransfer.load(folder)


def test_load_detects_a_tampered_hash(saved_cnn):
    folder, *_ = saved_cnn
    _rewrite_config(folder, lambda c: c["weights"].update(sha256="0" * 64))
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        sktransfer.load(folder)


def test_load_detects_a_truncated_weights_file(saved_cnn):
    folder, *_ = saved_cnn
    path = folder / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        sktransfer.load(folder)
    # with the hash forged too, parsing catches it
    _record_hash(folder)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        sktransfer.load(folder)


def test_load_detects_a_missing_weights_file(saved_cnn):
    folder, *_ = saved_cnn
    (folder / "weights.safetensors").unlink()
    with pytest.raises(ValueError, match="weights file .* is missing"):
        sktransfer.load(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.__setitem__("head.weight", torch.zeros(4, 16)), r"wrong shapes \['head"),
        (lambda s: s.pop("stages.stem.0.weight"), r"missing \['stages.stem.0.weight'\]"),
        (lambda s: s.__setitem__("extra.weight", torch.zeros(2)), r"unexpected \['extra"),
    ],
    ids=["wrong-shape", "missing-key", "extra-key"],
)
def test_load_checks_every_key_and_shape(saved_cnn, edit, message):
    folder, *_ = saved_cnn
    _rewrite_weights(folder, edit)
    with pytest.raises(ValueError, match=message):
        sktransfer.load(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.__setitem__("format_version", 99), "Upgrade sktransfer"),
        (lambda c: c.__setitem__("format", "something-else"), "not an sktransfer model config"),
        (lambda c: c["params"].__setitem__("lr", -1.0), "invalid hyperparameters.*lr"),
        (lambda c: c["params"].__setitem__("no_such_param", 1), "unknown hyperparameters"),
        (lambda c: c["fitted"].pop("classes_"), r"missing \['classes_'\]"),
        (
            lambda c: c["fitted"]["classes_"].__setitem__("values", ["cat", "dog", 3]),
            "classes_",
        ),
        (
            lambda c: c["fitted"]["classes_"].__setitem__("values", ["cat", "dog"]),
            "wrong shapes",
        ),
        (lambda c: c["fitted"]["classes_"].__setitem__("dtype", "<M8[ns]"), "classes_"),
        (lambda c: c["fitted"]["input_spec_"].__setitem__("kind", "code"), "input_spec_"),
        (lambda c: c["fitted"].__setitem__("n_frozen_stages_", "all"), "n_frozen_stages_"),
        (lambda c: c["fitted"].__setitem__("cache_key_", "../../etc"), "cache_key_"),
        (lambda c: c["fitted"].__setitem__("n_features_out_", 99), "n_features_out_=99"),
        (lambda c: c["fitted"].__setitem__("device_", "quantum"), "not a device"),
        (lambda c: c.__setitem__("weights", None), "'weights' must record"),
    ],
    ids=[
        "version", "format", "bad-param", "unknown-param", "no-classes", "mixed-classes",
        "fewer-classes", "classes-dtype", "spec", "frozen", "cache-key", "features", "device",
        "no-hash",
    ],
)
def test_load_rejects_a_tampered_config(saved_cnn, edit, message):
    folder, *_ = saved_cnn
    _rewrite_config(folder, edit)
    with pytest.raises(ValueError, match=message):
        sktransfer.load(folder)


def test_load_rejects_what_is_not_a_model_folder(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        sktransfer.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        sktransfer.load(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "sktransfer-estimator", "tol": NaN}')
    with pytest.raises(ValueError, match="not valid JSON"):
        sktransfer.load(tmp_path)


def test_load_on_a_cpu_only_machine_falls_back_with_a_warning(saved_cnn, monkeypatch):
    folder, clf, X, y = saved_cnn
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA is not available here"):
        loaded = sktransfer.load(folder, device="cuda")
    assert loaded.device_ == "cpu"
    assert np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    # a model whose config says it was fitted on CUDA
    _rewrite_config(folder, lambda c: c["fitted"].update(device_="cuda"))
    with pytest.warns(UserWarning, match="fitted on 'cuda'"):
        loaded = sktransfer.load(folder)
    assert loaded.device_ == "cpu"
    assert np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_load_rejects_an_unknown_device(saved_cnn):
    folder, *_ = saved_cnn
    with pytest.raises(ValueError, match="not a device torch understands"):
        sktransfer.load(folder, device="gpu-please")


# ---------------------------------------------------------------------------------------------
# pickle / joblib (trusted files)
# ---------------------------------------------------------------------------------------------


def test_pickle_round_trip_fitted_and_unfitted(fitted_cnn):
    clf, X, y = fitted_cnn
    back = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(back.predict_proba(X), clf.predict_proba(X))
    assert back.classes_.tolist() == clf.classes_.tolist()
    assert back.history_ == clf.history_
    unfitted = pickle.loads(pickle.dumps(clone(clf)))
    assert unfitted.get_params() == clf.get_params()
    assert not hasattr(unfitted, "module_")


def test_joblib_round_trip_with_read_only_memmap(fitted_cnn, tmp_path):
    clf, X, y = fitted_cnn
    path = tmp_path / "clf.joblib"
    joblib.dump(clf, path)
    back = joblib.load(path, mmap_mode="r")
    assert np.array_equal(back.predict_proba(X), clf.predict_proba(X))
    # and the loaded model still trains
    assert back.fit(X, y).predict(X).shape == (len(X),)


def test_pickle_keeps_the_sklearn_version_stamp(fitted_cnn):
    clf, X, y = fitted_cnn
    rebuild, args, state = clf.__reduce_ex__(4)[:3]
    assert state["_sklearn_version"] == sklearn.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        pickle.loads(pickle.dumps(clf))  # same version: silent
    state = dict(state, _sklearn_version="0.24.2")
    obj = rebuild(*args)
    with pytest.warns(InconsistentVersionWarning, match="from version 0.24.2"):
        obj.__setstate__(state)
    assert not hasattr(obj, "_sklearn_version")
    assert np.array_equal(obj.predict_proba(X), clf.predict_proba(X))


def test_pickle_of_a_cuda_model_loads_on_a_cpu_only_machine(fitted_cnn, monkeypatch):
    clf, X, y = fitted_cnn
    expected = clf.predict_proba(X)
    cuda_clf = pickle.loads(pickle.dumps(clf))
    cuda_clf.device_ = "cuda"
    data = pickle.dumps(cuda_clf)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="fitted on 'cuda' but CUDA is not available"):
        back = pickle.loads(data)
    assert back.device_ == "cpu"
    np.testing.assert_allclose(back.predict_proba(X), expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Weights files carrying code are refused everywhere
# ---------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil_weights(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"stem.0.weight": _Payload(marker)}, path)
    return path, marker


def test_the_payload_is_live(evil_weights, tmp_path):
    path, _ = evil_weights
    torch.save({"w": _Payload(tmp_path / "proof")}, tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)  # what sktransfer never does
    assert (tmp_path / "proof").exists()


def test_code_payload_refused_by_every_api_that_takes_weights(evil_weights, saved_cnn):
    path, marker = evil_weights
    refused = "Refused to load .* would run code"
    with pytest.raises(ValueError, match=refused):
        load_weights_file(path)
    with pytest.raises(ValueError, match=refused):
        get_backbone("test_cnn", weights=str(path))
    with pytest.raises(ValueError, match=refused):
        get_backbone("resnet18", weights=str(path))
    with pytest.raises(ValueError, match=refused):
        TransferClassifier("test_cnn", **{**TINY, "weights": str(path)}).fit(
            _images(8), [0, 1] * 4
        )
    folder, *_ = saved_cnn
    (folder / "weights.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="corrupt or was replaced"):
        sktransfer.load(folder)
    _record_hash(folder)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        sktransfer.load(folder)
    assert not marker.exists()


def test_no_weights_only_false_in_the_package():
    root = Path(sktransfer.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if re.search(r"weights_only\s*=\s*False", p.read_text(encoding="utf-8"))
    ]
    assert offenders == []



def test_save_load_model_fitted_on_image_files(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    paths = []
    for i in range(8):
        path = tmp_path / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray((rng.rand(12, 16, 3) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    y = np.array(["a", "b"] * 4)
    clf = TransferClassifier("test_cnn", **TINY, input_size=8).fit(paths, y)
    loaded = sktransfer.load(sktransfer.save(clf, tmp_path / "m"))
    assert loaded.input_spec_ == clf.input_spec_
    assert np.array_equal(loaded.predict_proba(paths), clf.predict_proba(paths))
    assert loaded.predict(paths).tolist() == clf.predict(paths).tolist()
