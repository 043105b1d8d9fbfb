import copy
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from sktransfer import TransferFeatures
from sktransfer._compat import InvalidParameterError
from sktransfer.caching import cache_info, clear_cache
from sktransfer.datasets import load_textures

LITE0_STAGES = ["stem", "group1", "group2", "group3", "group4", "group5", "group6", "group7",
                "head"]


@pytest.fixture(autouse=True)
def _empty_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="module")
def textures():
    """48 real texture patches (brick, grass, gravel), 32x32 uint8 grayscale."""
    X, y = load_textures(patch_size=32, stride=128, return_X_y=True)
    return X, y


@pytest.fixture(scope="module")
def lite0(textures):
    X, _ = textures
    return TransferFeatures("efficientnet_lite0").fit(X[:8])


# -- output -------------------------------------------------------------------------------


def test_lite0_features_are_pooled_2d_float32(lite0, textures):
    X, _ = textures
    Z = lite0.transform(X[:10])
    assert Z.shape == (10, 1280)
    assert Z.dtype == np.float32
    assert np.isfinite(Z).all()
    assert lite0.n_features_out_ == 1280
    assert lite0.stage_names_ == LITE0_STAGES
    assert lite0.stage_ == "head"
    assert lite0.device_ == "cpu"
    assert lite0.input_spec_["sample_shape"] == (32, 32)
    assert lite0.n_features_in_ == 32 * 32


def test_feature_names_follow_the_class_name(lite0):
    names = lite0.get_feature_names_out()
    assert names.shape == (1280,)
    assert names[0] == "transferfeatures0"
    assert names[-1] == "transferfeatures1279"


def test_feature_names_need_a_fit():
    with pytest.raises(NotFittedError, match="not fitted"):
        TransferFeatures("test_mlp", weights=None).get_feature_names_out()


def test_transform_needs_a_fit(tiny_vectors):
    X, _ = tiny_vectors
    with pytest.raises(NotFittedError, match="not fitted"):
        TransferFeatures("test_mlp", weights=None).transform(X)


def test_features_do_not_depend_on_batch_size_or_cache(lite0, textures):
    X, _ = textures
    ref = copy.copy(lite0).set_params(cache=False, batch_size=64).transform(X[:8])
    small = copy.copy(lite0).set_params(cache=False, batch_size=3).transform(X[:8])
    cached = copy.copy(lite0).set_params(cache=True, batch_size=5).transform(X[:8])
    np.testing.assert_allclose(small, ref, atol=1e-5)
    np.testing.assert_allclose(cached, ref, atol=1e-5)


def test_features_equal_the_backbone_forward_in_eval_mode(lite0, textures):
    X, _ = textures
    net = lite0.module_
    with torch.no_grad():
        expected = net.features(torch.from_numpy(X[:6])).numpy()
    np.testing.assert_allclose(lite0.transform(X[:6]), expected, atol=1e-5)


def test_random_network_features_are_reproducible(tiny_images):
    X, _ = tiny_images
    a = TransferFeatures("test_cnn", weights=None, cache=False).fit(X).transform(X)
    torch.manual_seed(123)
    b = TransferFeatures("test_cnn", weights=None, cache=False).fit(X).transform(X)
    np.testing.assert_array_equal(a, b)


def test_fit_and_transform_leave_global_rng_alone(tiny_images):
    X, _ = tiny_images
    before = torch.get_rng_state()
    np_before = np.random.get_state()[1].copy()
    TransferFeatures("test_cnn", weights=None).fit(X).transform(X)
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(np.random.get_state()[1], np_before)


# -- stage choice -------------------------------------------------------------------------


@pytest.mark.parametrize("stage, n_out", [("stem", 32), ("group5", 112)])
def test_stage_output_is_globally_average_pooled(textures, stage, n_out):
    X, _ = textures
    feats = TransferFeatures(stage=stage, cache=False).fit(X[:4])
    Z = feats.transform(X[:4])
    assert Z.shape == (4, n_out)
    assert feats.n_features_out_ == n_out
    assert feats.stage_ == stage
    depth = LITE0_STAGES.index(stage) + 1
    with torch.no_grad():
        spatial = feats.module_.prefix(torch.from_numpy(X[:4]), depth)
    assert spatial.dim() == 4
    np.testing.assert_allclose(Z, spatial.mean((2, 3)).numpy(), atol=1e-5)


def test_max_pooling_of_a_stage(textures):
    X, _ = textures
    feats = TransferFeatures(stage="group2", pooling="max").fit(X[:4])
    with torch.no_grad():
        spatial = feats.module_.prefix(torch.from_numpy(X[:4]), 3)
    np.testing.assert_allclose(feats.transform(X[:4]), spatial.amax((2, 3)).numpy(), atol=1e-6)


def test_unknown_stage_names_the_stages(textures):
    X, _ = textures
    with pytest.raises(ValueError, match=r"stage='layer9'.*'stem', 'group1'"):
        TransferFeatures(stage="layer9").fit(X[:2])


def test_invalid_pooling_is_rejected_at_fit(tiny_vectors):
    X, _ = tiny_vectors
    with pytest.raises(InvalidParameterError, match="pooling"):
        TransferFeatures("test_mlp", weights=None, pooling="median").fit(X)


# -- input checks -------------------------------------------------------------------------


def test_transform_rejects_another_image_size(textures):
    X, _ = textures
    feats = TransferFeatures("test_cnn", weights=None).fit(X[:4])
    with pytest.raises(ValueError, match=r"fitted on \(32, 32\)"):
        feats.transform(np.zeros((2, 16, 16), dtype=np.uint8))


def test_input_size_resizes_every_image(textures):
    X, _ = textures
    feats = TransferFeatures("test_cnn", weights=None, input_size=24).fit(X[:4])
    assert feats.transform(np.zeros((2, 16, 16), dtype=np.uint8)).shape == (2, 16)


def test_transform_rejects_another_feature_count(tiny_vectors):
    X, _ = tiny_vectors
    feats = TransferFeatures("test_mlp", weights=None).fit(X)
    with pytest.raises(ValueError, match="X has 4 features, but TransferFeatures is expecting 5"):
        feats.transform(X[:, :4])


def test_nan_is_rejected(tiny_vectors):
    X, _ = tiny_vectors
    X = X.copy()
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TransferFeatures("test_mlp", weights=None).fit(X)


def test_image_files_and_pil_images_give_the_features_of_their_pixels(textures, tmp_path):
    from PIL import Image

    X, _ = textures
    images = [Image.fromarray(x) for x in X[:4]]
    paths = []
    for i, img in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        img.save(paths[-1])
    expected = TransferFeatures("test_cnn", weights=None).fit(X[:4]).transform(X[:4])
    from_pil = TransferFeatures("test_cnn", weights=None, input_size=32).fit(images)
    np.testing.assert_allclose(from_pil.transform(images), expected, atol=1e-6)
    from_files = TransferFeatures("test_cnn", weights=None, input_size=32).fit(paths)
    np.testing.assert_allclose(from_files.transform(paths), expected, atol=1e-6)


def test_an_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        TransferFeatures("test_cnn", weights=None, input_size=16).fit([str(bad)])


# -- the linear probe ---------------------------------------------------------------------


def test_linear_probe_pipeline_transfers_to_real_textures(textures):
    X, y = textures
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, train_size=24, stratify=y, random_state=0
    )
    probe = Pipeline([
        ("features", TransferFeatures("efficientnet_lite0")),
        ("clf", LogisticRegression(max_iter=1000)),
    ]).fit(X_train, y_train)
    raw = LogisticRegression(max_iter=1000).fit(X_train.reshape(24, -1) / 255.0, y_train)
    probe_acc = probe.score(X_test, y_test)
    raw_acc = raw.score(X_test.reshape(len(X_test), -1) / 255.0, y_test)
    assert probe_acc >= 0.85
    assert probe_acc >= raw_acc + 0.2


def test_grid_search_of_a_probe_computes_each_sample_once(tiny_images):
    X, y = tiny_images
    probe = Pipeline([
        ("features", TransferFeatures("test_cnn", weights=None)),
        ("clf", LogisticRegression()),
    ])
    GridSearchCV(probe, {"clf__C": [0.1, 1.0, 10.0]}, cv=3).fit(X, y)
    assert cache_info()["computed"] == len(X)


# -- persistence --------------------------------------------------------------------------


def test_pickle_round_trip_fitted(lite0, textures):
    X, _ = textures
    clear_cache()
    restored = pickle.loads(pickle.dumps(lite0))
    assert restored.stage_names_ == lite0.stage_names_
    np.testing.assert_array_equal(restored.transform(X[:6]), lite0.transform(X[:6]))
    clear_cache()
    np.testing.assert_allclose(
        TransferFeatures(cache=False).fit(X[:2]).transform(X[:6]), restored.transform(X[:6]),
        atol=1e-5,
    )


def test_pickle_round_trip_unfitted():
    feats = TransferFeatures("test_cnn", weights=None, stage="stem")
    restored = pickle.loads(pickle.dumps(feats))
    assert restored.get_params() == feats.get_params()
    assert clone(restored).get_params() == feats.get_params()


# -- scikit-learn conventions -------------------------------------------------------------

@parametrize_with_checks([TransferFeatures("test_mlp", weights=None)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
