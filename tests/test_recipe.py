"""The training recipe: schedules, per-stage learning rates, the linear-probe head start, label
smoothing, L2-SP, lr="auto" and test-time augmentation, on tiny backbones."""

import copy
import math
import re
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler
from skorch.callbacks import Callback

import sktransfer
from sktransfer import TransferClassifier, TransferRegressor
from sktransfer._compat import InvalidParameterError
from sktransfer._lr_finder import END_LR, NUM_IT, START_LR, STOP_DIV, steepest
from sktransfer._recipe import PROBE_ABSENT_PROBA, PROBE_ALPHA, PROBE_C


def _clf(**kw):
    # a depth and a head that train whatever the data size ("auto" may pick the probe)
    params = dict(weights=None, max_epochs=2, batch_size=8, random_state=0, freeze_depth=1,
                  head_init="random")
    params.update(kw)
    return TransferClassifier("test_cnn", **params)


class _Record(Callback):
    """Records, before each training batch, every parameter group's lr and momentum."""

    def on_train_begin(self, net, **kwargs):
        self.lrs, self.moms, self.groups = [], [], None
        self.head = net.module_.head.weight.detach().clone()

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if training:
            groups = net.optimizer_.param_groups
            self.lrs.append([g["lr"] for g in groups])
            self.moms.append(groups[-1]["momentum"])
            self.groups = [(len(g["params"]), g.get("weight_decay")) for g in groups]


class _FirstBatch(Callback):
    """Keeps a copy of the network as training starts, and the first training batch and its
    loss."""

    def on_train_begin(self, net, **kwargs):
        self.start, self.batch, self.loss = copy.deepcopy(net.module_), None, None

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if training and self.loss is None:
            self.batch, self.loss = batch, float(loss.detach())


def _smoothed_cross_entropy(logits, y, eps):
    """Label-smoothed cross-entropy by its formula: the mean over samples of
    -(1 - eps) log p(y) - eps / C sum_c log p(c)."""
    logp = torch.log_softmax(logits.double(), dim=1).numpy()
    y = np.asarray(y)
    return float(np.mean(-(1 - eps) * logp[np.arange(len(y)), y]
                         - eps / logp.shape[1] * logp.sum(axis=1)))


# -- schedules ----------------------------------------------------------------------------------


def test_constant_schedule_keeps_lr(tiny_images):
    X, y = tiny_images
    rec = _Record()
    _clf(lr=0.05, lr_schedule="constant", callbacks=[("rec", rec)]).fit(X, y)
    assert {lr for row in rec.lrs for lr in row} == {0.05}


def test_cosine_schedule_warms_up_then_decays_to_zero(tiny_images):
    X, y = tiny_images  # 40 images, batch 8: 5 steps per epoch
    rec = _Record()
    clf = _clf(lr=0.05, lr_schedule="cosine", max_epochs=8, callbacks=[("rec", rec)]).fit(X, y)
    lrs = [row[-1] for row in rec.lrs]
    assert len(lrs) == 8 * 5 == clf.n_iter_ * 5
    assert lrs[0] == pytest.approx(0.05 / 4)  # warm-up over 10 % of 40 steps
    assert max(lrs) == pytest.approx(0.05) and lrs.index(max(lrs)) == 3
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] < 0.001


def test_onecycle_cycles_lr_up_and_momentum_down_then_back(tiny_images):
    X, y = tiny_images
    rec = _Record()
    _clf(lr=0.05, momentum=0.95, lr_schedule="onecycle", max_epochs=5,
         callbacks=[("rec", rec)]).fit(X, y)
    lrs = [row[-1] for row in rec.lrs]
    top = int(np.argmax(lrs))
    assert lrs[0] == pytest.approx(0.05 / 25) and lrs[top] == pytest.approx(0.05, rel=0.02)
    assert lrs[-1] == pytest.approx(0.05 / 1e5, rel=0.01)
    assert rec.moms[0] == pytest.approx(0.95) and rec.moms[-1] == pytest.approx(0.95)
    assert min(rec.moms) == pytest.approx(0.85, abs=0.005)
    assert int(np.argmin(rec.moms)) == top


def test_schedule_spans_max_epochs_with_early_stopping_and_warm_start(tiny_images):
    X, y = tiny_images
    rec = _Record()
    clf = _clf(lr=0.05, lr_schedule="cosine", max_epochs=4, early_stopping=True,
               validation_fraction=0.2, callbacks=[("rec", rec)]).fit(X, y)
    per_epoch = math.ceil(32 / 8)  # 8 of the 40 images held out
    assert len(rec.lrs) == clf.n_iter_ * per_epoch
    clf.set_params(warm_start=True, early_stopping=False, max_epochs=5).fit(X, y)
    assert len(rec.lrs) == 25  # a new fit starts the schedule anew, over its own epochs
    assert rec.lrs[0][-1] == pytest.approx(0.05 / 2)  # warm-up: round(10 % of 25 steps) = 2


# -- per-stage learning rates and L2-SP ---------------------------------------------------------


def test_layer_decay_gives_each_trainable_stage_its_rate(tiny_images):
    X, y = tiny_images
    rec = _Record()
    _clf(lr=0.1, freeze_depth=1, layer_decay=0.5, max_epochs=1,
         callbacks=[("rec", rec)]).fit(X, y)
    # stem frozen (not optimised); block1 x 0.25, block2 x 0.5, head x 1
    assert rec.lrs[0] == pytest.approx([0.025, 0.05, 0.1])
    assert [n for n, _ in rec.groups] == [4, 4, 2]


def test_layer_decay_works_with_the_cache(tiny_images):
    X, y = tiny_images
    cached = _clf(freeze_depth=1, layer_decay=0.5).fit(X, y)
    plain = _clf(freeze_depth=1, layer_decay=0.5, cache=False).fit(X, y)
    assert cached.cache_key_ is not None
    np.testing.assert_allclose(cached.predict_proba(X), plain.predict_proba(X), atol=1e-5)


def test_l2_sp_pulls_trained_stages_towards_their_start(tiny_images):
    X, y = tiny_images
    start = _clf(max_epochs=1, lr=1e-12).fit(X, y).module_.stages.block2[0].weight.detach()

    def moved(**kw):
        clf = _clf(lr=0.2, max_epochs=4, **kw).fit(X, y)
        return float((clf.module_.stages.block2[0].weight.detach() - start).norm())

    assert moved(l2_sp=2.0) < 0.5 * moved()


def test_l2_sp_applies_weight_decay_to_the_head_only(tiny_images):
    X, y = tiny_images
    rec = _Record()
    _clf(l2_sp=0.1, weight_decay=0.01, freeze_depth=1, max_epochs=1,
         callbacks=[("rec", rec)]).fit(X, y)
    assert [wd for _, wd in rec.groups] == [0.0, 0.0, 0.01]


# -- linear-probe head start --------------------------------------------------------------------


def test_linear_probe_start_with_a_frozen_backbone_is_the_logistic_regression(tiny_images):
    X, y = tiny_images
    clf = _clf(freeze_depth="all", head_init="linear_probe").fit(X, y)
    assert clf.n_iter_ == 0 and clf.history_ == []
    # the classifier's random backbone is drawn from random_state: take its own features
    with torch.no_grad():
        F = clf.module_.features(torch.as_tensor(X)).numpy()
    lr = LogisticRegression(C=PROBE_C, max_iter=500).fit(F, y)
    np.testing.assert_allclose(clf.predict_proba(X), lr.predict_proba(F), atol=1e-4)


def test_linear_probe_start_is_where_fine_tuning_begins(tiny_images):
    X, y = tiny_images
    rec = _Record()
    clf = _clf(freeze_depth=1, head_init="linear_probe", callbacks=[("rec", rec)]).fit(X, y)
    random = _Record()
    _clf(freeze_depth=1, head_init="random", callbacks=[("rec", random)]).fit(X, y)
    assert not torch.equal(rec.head, random.head)
    probe = _clf(freeze_depth="all", head_init="linear_probe").fit(X, y)
    torch.testing.assert_close(rec.head, probe.module_.head.weight.detach(), atol=1e-5, rtol=0)
    assert clf.n_iter_ == 2


def test_linear_probe_start_for_the_regressor_is_ridge(tiny_vectors):
    X, _ = tiny_vectors
    y = X[:, 0] * 3 + 10
    reg = TransferRegressor("test_mlp", weights=None, freeze_depth="all",
                            head_init="linear_probe", random_state=0).fit(X, y)
    assert reg.n_iter_ == 0
    # ridge on the regressor's own (random) features, targets scaled as the regressor scales them
    with torch.no_grad():
        F = reg.module_.features(torch.as_tensor(X)).double().numpy()
    scaler = make_pipeline(MaxAbsScaler(), StandardScaler()).fit(y[:, None])
    ridge = Ridge(alpha=PROBE_ALPHA * len(X)).fit(F, scaler.transform(y[:, None]))
    expected = scaler.inverse_transform(ridge.predict(F).reshape(-1, 1))[:, 0]
    np.testing.assert_allclose(reg.predict(X), expected, rtol=1e-5, atol=1e-4)


def test_linear_probe_start_keeps_a_class_absent_from_training_unlikely_not_impossible(
        tiny_vectors):
    """A class whose one sample is held out for early stopping: the probe gives it at most
    PROBE_ABSENT_PROBA on the training rows, and the smoothed loss starts at a normal size."""
    X, y = tiny_vectors
    y = y.copy()
    y[7] = 2  # held out by the (unstratified) split of random_state=9
    first = _FirstBatch()
    with pytest.warns(UserWarning, match="validation split is not stratified"):
        TransferClassifier("test_mlp", weights=None, head_init="linear_probe", freeze_depth=0,
                           label_smoothing=0.1, early_stopping=True, validation_fraction=0.1,
                           batch_size=64, max_epochs=1, cache=False, random_state=9,
                           callbacks=[("first", first)]).fit(X, y)
    xb, yb = first.batch
    assert len(yb) == 54 and sorted(set(yb.tolist())) == [0, 1]
    with torch.no_grad():
        logits = first.start(xb)
    assert first.loss == pytest.approx(_smoothed_cross_entropy(logits, yb, 0.1), rel=1e-5)
    # the two present classes' share, plus 0.1 / 3 of -log(PROBE_ABSENT_PROBA) at most (a
    # -1e4 logit would add 0.1 / 3 * 1e4)
    assert first.loss < math.log(2) + 0.1 / 3 * -math.log(PROBE_ABSENT_PROBA)
    absent = torch.softmax(logits.double(), dim=1)[:, 2]
    assert float(absent.max()) == pytest.approx(PROBE_ABSENT_PROBA, rel=0.01)


# -- label smoothing ----------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_label_smoothing_gives_the_smoothed_cross_entropy(tiny_vectors, eps):
    X, y = tiny_vectors
    first = _FirstBatch()  # one batch of every row: its loss is that of the starting network
    smooth = TransferClassifier("test_mlp", weights=None, max_epochs=1, batch_size=len(X),
                                cache=False, label_smoothing=eps, random_state=0,
                                freeze_depth=0, callbacks=[("first", first)]).fit(X, y)
    assert smooth.net_.criterion_.label_smoothing == eps
    xb, yb = first.batch
    assert len(yb) == len(X)
    with torch.no_grad():
        logits = first.start(xb)
    assert first.loss == pytest.approx(_smoothed_cross_entropy(logits, yb, eps), rel=1e-5)


def test_label_smoothing_is_validated(tiny_images):
    X, y = tiny_images
    with pytest.raises(InvalidParameterError, match="label_smoothing"):
        _clf(label_smoothing=1.0).fit(X, y)


# -- lr="auto" ----------------------------------------------------------------------------------


def test_lr_auto_chooses_a_rate_and_leaves_no_trace(tiny_images):
    X, y = tiny_images
    auto = _clf(lr="auto").fit(X, y)
    lrs, losses = auto.lr_range_test_["lr"], auto.lr_range_test_["loss"]
    n = len(lrs)
    assert len(losses) == n >= 20
    # rates growing geometrically from START_LR, to END_LR at step NUM_IT
    steps = np.arange(n) / (NUM_IT - 1)
    np.testing.assert_allclose(lrs, START_LR * (END_LR / START_LR) ** steps, rtol=1e-9)
    # run to NUM_IT steps, or stopped at the first smoothed loss above STOP_DIV x its minimum
    assert all(loss <= STOP_DIV * min(losses[:i + 1]) for i, loss in enumerate(losses[:-1]))
    assert n == NUM_IT or losses[-1] > STOP_DIV * min(losses)
    # the suggestion: the steepest descent, the first tenth and the last 5 steps left out
    skip = n // 10
    end = n - 5 if n - skip > 10 else n
    assert auto.lr_ == steepest(lrs[skip:end], losses[skip:end])
    # deterministic, and training then starts from the same network as with that rate given
    again = _clf(lr="auto").fit(X, y)
    assert again.lr_ == auto.lr_
    manual = _clf(lr=auto.lr_).fit(X, y)
    assert manual.lr_ == auto.lr_ and manual.lr_range_test_ is None
    np.testing.assert_array_equal(auto.predict_proba(X), manual.predict_proba(X))


def test_lr_auto_is_reported_when_verbose(tiny_images, capsys):
    X, y = tiny_images
    clf = _clf(lr="auto", verbose=1, max_epochs=1).fit(X, y)
    out = capsys.readouterr().out
    steps = len(clf.lr_range_test_["lr"])
    assert re.search(rf"lr='auto': range test of {steps} steps in [\d.]+ s suggests "
                     rf"lr={re.escape(f'{clf.lr_:.3g}')}\n", out)


def test_ctrl_c_in_the_range_test_leaves_the_estimator_unchanged(tiny_images, monkeypatch):
    import sktransfer._lr_finder as finder

    X, y = tiny_images
    clf = _clf(max_epochs=1).fit(X, y)
    before = clf.predict_proba(X)
    real = finder._RangeTest.on_batch_end

    def interrupt(self, net, training=None, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finder._RangeTest, "on_batch_end", interrupt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt, match="range test.*unchanged"):
            clf.set_params(lr="auto").fit(X, y)
    monkeypatch.setattr(finder._RangeTest, "on_batch_end", real)
    np.testing.assert_array_equal(clf.predict_proba(X), before)


def test_non_finite_loss_at_the_start_of_the_range_test_is_an_error(tiny_images):
    X, y = tiny_images
    with pytest.raises(FloatingPointError, match="range test"):
        _clf(lr="auto", head_init="random").fit(X * np.float32(3e38), y)


# -- test-time augmentation ---------------------------------------------------------------------


def test_tta_averages_the_image_and_its_mirror(tiny_images):
    X, y = tiny_images  # (N, H, W, C)
    clf = _clf().fit(X, y)
    p, p_flip = clf.predict_proba(X), clf.predict_proba(X[:, :, ::-1].copy())
    clf.set_params(tta=True)
    np.testing.assert_allclose(clf.predict_proba(X), (p + p_flip) / 2, atol=1e-6)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), (p + p_flip) / 2, atol=1e-6)
    assert np.array_equal(clf.predict(X), clf.classes_[np.argmax(p + p_flip, axis=1)])


def test_tta_needs_images(tiny_vectors):
    X, y = tiny_vectors
    clf = TransferClassifier("test_mlp", weights=None, max_epochs=1, tta=True).fit(X, y)
    with pytest.raises(ValueError, match="tta=True flips images"):
        clf.predict(X)


def test_recipe_attributes_survive_the_safe_format(tiny_images, tmp_path):
    X, y = tiny_images
    clf = _clf(lr="auto", lr_schedule="onecycle", layer_decay=0.7, head_init="linear_probe",
               label_smoothing=0.1, l2_sp=0.01, tta=True).fit(X, y)
    loaded = sktransfer.load(sktransfer.save(clf, tmp_path / "m"))
    assert loaded.lr_ == clf.lr_ and loaded.lr_range_test_ == clf.lr_range_test_
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


# -- flips on cached activations ----------------------------------------------------------------


@pytest.mark.parametrize("early_stopping", [False, True])
def test_flip_augmentation_on_the_cache_trains_as_flipping_the_images(tiny_images,
                                                                      early_stopping):
    X, y = tiny_images
    params = dict(freeze_depth=1, augment="flip", max_epochs=3, early_stopping=early_stopping)
    cached = _clf(**params).fit(X, y)
    plain = _clf(cache=False, **params).fit(X, y)
    assert cached.cache_key_ is not None and plain.cache_key_ is None
    np.testing.assert_allclose(cached.predict_proba(X), plain.predict_proba(X), atol=1e-6)
    unflipped = _clf(freeze_depth=1, max_epochs=3, early_stopping=early_stopping).fit(X, y)
    assert not np.allclose(cached.predict_proba(X), unflipped.predict_proba(X))


def test_flip_augmentation_needs_images(tiny_vectors):
    X, y = tiny_vectors
    with pytest.raises(ValueError, match="transforms images"):
        TransferClassifier("test_mlp", weights=None, augment="flip").fit(X, y)


def test_l2_sp_step_is_the_gradient_of_its_penalty(tiny_images):
    """The in-place L2-SP term equals autograd's gradient of loss + l2_sp/2 ||w - w0||^2."""
    from sktransfer._training import TrainingConfig, make_skorch_net

    X, y = tiny_images
    clf = _clf(max_epochs=1, freeze_depth=1, lr_schedule="constant").fit(X, y)
    net = clf.module_
    moved = {n: p.detach().clone() for n, p in net.stages.named_parameters()}
    config = TrainingConfig(lr=0.1, max_epochs=1, batch_size=8, seed=0, device="cpu",
                            l2_sp=0.5)
    skorch_net = make_skorch_net(net, torch.nn.CrossEntropyLoss, config).initialize()
    anchors = [(p, p.detach() - 0.1) for p in net.stages.parameters() if p.requires_grad]
    skorch_net._anchors = anchors
    batch = (torch.as_tensor(X[:8]), torch.as_tensor(y[:8]))
    skorch_net.optimizer_.zero_grad()
    # what the optimizer step gets: the batch's gradients, then L2-SP's once
    skorch_net._with_l2_sp(lambda: skorch_net.train_step_single(batch))()
    ours = [p.grad.clone() for p, _ in anchors]
    net.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(batch[0]), batch[1])
    penalty = sum((p - a).pow(2).sum() for p, a in anchors) / 2
    (loss + 0.5 * penalty).backward()
    for got, (p, _) in zip(ours, anchors):
        torch.testing.assert_close(got, p.grad, atol=1e-6, rtol=1e-5)
    assert all(torch.equal(p, moved[n]) for n, p in net.stages.named_parameters())


def test_linear_probe_start_without_the_cache_stores_nothing(tiny_images):
    from sktransfer import caching

    X, y = tiny_images
    caching.clear_cache()
    cached = _clf(freeze_depth="all", head_init="linear_probe").fit(X, y)
    assert caching.cache_info()["nbytes"] == len(X) * 16 * 4  # the 16 pooled float32 features
    caching.clear_cache()
    plain = _clf(freeze_depth="all", head_init="linear_probe", cache=False).fit(X, y)
    assert caching.cache_info()["nbytes"] == 0
    np.testing.assert_allclose(plain.predict_proba(X), cached.predict_proba(X), atol=1e-5)
