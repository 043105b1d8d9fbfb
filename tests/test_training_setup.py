"""One optimizer set-up for every way of training: parameter groups from the parameter objects,
schedules as torch policies counted in the batches each process runs, L2-SP once per optimizer
step, the loss of weighted and smoothed classes, global RNG left alone, Ctrl-C and callbacks."""

from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn

import sktransfer.backbones as B
from sktransfer import TransferClassifier
from sktransfer._network import TransferNet
from sktransfer._schedules import StepSchedule, lr_factor, stage_param_groups, steps_per_epoch
from sktransfer.classifier import WeightedCrossEntropy

pytest.importorskip("accelerate")


class _Groups(Callback):
    """Records the optimizer's groups (name, lr, weight decay) before every training batch."""

    def on_train_begin(self, net, **kwargs):
        self.rows = []

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if training:
            self.rows.append([(g.get("name"), g["lr"], g["weight_decay"])
                              for g in net.optimizer_.param_groups])


@pytest.fixture
def eager_compile(monkeypatch):
    """``torch.compile`` with the eager backend (the same renaming wrapper, no C++ build)."""
    real, compiled = torch.compile, []

    def compile_eager(model, **kwargs):
        compiled.append(model)
        return real(model, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", compile_eager)
    yield compiled
    torch._dynamo.reset()


def _mlp(**kw):
    params = dict(weights=None, max_epochs=2, batch_size=8, random_state=0, device="cpu",
                  freeze_depth=0, lr=0.1, layer_decay=0.5, l2_sp=0.1, weight_decay=0.01,
                  lr_schedule="cosine")
    params.update(kw)
    return TransferClassifier("test_mlp", **params)


WAYS = {
    "eager": {},
    "compile": {"compile": True},
    "accelerate": {"accelerator": {"gradient_accumulation_steps": 2}},
}


@pytest.mark.parametrize("way", list(WAYS))
def test_layer_decay_and_l2_sp_weight_decay_hold_under_compile_and_accelerate(
        way, tiny_vectors, eager_compile):
    X, y = tiny_vectors
    rec = _Groups()
    _mlp(callbacks=[("rec", rec)], **WAYS[way]).fit(X, y)
    if way == "compile":
        assert eager_compile, "the network was not compiled"
    first = rec.rows[0]
    # the head at lr, layer2 at lr/2, layer1 at lr/4, each x the cosine's first-step factor;
    # L2-SP: weight decay on the head only
    total = 2 * 8 if way != "accelerate" else 2 * 8  # 60 rows, batch 8: 8 batches an epoch
    f0 = lr_factor("cosine", 0, total)
    assert [name for name, _, _ in first] == ["stages.layer1", "stages.layer2", "head"]
    assert [lr for _, lr, _ in first] == pytest.approx([0.025 * f0, 0.05 * f0, 0.1 * f0])
    assert [wd for _, _, wd in first] == [0.0, 0.0, 0.01]


@pytest.mark.parametrize("way", list(WAYS))
def test_the_schedule_runs_its_whole_course_under_compile_and_accelerate(
        way, tiny_vectors, eager_compile):
    X, y = tiny_vectors
    rec = _Groups()
    _mlp(callbacks=[("rec", rec)], max_epochs=3, **WAYS[way]).fit(X, y)
    head = [row[-1][1] for row in rec.rows]
    assert len(head) == 3 * 8
    expected = [0.1 * lr_factor("cosine", s, 24) for s in range(24)]
    assert head == pytest.approx(expected)


def test_the_range_test_trains_the_fits_parameter_groups(tiny_vectors, monkeypatch):
    from sktransfer import _lr_finder

    X, y = tiny_vectors
    seen = []
    original = _lr_finder._RangeTest.on_batch_end

    def record(self, net, batch=None, training=None, loss=None, **kwargs):
        if training and not seen:
            seen.append([(g["name"], g["lr"]) for g in net.optimizer_.param_groups])
        return original(self, net, batch=batch, training=training, loss=loss, **kwargs)

    monkeypatch.setattr(_lr_finder._RangeTest, "on_batch_end", record)
    _mlp(lr="auto", max_epochs=1).fit(X, y)
    start = _lr_finder.START_LR
    assert [n for n, _ in seen[0]] == ["stages.layer1", "stages.layer2", "head"]
    assert [lr for _, lr in seen[0]] == pytest.approx([start / 4, start / 2, start])


def test_the_schedule_counts_the_batches_each_accelerate_process_runs():
    """accelerate gives each of N processes every N-th batch: the schedule spans those."""
    assert steps_per_epoch(100, 8) == 13
    assert steps_per_epoch(100, 8, processes=2) == 7
    assert steps_per_epoch(100, 8, drop_last=True, processes=4) == 3
    layer = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    net = SimpleNamespace(accelerator=SimpleNamespace(num_processes=2), batch_size=8,
                          max_epochs=3, optimizer_=optimizer, history=[])
    schedule = StepSchedule("cosine", 0.9).initialize()
    schedule.on_train_begin(net, X=range(100))
    assert schedule.total_steps_ == 3 * 7


def test_a_resumed_schedule_starts_where_its_epoch_begins():
    layer = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    net = SimpleNamespace(batch_size=10, max_epochs=2, optimizer_=optimizer, history=[])
    schedule = StepSchedule("cosine", 0.9, schedule_epochs=5, start_epoch=3).initialize()
    schedule.on_train_begin(net, X=range(40))  # 4 batches an epoch, 20 in the schedule
    assert schedule.total_steps_ == 20
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor("cosine", 12, 20))


def _mlp_no_bn(**kw):
    return _mlp(lr_schedule="constant", layer_decay=1.0, weight_decay=0.0, l2_sp=5.0,
                max_epochs=2, **kw)


def test_l2_sp_is_applied_once_per_optimizer_step_with_gradient_accumulation(tiny_vectors):
    """Two accumulated batches of 4 are one step on the batch of 8 they make up."""
    X, y = tiny_vectors
    X, y = X[:48], y[:48]  # whole batches of 8
    whole = _mlp_no_bn(accelerator="auto", batch_size=8).fit(X, y)
    accumulated = _mlp_no_bn(accelerator={"gradient_accumulation_steps": 2},
                             batch_size=4).fit(X, y)
    for a, b in zip(whole.module_.parameters(), accumulated.module_.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# -- the loss -------------------------------------------------------------------------------------


def test_class_weights_scale_each_samples_smoothed_loss():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weight, eps = [1.0, 2.0, 0.5], 0.1
    got = WeightedCrossEntropy(weight, label_smoothing=eps)(logits, target)
    logp = torch.log_softmax(logits, dim=1)
    smoothed = -(1 - eps) * logp[torch.arange(6), target] - eps / 3 * logp.sum(1)
    expected = (torch.tensor(weight)[target] * smoothed).mean()
    torch.testing.assert_close(got, expected)


# -- global RNG and random_state ------------------------------------------------------------------


def test_fit_never_reseeds_every_cuda_device(tiny_images, monkeypatch):
    def refuse(seed):
        raise AssertionError("torch.cuda.manual_seed_all was called")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
    X, y = tiny_images
    TransferClassifier("test_cnn", weights=None, max_epochs=1, random_state=0).fit(X, y)


def _dropout_mlp():
    return nn.Sequential(OrderedDict(
        layer1=nn.Sequential(nn.LazyLinear(32), nn.ReLU(), nn.Dropout(0.5)),
        layer2=nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.5)),
        fc=nn.Linear(32, 10),
    ))


@pytest.fixture
def dropout_mlp():
    B.register_backbone("_dropout_mlp", _dropout_mlp, input_kind="vector", overwrite=True)
    yield "_dropout_mlp"
    B._REGISTRY.pop("_dropout_mlp", None)


def test_lr_auto_trains_like_a_fit_with_the_rate_it_found(tiny_vectors, dropout_mlp):
    """The range test draws from generators of its own: dropout then draws what it draws in
    a fit with ``lr=lr_``."""
    X, y = tiny_vectors
    params = dict(weights=None, max_epochs=2, batch_size=8, random_state=0, freeze_depth=0)
    auto = TransferClassifier(dropout_mlp, lr="auto", **params).fit(X, y)
    fixed = TransferClassifier(dropout_mlp, lr=auto.lr_, **params).fit(X, y)
    np.testing.assert_array_equal(auto.predict_proba(X), fixed.predict_proba(X))


def test_a_callable_augmentation_drawing_from_numpy_and_random_is_seeded(tiny_images):
    import random

    def jitter(image):
        noise = np.random.rand(*image.shape) * 0.1 + random.random() * 0.1
        return image + torch.as_tensor(noise, dtype=image.dtype)

    X, y = tiny_images
    params = dict(weights=None, max_epochs=2, batch_size=8, random_state=0, augment=jitter)
    first = TransferClassifier("test_cnn", **params).fit(X, y)
    np.random.seed(1)  # the user's generators elsewhere: the fit draws the same
    random.seed(1)
    state = np.random.get_state()[1].copy(), random.getstate()
    second = TransferClassifier("test_cnn", **params).fit(X, y)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    # the user's global generators are left where they were
    assert np.array_equal(np.random.get_state()[1], state[0]) and random.getstate() == state[1]


# -- smaller defects ------------------------------------------------------------------------------


def test_batchnorm_all_gives_frozen_stages_the_same_momentum_as_trained_ones():
    def stage():
        bn = nn.BatchNorm1d(4, momentum=0.01)  # a checkpoint's TF-style momentum
        return nn.Sequential(nn.Linear(4, 4), bn)

    net = TransferNet(nn.Identity(), [("a", stage()), ("b", stage())], nn.Linear(4, 2),
                      n_frozen=1, train_bn=True, bn_momentum=0.1)
    assert [m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm1d)] == [0.1, 0.1]
    net.refreeze(1, train_bn=False, bn_momentum=0.1)  # the checkpoint's stays frozen
    net2 = TransferNet(nn.Identity(), [("a", stage()), ("b", stage())], nn.Linear(4, 2),
                       n_frozen=1, train_bn=False, bn_momentum=0.1)
    assert [m.momentum for m in net2.modules() if isinstance(m, nn.BatchNorm1d)] == [0.01, 0.1]


class _InterruptAndWatch(Callback):
    """Ctrl-C at the second batch of epoch 2; records whether training was told it ended."""

    def initialize(self):
        self.ended = 0
        return self

    def on_batch_end(self, net, training=None, **kwargs):
        if training and len(net.history) == 2 and len(net.history[-1]["batches"]) >= 2:
            raise KeyboardInterrupt

    def on_train_end(self, net, **kwargs):
        self.ended += 1


def test_ctrl_c_still_ends_training_for_the_users_callbacks(tiny_images):
    X, y = tiny_images
    watch = _InterruptAndWatch()
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        clf = TransferClassifier("test_cnn", weights=None, max_epochs=4, batch_size=8,
                                 random_state=0, freeze_depth=1, head_init="random",
                                 callbacks=[("watch", watch)]).fit(X, y)
    assert clf.interrupted_ and clf.n_iter_ == 1
    # callbacks are copied into the fit: read the fitted net's own
    assert dict(clf.net_.callbacks_)["watch"].ended == 1


class _Snapshots(Callback):
    def on_epoch_end(self, net, **kwargs):
        self.snap = net._last_epoch_state


def test_the_epoch_snapshot_holds_only_what_training_changes_off_the_device(tiny_images):
    X, y = tiny_images
    rec = _Snapshots()
    clf = TransferClassifier("test_cnn", weights=None, max_epochs=1, batch_size=8,
                             random_state=0, freeze_depth=2, cache=False,
                             callbacks=[("rec", rec)]).fit(X, y)
    snap = dict(clf.net_.callbacks_)["rec"].snap
    trained = [p for p in clf.module_.parameters() if p.requires_grad]
    state = clf.module_.state_dict()
    assert all(saved.device.type == "cpu" for _, saved in snap)
    assert sum(t.numel() for t, _ in snap) < sum(t.numel() for t in state.values())
    snapped = {t.data_ptr() for t, _ in snap}
    assert all(p.data_ptr() in snapped for p in trained)


def test_every_trainable_parameter_must_be_in_one_group():
    net = nn.Module()
    net.stages = nn.Sequential(nn.Linear(2, 2))
    net.head = nn.Linear(2, 1)
    net.extra = nn.Linear(2, 2)  # trainable, outside the stages and the head
    with pytest.raises(RuntimeError, match=r"exactly once.*\['extra.bias', 'extra.weight'\]"):
        stage_param_groups(net, 0.1)
