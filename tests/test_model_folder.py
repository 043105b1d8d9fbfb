"""weights= a saved model folder: a fitted model's backbone stages start another fit."""

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sktransfer
from sktransfer import TransferClassifier, TransferFeatures, TransferRegressor
from sktransfer._model_folder import read_saved_stages
from sktransfer._network import build_network
from sktransfer._spec import InputSpec

TINY = dict(max_epochs=1, random_state=0, device="cpu")


def _images(n=24, seed=0, shape=(8, 8, 3)):
    return np.random.RandomState(seed).rand(n, *shape).astype(np.float32)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A classifier fitted on a 4-class source task, saved."""
    X = _images(32)
    y = np.array([0, 1, 2, 3] * 8)
    clf = TransferClassifier("test_cnn", weights=None, freeze_depth=0, **TINY).fit(X, y)
    return sktransfer.save(clf, tmp_path_factory.mktemp("source") / "source.skt"), clf


def _stages_equal(a, b):
    sa, sb = a.stages.state_dict(), b.stages.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_saved_classifier_starts_another_task_with_its_stages_and_a_new_head(source):
    folder, src = source
    X = _images(20, seed=1)
    y = np.array(["a", "b"] * 10)
    clf = TransferClassifier("test_cnn", weights=folder, freeze_depth="all", **TINY).fit(X, y)
    assert _stages_equal(clf.module_, src.module_)  # frozen: still the saved stages
    assert clf.module_.head.out_features == 2
    assert clf.weights_.startswith(f"{folder} (saved TransferClassifier, backbone 'test_cnn'")
    sha = json.loads((Path(folder) / "config.json").read_text())["weights"]["sha256"]
    assert sha in clf.weights_


def test_the_regressor_and_the_feature_extractor_accept_a_model_folder(source):
    folder, src = source
    X = _images(20, seed=1)
    reg = TransferRegressor("test_cnn", weights=folder, freeze_depth="all", **TINY)
    reg.fit(X, np.arange(20.0))
    assert _stages_equal(reg.module_, src.module_)
    features = TransferFeatures("test_cnn", weights=folder, device="cpu").fit(X)
    src.module_.eval()
    with torch.no_grad():
        expected = src.module_.features(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(features.transform(X), expected, atol=1e-6)


def test_the_new_head_is_initialised_independently_of_the_saved_stages(source, tmp_path):
    folder, _ = source
    other = TransferClassifier("test_cnn", weights=None, max_epochs=1, random_state=7)
    other = sktransfer.save(other.fit(_images(20), [0, 1] * 10), tmp_path / "other")
    spec = InputSpec("image", "nhwc", (8, 8, 3), "float32", scale=1.0, channels=3)
    sample = torch.zeros(2, 8, 8, 3)
    heads = []
    for weights in (folder, other):
        torch.manual_seed(0)
        net = build_network("test_cnn", weights=weights, spec=spec, n_outputs=3,
                            sample=sample).net
        heads.append(net.head.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])


def test_another_backbone_is_refused_naming_both(source):
    folder, _ = source
    X = _images(20)
    clf = TransferClassifier("test_mlp", weights=folder, **TINY)
    with pytest.raises(ValueError, match=r"backbone 'test_cnn', but backbone='test_mlp'"):
        clf.fit(X.reshape(20, -1), [0, 1] * 10)

    def other_cnn():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))

    with pytest.raises(ValueError, match=r"backbone 'test_cnn', but backbone=.*other_cnn"):
        TransferFeatures(other_cnn, weights=folder, device="cpu").fit(X)


def test_a_folder_that_is_not_a_saved_model_is_refused(tmp_path):
    X, y = _images(20), [0, 1] * 10
    with pytest.raises(ValueError, match=r"has no config.json.*weights= takes a folder"):
        TransferClassifier("test_cnn", weights=tmp_path, **TINY).fit(X, y)
    (tmp_path / "config.json").write_text('{"format": "keras", "layers": []}')
    with pytest.raises(ValueError, match=r"format 'sktransfer-estimator' expected, found "
                                         r"'keras'"):
        TransferFeatures("test_cnn", weights=str(tmp_path), device="cpu").fit(X)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an sktransfer model config"):
        TransferFeatures("test_cnn", weights=str(tmp_path), device="cpu").fit(X)


def test_an_unfitted_saved_model_has_nothing_to_start_from(tmp_path):
    folder = sktransfer.save(TransferClassifier("test_cnn"), tmp_path / "unfitted")
    with pytest.raises(ValueError, match="holds an unfitted TransferClassifier"):
        TransferFeatures("test_cnn", weights=folder, device="cpu").fit(_images(4))


def test_tampered_weights_in_the_folder_are_refused(source, tmp_path):
    folder, clf = source
    copy = sktransfer.save(clf, tmp_path / "copy")
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        TransferFeatures("test_cnn", weights=copy, device="cpu").fit(_images(4))


def test_weights_and_cache_key_follow_the_folder_contents(tmp_path):
    X = _images(20)
    folder = tmp_path / "model"
    first = TransferClassifier("test_cnn", weights=None, **TINY).fit(X, [0, 1] * 10)
    sktransfer.save(first, folder)
    before = TransferFeatures("test_cnn", weights=folder, device="cpu").fit(X)
    out_before = before.transform(X)
    second = TransferClassifier("test_cnn", weights=None, max_epochs=1, random_state=1)
    sktransfer.save(second.fit(X, [0, 1] * 10), folder)  # same path, other weights
    after = TransferFeatures("test_cnn", weights=folder, device="cpu").fit(X)
    assert after.weights_ != before.weights_
    assert after.cache_key_ != before.cache_key_
    assert not np.allclose(after.transform(X), out_before)


def test_a_saved_mlp_with_lazy_layers_loads(tmp_path):
    X = np.random.RandomState(0).randn(20, 5).astype(np.float32)
    src = TransferClassifier("test_mlp", weights=None, **TINY).fit(X, [0, 1] * 10)
    folder = sktransfer.save(src, tmp_path / "mlp")
    clf = TransferClassifier("test_mlp", weights=folder, freeze_depth="all", **TINY)
    assert _stages_equal(clf.fit(X, [1, 2] * 10).module_, src.module_)


@pytest.mark.parametrize("grayscale", ["repeat", "adapt"])
def test_a_stem_adapted_to_gray_images_computes_the_same_features(tmp_path, grayscale):
    X = _images(20, shape=(8, 8))
    src = TransferClassifier("test_cnn", weights=None, grayscale="adapt", **TINY)
    folder = sktransfer.save(src.fit(X, [0, 1] * 10), tmp_path / "gray")
    feats = TransferFeatures("test_cnn", weights=folder, grayscale=grayscale, device="cpu")
    src.module_.eval()
    with torch.no_grad():
        expected = src.module_.features(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(feats.fit(X).transform(X), expected, atol=1e-5)


def test_a_backbone_whose_last_stage_is_flattened_by_the_builder_loads(tmp_path):
    def unpooled():
        return nn.Sequential(OrderedDict(
            stem=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
            last=nn.Sequential(nn.Conv2d(4, 2, 3, stride=4)),
        ))

    sktransfer.register_backbone("unpooled_test", unpooled, overwrite=True)
    X = _images(20)
    src = TransferClassifier("unpooled_test", weights=None, **TINY).fit(X, [0, 1] * 10)
    assert read_saved_stages(sktransfer.save(src, tmp_path / "m")).stage_names == [
        "stem", "last"]
    clf = TransferClassifier("unpooled_test", weights=tmp_path / "m", freeze_depth="all",
                             **TINY).fit(X, [0, 1] * 10)
    assert _stages_equal(clf.module_, src.module_)
