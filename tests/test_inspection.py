"""Saliency maps, the three displays and ``sktransfer explain`` (sktransfer.inspection)."""

import copy
import csv
import pickle
import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError

import sktransfer
from sktransfer import TransferClassifier, TransferFeatures, TransferRegressor
from sktransfer.cli import main, save_model
from sktransfer.inspection import (
    EmbeddingDisplay,
    SaliencyDisplay,
    TopLossesDisplay,
    saliency_maps,
    save_explanations,
)
from sktransfer.pretraining import ContrastivePretrainer

pytest.importorskip("captum")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _images(n=24, side=16, seed=0):
    """uint8 RGB images, NHWC, with a learnable 3-class signal (a bright band)."""
    rng = np.random.RandomState(seed)
    X = rng.randint(0, 120, (n, side, side, 3)).astype(np.uint8)
    y = np.array(["cat", "dog", "fox"] * (n // 3))
    X[y == "dog", : side // 2] += 120
    X[y == "fox", :, : side // 2] += 120
    return X, y


@pytest.fixture(scope="module")
def clf():
    X, y = _images()
    return TransferClassifier("test_cnn", weights=None, freeze_depth=1, max_epochs=3,
                              random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def reg():
    X, _ = _images()
    Y = np.c_[X.mean(axis=(1, 2, 3)), X[:, :8].mean(axis=(1, 2, 3))]
    return TransferRegressor("test_cnn", weights=None, max_epochs=2, random_state=0).fit(X, Y)


def _quadrant_task(n, side, patch, margin, seed):
    """Class 1 iff a white ``patch`` x ``patch`` square lies in the top-left quadrant, at a
    random place at least ``margin`` pixels from the quadrant's inner edges; class 0 has no
    square. The background is dark noise."""
    rng = np.random.RandomState(seed)
    X = rng.randint(0, 100, (n, side, side, 3)).astype(np.uint8)
    y = np.arange(n) % 2
    half = side // 2
    for i in np.flatnonzero(y):
        r, c = rng.randint(0, half - patch - margin + 1, 2)
        X[i, r:r + patch, c:c + patch] = 255
    return X, y


def _top_left_mass(maps):
    """Share of each map's mass in the top-left quadrant (0 for an empty map: it points at
    nothing)."""
    h, w = maps.shape[1] // 2, maps.shape[2] // 2
    total = maps.sum(axis=(1, 2))
    return np.where(total > 0, maps[:, :h, :w].sum(axis=(1, 2)) / np.maximum(total, 1e-12), 0)


def _random_head_masses(model, X, n_heads=8, **kwargs):
    """Mean top-left mass of the class-1 maps of copies whose head is drawn anew (the model
    randomisation test of Adebayo et al. 2018)."""
    out = []
    for seed in range(n_heads):
        copied = copy.deepcopy(model)
        torch.manual_seed(seed)
        copied.module_.head.reset_parameters()
        out.append(_top_left_mass(saliency_maps(copied, X, target=1, **kwargs)).mean())
    return np.array(out)


# ---------------------------------------------------------------------------------------------
# saliency_maps
# ---------------------------------------------------------------------------------------------


def _gradcam_by_hand(model, X):
    """Grad-CAM of the predicted class, written out on test_cnn: the last spatial map of
    block2 (its ReLU, before the pooling), its channels weighted by the spatial mean of the
    gradient of the class's logit, summed, ReLU, upsampled bilinearly to the image size and
    scaled to a maximum of 1."""
    net = copy.deepcopy(model.module_).eval()
    kept = {}
    hook = net.stages.block2[2].register_forward_hook(lambda m, i, o: kept.update(a=o))
    out = net(torch.from_numpy(X))
    hook.remove()
    score = out.gather(1, out.argmax(1, keepdim=True)).sum()
    (grad,) = torch.autograd.grad(score, kept["a"])
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * kept["a"]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=X.shape[1:3], mode="bilinear",
                                          align_corners=False)[:, 0].detach()
    return (cam / cam.amax(dim=(1, 2), keepdim=True)).numpy()


def test_gradcam_maps_are_the_written_out_computation_at_the_image_resolution(clf):
    X, _ = _images()
    maps = saliency_maps(clf, X[:6])
    assert maps.shape == (6, 16, 16) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, _gradcam_by_hand(clf, X[:6]), atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_default_target_is_the_predicted_class(clf, method):
    X, _ = _images()
    np.testing.assert_allclose(
        saliency_maps(clf, X[:6], method=method),
        saliency_maps(clf, X[:6], target=clf.predict(X[:6]), method=method),
        atol=1e-6,
    )


def test_one_label_explains_that_class_for_every_image(clf):
    X, _ = _images()
    per_image = saliency_maps(clf, X[:3], target=["fox", "cat", "fox"])
    np.testing.assert_allclose(per_image[0], saliency_maps(clf, X[:1], target="fox")[0],
                               atol=1e-6)
    np.testing.assert_allclose(per_image[1], saliency_maps(clf, X[1:2], target="cat")[0],
                               atol=1e-6)


def test_a_target_outside_classes_is_refused(clf):
    X, _ = _images()
    with pytest.raises(ValueError, match=r"target holds 'cow', which is not a class .*'cat'"):
        saliency_maps(clf, X[:2], target="cow")
    with pytest.raises(ValueError, match=r"one label per sample \(2\)"):
        saliency_maps(clf, X[:2], target=["cat"] * 3)


def test_maps_are_the_same_for_every_array_form_of_the_images(clf):
    X, _ = _images()
    maps = saliency_maps(clf, X[:4])
    nchw = np.ascontiguousarray(X[:4].transpose(0, 3, 1, 2))
    np.testing.assert_allclose(saliency_maps(clf, nchw), maps, atol=1e-5)
    np.testing.assert_allclose(saliency_maps(clf, X[:4] / np.float32(255)), maps, atol=1e-5)
    np.testing.assert_allclose(saliency_maps(clf, torch.from_numpy(X[:4])), maps, atol=1e-5)


def test_images_of_another_size_get_maps_at_their_own_size():
    X, y = _images()
    model = TransferClassifier("test_cnn", weights=None, input_size=16, max_epochs=1,
                               random_state=0).fit(X, y)
    big = np.repeat(np.repeat(X[:2], 2, axis=1), 2, axis=2)
    assert saliency_maps(model, big).shape == (2, 32, 32)


def test_rows_with_image_shape_get_maps_of_that_shape():
    X, y = _images(side=8)
    model = TransferClassifier("test_cnn", weights=None, image_shape=(8, 8, 3), input_size=16,
                               max_epochs=1, random_state=0).fit(X.reshape(len(X), -1), y)
    maps = saliency_maps(model, X[:3].reshape(3, -1))
    assert maps.shape == (3, 8, 8)


def test_grayscale_images_get_grayscale_sized_maps():
    X, y = _images()
    gray = X.mean(axis=3).astype(np.uint8)
    model = TransferClassifier("test_cnn", weights=None, max_epochs=1,
                               random_state=0).fit(gray, y)
    assert saliency_maps(model, gray[:2], method="occlusion").shape == (2, 16, 16)


def test_image_files_get_maps_at_the_decoded_size(tmp_path):
    X, y = _images(side=40)
    paths = []
    for i, image in enumerate(X):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.fromarray(image).save(paths[-1], quality=95)
    model = TransferClassifier("test_cnn", weights=None, input_size=24, max_epochs=1,
                               random_state=0).fit(paths, y)
    assert saliency_maps(model, paths[:3]).shape == (3, 24, 24)
    pil = [Image.open(p) for p in paths[:2]]
    np.testing.assert_allclose(saliency_maps(model, pil), saliency_maps(model, paths[:2]),
                               atol=1e-6)


def test_a_regressor_explains_the_chosen_output(reg):
    X, _ = _images()
    assert saliency_maps(reg, X[:3], target=1).shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"2 outputs: choose the one to explain with target=0"):
        saliency_maps(reg, X[:3])
    with pytest.raises(ValueError, match=r"index of an output of this regressor, 0 \.\.\. 1"):
        saliency_maps(reg, X[:3], target=2)


def test_a_single_output_regressor_needs_no_target():
    X, _ = _images()
    model = TransferRegressor("test_cnn", weights=None, max_epochs=1,
                              random_state=0).fit(X, X.mean(axis=(1, 2, 3)))
    np.testing.assert_array_equal(saliency_maps(model, X[:2]),
                                  saliency_maps(model, X[:2], target=0))


def test_layer_is_chosen_by_stage_name(clf):
    X, _ = _images()
    maps = saliency_maps(clf, X[:4], layer="block1")
    assert maps.shape == (4, 16, 16)
    assert not np.allclose(maps, saliency_maps(clf, X[:4]))
    with pytest.raises(ValueError, match=r"'head7' is not a stage .*\['stem', 'block1', "):
        saliency_maps(clf, X[:4], layer="head7")


def test_a_feature_map_too_small_to_localise_warns_and_names_a_finer_stage():
    X, y = _images(side=8)
    model = TransferClassifier("test_cnn", weights=None, max_epochs=1,
                               random_state=0).fit(X, y)
    with pytest.warns(UserWarning, match=r"'block2' weighs a 2x2 feature map.*layer='block1'"):
        saliency_maps(model, X[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saliency_maps(model, X[:2], layer="block1")


def test_unknown_methods_and_misplaced_options_are_refused(clf):
    X, _ = _images()
    with pytest.raises(ValueError, match=r"method='lime' is not supported; use one of"):
        saliency_maps(clf, X[:2], method="lime")
    with pytest.raises(ValueError, match="layer applies to method='gradcam' only"):
        saliency_maps(clf, X[:2], method="occlusion", layer="block1")
    with pytest.raises(ValueError, match="window applies to method='occlusion' only"):
        saliency_maps(clf, X[:2], window=0.5)
    with pytest.raises(ValueError, match=r"window must be a fraction .* \(0, 1\], got 2"):
        saliency_maps(clf, X[:2], method="occlusion", window=2)


def test_vector_backbones_and_unfitted_estimators_are_refused():
    X = np.random.RandomState(0).rand(20, 5).astype(np.float32)
    model = TransferClassifier("test_mlp", weights=None, max_epochs=1,
                               random_state=0).fit(X, np.arange(20) % 2)
    with pytest.raises(ValueError, match="need an image backbone.*takes vectors"):
        saliency_maps(model, X)
    with pytest.raises(NotFittedError, match="This TransferClassifier instance is not fitted"):
        saliency_maps(TransferClassifier("test_cnn"), X)
    with pytest.raises(TypeError, match="TransferClassifier or TransferRegressor, got "
                                        "TransferFeatures"):
        saliency_maps(TransferFeatures("test_cnn", weights=None).fit(_images()[0]), X)


def test_maps_and_displays_leave_the_model_unchanged(tmp_path):
    """No leftover hooks, requires_grad flags or train mode; predict_proba
    identical; the global RNG, grad mode and thread count as found."""
    X, y = _images()
    model = TransferClassifier("test_cnn", weights=None, freeze_depth=1, max_epochs=2,
                               random_state=0).fit(X, y)
    proba = model.predict_proba(X)
    net = model.module_
    modes = [m.training for m in net.modules()]
    flags = [p.requires_grad for p in net.parameters()]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    threads = torch.get_num_threads()
    with torch.no_grad():
        saliency_maps(model, X[:4])
        saliency_maps(model, X[:4], method="occlusion")
        SaliencyDisplay.from_estimator(model, X[:4], y[:4])
        TopLossesDisplay.from_estimator(model, X, y, k=3, saliency=True)
        EmbeddingDisplay.from_estimator(model, X, y)
        EmbeddingDisplay.from_estimator(model, X, y, features="pretrained")
        save_explanations(model, X[:2], tmp_path)
        assert not torch.is_grad_enabled()
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == flags
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in net.modules()] == hooks
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert torch.get_num_threads() == threads
    np.testing.assert_array_equal(model.predict_proba(X), proba)


def test_maps_restore_each_module_mode_they_found(clf):
    net = clf.module_
    net.train()  # a mix of modes: frozen stages stay in eval mode
    try:
        modes = [m.training for m in net.modules()]
        assert len(set(modes)) == 2
        saliency_maps(clf, _images()[0][:2])
        assert [m.training for m in net.modules()] == modes
    finally:
        net.eval()


def _seed_and_draw(seed=None):
    if seed is not None:
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
    return torch.rand(1).item(), np.random.rand(), random.random()


def test_global_random_state_is_left_as_found(clf):
    X, y = _images()
    expected = _seed_and_draw(3)
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    saliency_maps(clf, X[:2], method="occlusion")
    EmbeddingDisplay.from_estimator(clf, X, y, features="pretrained", random_state=0)
    assert _seed_and_draw() == expected


def test_maps_work_inside_inference_mode(clf):
    X, _ = _images()
    with torch.inference_mode():
        maps = saliency_maps(clf, X[:2])
    np.testing.assert_array_equal(maps, saliency_maps(clf, X[:2]))


def test_importing_the_module_imports_neither_captum_nor_matplotlib():
    code = ("import sys, sktransfer.inspection; "
            "print(sorted(m for m in ('captum', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_missing_captum_is_reported_with_the_extra_to_install(clf, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    with pytest.raises(ImportError, match=r"need Captum.*pip install 'sktransfer\[inspect\]'"):
        saliency_maps(clf, _images()[0][:2])


# ---------------------------------------------------------------------------------------------
# The maps point at the evidence (and a randomised head's do not)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quadrant_cnn():
    X, y = _quadrant_task(160, 32, 6, 3, seed=0)
    X_test, y_test = _quadrant_task(60, 32, 6, 3, seed=1)
    model = TransferClassifier("test_cnn", weights=None, max_epochs=12, lr=0.05,
                               freeze_depth=1, head_init="random", random_state=0).fit(X, y)
    right = X_test[(y_test == 1) & (model.predict(X_test) == 1)]
    return model, right


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_test_cnn_maps_lie_in_the_quadrant_that_decides_the_class(quadrant_cnn, method):
    model, right = quadrant_cnn
    assert len(right) >= 25  # the model learned the task
    trained = _top_left_mass(saliency_maps(model, right, method=method)).mean()
    randomised = _random_head_masses(model, right, method=method)
    assert trained >= 0.7, f"trained head: {trained:.3f}"
    # an evenly spread map scores 0.25; a random head that happens to weigh the square's
    # features positively points at it too (about one head in three), hence a mean, not a max
    assert randomised.mean() <= 0.5, f"random heads: {np.round(randomised, 3)}"


@pytest.mark.slow
def test_lite0_maps_lie_in_the_quadrant_that_decides_the_class():
    X, y = _quadrant_task(160, 64, 10, 6, seed=0)
    X_test, y_test = _quadrant_task(60, 64, 10, 6, seed=1)
    model = TransferClassifier("efficientnet_lite0", freeze_depth="all", input_size=64,
                               max_epochs=6, random_state=0).fit(X, y)
    right = X_test[(y_test == 1) & (model.predict(X_test) == 1)]
    assert len(right) >= 25
    # at 64 px the last stages are 2x2; "group5", the last 4x4 one, can localise
    trained = _top_left_mass(saliency_maps(model, right, layer="group5")).mean()
    randomised = _random_head_masses(model, right, layer="group5")
    assert trained >= 0.7, f"trained head: {trained:.3f}"
    # an evenly spread map scores 0.25; a random head that happens to weigh the square's
    # features positively points at it too (about one head in three), hence a mean, not a max
    assert randomised.mean() <= 0.5, f"random heads: {np.round(randomised, 3)}"


# ---------------------------------------------------------------------------------------------
# Displays
# ---------------------------------------------------------------------------------------------


def test_saliency_display_titles_true_and_predicted_labels_and_probability(clf):
    X, y = _images()
    disp = SaliencyDisplay.from_estimator(clf, X[:5], y[:5], n_cols=5)
    proba = clf.predict_proba(X[:5])
    pred = clf.classes_[proba.argmax(axis=1)]
    np.testing.assert_allclose(disp.proba, proba.max(axis=1), atol=1e-6)
    assert [ax.get_title() for ax in disp.ax_] == [
        f"true: {t}\npred: {p} ({q:.2f})" for t, p, q in zip(y[:5], pred, disp.proba)
    ]
    assert disp.figure_ is disp.ax_[0].figure and len(disp.figure_.axes) == 5
    np.testing.assert_allclose(disp.maps, saliency_maps(clf, X[:5]), atol=1e-6)
    np.testing.assert_allclose(disp.images, X[:5] / 255.0, atol=1e-6)


def test_saliency_display_draws_on_the_axes_given(clf):
    X, y = _images()
    fig, axes = plt.subplots(2, 2)
    disp = SaliencyDisplay.from_estimator(clf, X[:4], ax=axes)
    assert disp.figure_ is fig and list(disp.ax_) == list(axes.ravel())
    assert all(len(ax.get_images()) == 2 for ax in axes.ravel())  # image and map
    with pytest.raises(ValueError, match="ax holds 4 axes but there are 5 images to draw"):
        SaliencyDisplay.from_estimator(clf, X[:5], ax=axes)


def test_saliency_display_of_a_regressor_shows_the_predicted_value(reg):
    X, _ = _images()
    disp = SaliencyDisplay.from_estimator(reg, X[:2], target=1)
    np.testing.assert_allclose(disp.y_pred, reg.predict(X[:2])[:, 1])
    assert disp.ax_[0].get_title() == f"pred: {disp.y_pred[0]:.3g}"


def test_top_losses_are_the_highest_cross_entropies_highest_first(clf):
    X, y = _images()
    disp = TopLossesDisplay.from_estimator(clf, X, y, k=4)
    expected = -np.log(clf.predict_proba(X)[np.arange(len(y)), np.searchsorted(clf.classes_, y)])
    np.testing.assert_allclose(disp.losses, expected, rtol=1e-6)
    np.testing.assert_array_equal(disp.indices, np.argsort(-expected, kind="stable")[:4])
    i = disp.indices[0]
    assert disp.ax_[0].get_title() == (f"{clf.predict(X[i:i + 1])[0]} / {y[i]}\n"
                                       f"{expected[i]:.2f} / {disp.proba[i]:.2f}")
    assert disp.figure_.get_suptitle() == "prediction / actual / loss / probability"
    assert disp.maps is None and all(len(ax.get_images()) == 1 for ax in disp.ax_)


def test_top_losses_can_overlay_the_maps_of_their_predictions(clf):
    X, y = _images()
    disp = TopLossesDisplay.from_estimator(clf, X, y, k=3, saliency=True)
    shown = X[disp.indices]
    np.testing.assert_allclose(disp.maps, saliency_maps(clf, shown), atol=1e-6)
    assert all(len(ax.get_images()) == 2 for ax in disp.ax_)


def test_most_confused_counts_each_pair_of_true_and_predicted_class(clf):
    X, y = _images()
    disp = TopLossesDisplay.from_estimator(clf, X, y)
    pred = clf.predict(X)
    pairs = {}
    for t, p in zip(y, pred):
        if t != p:
            pairs[(t, p)] = pairs.get((t, p), 0) + 1
    # most often first, ties in the order of the labels (true, then predicted)
    expected = sorted(((t, p, c) for (t, p), c in pairs.items()),
                      key=lambda row: (-row[2], row[0], row[1]))
    assert expected and disp.most_confused() == expected
    top = expected[0][2]
    assert disp.most_confused(min_val=top) == [row for row in expected if row[2] == top]
    assert disp.most_confused(min_val=top + 1) == []


def test_top_losses_checks_its_inputs(clf, reg):
    X, y = _images()
    with pytest.raises(ValueError, match="needs a classifier; this is a regressor"):
        TopLossesDisplay.from_estimator(reg, X, y)
    with pytest.raises(ValueError, match=r"y holds 'cow', which is not a class"):
        TopLossesDisplay.from_estimator(clf, X, np.r_[y[:-1], ["cow"]])
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        TopLossesDisplay.from_estimator(clf, X, y, k=0)


def test_top_losses_from_predictions_reads_columns_in_label_order():
    images = np.zeros((3, 4, 4), dtype=np.uint8)
    proba = np.array([[0.2, 0.8], [0.9, 0.1], [0.5, 0.5]])
    disp = TopLossesDisplay.from_predictions(images, ["b", "b", "a"], proba,
                                             labels=["b", "a"], k=2)
    np.testing.assert_allclose(disp.losses, -np.log([0.2, 0.9, 0.5]))
    assert disp.indices.tolist() == [0, 2]
    assert disp.y_pred.tolist() == ["a", "b", "b"]
    with pytest.raises(ValueError, match=r"y_proba must have shape .* \(3, 3\), got \(3, 2\)"):
        TopLossesDisplay.from_predictions(images, ["a", "b", "c"], proba)


def test_embedding_of_fine_tuned_features_is_the_pca_of_what_the_head_sees(clf):
    X, y = _images()
    disp = EmbeddingDisplay.from_estimator(clf, X, y)
    with torch.no_grad():
        feats = clf.module_.features(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(np.abs(disp.embedding),
                               np.abs(PCA(2).fit_transform(feats)), atol=1e-4)
    assert disp.ax_.get_title().startswith("fine-tuned features (test_cnn) (silhouette ")
    assert [t.get_text() for t in disp.ax_.get_legend().get_texts()] == ["cat", "dog", "fox"]


def test_embedding_of_pretrained_features_is_that_of_the_network_before_fitting():
    X, y = _images()
    # every stage frozen: fitting trains the head alone, the features stay those it started from
    probe = TransferClassifier("test_cnn", weights=None, freeze_depth="all", max_epochs=2,
                               random_state=3).fit(X, y)
    before = EmbeddingDisplay.from_estimator(probe, X, y, features="pretrained")
    after = EmbeddingDisplay.from_estimator(probe, X, y)
    np.testing.assert_array_equal(before.embedding, after.embedding)
    assert before.ax_.get_title().startswith("pretrained features (test_cnn) (silhouette ")


def test_embedding_of_pretrained_features_differs_once_stages_are_trained(clf):
    X, y = _images()
    before = EmbeddingDisplay.from_estimator(clf, X, y, features="pretrained")
    assert not np.allclose(before.embedding, EmbeddingDisplay.from_estimator(clf, X, y).embedding)


def test_embedding_of_pretrained_features_after_a_semi_supervised_fit_is_refused(tmp_path):
    """Its fine-tuning started from stage one, which ``weights`` does not rebuild: refused,
    after save/load and pickling too; the route the message gives maps stage one's features."""
    X = np.random.RandomState(0).rand(40, 8, 8, 3).astype(np.float32)
    y = np.array([0, 1, 2, 3] * 10)
    y[12:] = -1
    params = dict(weights=None, max_epochs=2, random_state=0, device="cpu")
    semi = TransferClassifier("test_cnn", **params, unlabeled="contrastive").fit(X, y)
    message = (r"features='pretrained' needs the network this fit started from: the backbone "
               r"that stage one of unlabeled='contrastive' pretrained \(weights_="
               r".ContrastivePretrainer on 40 rows .*with weights=folder")
    for model in (semi, pickle.loads(pickle.dumps(semi)),
                  sktransfer.load(sktransfer.save(semi, tmp_path / "semi"))):
        with pytest.raises(ValueError, match=message):
            EmbeddingDisplay.from_estimator(model, X[:12], y[:12], features="pretrained")
        assert EmbeddingDisplay.from_estimator(model, X[:12], y[:12]).embedding.shape == (12, 2)
    pre = ContrastivePretrainer("test_cnn", **params).fit(X)
    clf = TransferClassifier("test_cnn", **{**params, "weights": pre.save_weights(tmp_path / "p")})
    disp = EmbeddingDisplay.from_estimator(clf.fit(X[:12], y[:12]), X[:12], y[:12],
                                           features="pretrained")
    np.testing.assert_allclose(np.abs(disp.embedding),
                               np.abs(PCA(2).fit_transform(pre.transform(X[:12]))), atol=1e-4)


def test_embedding_of_continuous_targets_has_a_colour_bar(reg):
    X, _ = _images()
    disp = EmbeddingDisplay.from_estimator(reg, X, X.mean(axis=(1, 2, 3)))
    assert disp.silhouette is None and disp.ax_.get_legend() is None
    assert len(disp.figure_.axes) == 2  # the map and its colour bar


def test_embedding_checks_its_inputs(clf):
    X, y = _images()
    with pytest.raises(ValueError, match="features='raw' is not supported"):
        EmbeddingDisplay.from_estimator(clf, X, y, features="raw")
    with pytest.raises(ValueError, match="method='umap' is not supported; use 'pca' or 'tsne'"):
        EmbeddingDisplay.from_estimator(clf, X, y, method="umap")
    with pytest.raises(ValueError, match="y has 3 entries but X has 24 samples"):
        EmbeddingDisplay.from_estimator(clf, X, y[:3])


# ---------------------------------------------------------------------------------------------
# Overlays on disk, and the command line
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """Twelve 48x48 JPEG crops of scikit-learn's two sample photos, in two sub-folders."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    for name, photo in zip(["china", "flower"], load_sample_images().images):
        (root / name).mkdir()
        for k in range(6):
            crop = photo[60 * k:60 * k + 48, 100:148]
            Image.fromarray(crop).save(root / name / f"{k}.jpg")
    return root


@pytest.fixture(scope="module")
def saved_model(jpeg_folder, tmp_path_factory):
    paths = sorted(str(p) for p in jpeg_folder.rglob("*.jpg"))
    labels = [p.split("/")[-2] for p in paths]
    model = TransferClassifier("test_cnn", weights=None, input_size=32, max_epochs=2,
                               random_state=0).fit(paths, labels)
    path = tmp_path_factory.mktemp("model") / "model.skt"
    save_model(model, path)
    return model, path


def test_explain_writes_an_overlay_per_jpeg_and_the_predictions(saved_model, jpeg_folder,
                                                                 tmp_path, capsys):
    model, path = saved_model
    out = tmp_path / "explained"
    assert main(["explain", str(path), str(jpeg_folder), "--out", str(out)]) == 0
    assert "12 overlays and their predictions written to" in capsys.readouterr().out
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    files = sorted(str(p) for p in jpeg_folder.rglob("*.jpg"))
    assert [r["path"] for r in rows] == files
    proba = model.predict_proba(files)
    assert [r["label"] for r in rows] == list(model.classes_[proba.argmax(axis=1)])
    assert [r["probability"] for r in rows] == [f"{p:.6f}" for p in proba.max(axis=1)]
    # two folders hold 0.jpg ... 5.jpg: the second of each name gets a suffix
    assert [r["overlay"] for r in rows[:7]] == [f"{k}.png" for k in range(6)] + ["0_2.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [r["overlay"] for r in rows] + ["predictions.csv"])
    with Image.open(out / rows[0]["overlay"]) as png:
        assert png.format == "PNG" and png.size == (320, 350)


def test_explain_takes_the_method_and_reports_errors(saved_model, jpeg_folder, tmp_path,
                                                     capsys):
    _, path = saved_model
    one = str(next(jpeg_folder.rglob("*.jpg")))
    assert main(["explain", str(path), one, "--out", str(tmp_path), "--method",
                 "occlusion"]) == 0
    assert main(["explain", str(path), one, "--out", str(tmp_path), "--layer", "nope"]) == 1
    assert "error: layer='nope' is not a stage of this model" in capsys.readouterr().err


def test_overlays_of_a_regressor_list_its_predictions(reg, tmp_path):
    X, _ = _images()
    csv_path = save_explanations(reg, X[:3], tmp_path)
    with open(csv_path) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "prediction_0", "prediction_1", "overlay"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert [float(v) for v in rows[1][1:3]] == pytest.approx(reg.predict(X[:1])[0], rel=1e-5)
    assert rows[1][3] == "image_0000.png"
