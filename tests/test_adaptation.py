"""Unsupervised domain adaptation: unlabeled target rows in ``fit`` (y -1 or NaN,
``sample_domain``), the methods of ``unlabeled=``, the scorers that need no target labels,
and the contract's rows for bad input."""

import numpy as np
import pytest
import sklearn
import torch
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from skorch.callbacks import Callback

from sktransfer import TransferClassifier, TransferRegressor, load, save
from sktransfer._adaptation_training import (
    DomainDiscriminator,
    coral_loss,
    dann_ramp,
    mcc_loss,
)
from sktransfer.adaptation import (
    DeepEmbeddedValidationScorer,
    PredictionEntropyScorer,
    merge_domains,
    target_rows,
)

TINY = dict(weights=None, freeze_depth=1, max_epochs=2, random_state=0, device="cpu",
            batch_size=8)


def _clf(**params):
    return TransferClassifier("test_cnn", **{**TINY, **params})


def _domains(n_source=24, n_target=16, seed=0):
    """Source images of 3 classes and target images of the same classes, darker: X, y with
    the target rows at -1, sample_domain and the target rows' true labels."""
    rng = np.random.RandomState(seed)
    ys = np.array([0, 1, 2] * (n_source // 3))
    yt = np.array([0, 1, 2] * (n_target // 3 + 1))[:n_target]
    Xs = rng.rand(n_source, 16, 16, 3).astype(np.float32) * 0.5
    Xt = rng.rand(n_target, 16, 16, 3).astype(np.float32) * 0.3
    for X, y in ((Xs, ys), (Xt, yt)):
        for k in range(3):
            X[y == k, 5 * k:5 * k + 5] += 0.5
    X, y, sd = merge_domains(Xs, ys, Xt)
    return X, y, sd, yt


class _BatchLog(Callback):
    def initialize(self):
        self.batches = []
        return self

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if training:
            self.batches.append(batch[1].clone())


# ---------------------------------------------------------------------------------------------
# fit with target rows
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["adabn", "coral", "mcc", "dann"])
def test_each_method_fits_and_predicts_target_images(method):
    X, y, _, _ = _domains()
    clf = _clf(unlabeled=method).fit(X, y)
    assert clf.classes_.tolist() == [0, 1, 2]
    assert len(clf.history_) == 2
    assert set(clf.predict(X[y == -1]).tolist()) <= {0, 1, 2}
    # the adaptation loss is recorded for every batch, and is finite
    losses = [b["adapt_loss"] for b in clf.net_.history[-1]["batches"]]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert (np.asarray(losses) == 0).all() == (method == "adabn")


class _Rows:
    """A dataset of rows ``X`` as the adapted net reads its target rows."""

    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitems__(self, rows):
        return self.X[torch.as_tensor(rows)], None


def _trained_bn_stats(clf):
    net = clf.module_
    return [m.running_mean.clone() for stage in list(net.stages)[net.n_frozen:]
            for m in stage.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("method", ["adabn", "coral"])
def test_batchnorm_statistics_of_the_trained_stages_are_the_target_rows(method):
    X, y, _, _ = _domains()
    clf = _clf(unlabeled=method).fit(X, y)
    fitted = _trained_bn_stats(clf)
    assert len(fitted) == 2  # test_cnn: block1 and block2 train, the stem is frozen
    frozen_before = [m.running_mean.clone() for m in clf.module_.stages[0].modules()
                     if isinstance(m, torch.nn.BatchNorm2d)]
    clf.net_.recalibrate_batchnorm()  # again on the target rows: the same statistics
    for a, b in zip(fitted, _trained_bn_stats(clf)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    module = clf.module_
    with torch.no_grad():  # the source rows, as the cache holds them: after the frozen stem
        source = module.prefix(torch.as_tensor(X[y >= 0]), clf.net_.target_start_)
    clf.net_.target = _Rows(source)
    clf.net_.recalibrate_batchnorm()  # on the source rows: other statistics
    assert any(not torch.allclose(a, b, atol=1e-3) for a, b in
               zip(fitted, _trained_bn_stats(clf)))
    frozen_after = [m.running_mean for m in clf.module_.stages[0].modules()
                    if isinstance(m, torch.nn.BatchNorm2d)]
    for a, b in zip(frozen_before, frozen_after):  # the frozen stem keeps its statistics
        assert torch.equal(a, b)


def test_each_domain_is_normalised_by_its_own_batch_statistics():
    X, y, _, _ = _domains()
    clf = _clf(unlabeled="coral").fit(X, y)
    net, module = clf.net_, clf.module_
    module.train()
    module.start = 0
    rows = np.r_[0:6, len(X) - 6:len(X)]
    Xb = torch.as_tensor(X[rows])
    tgt = torch.as_tensor(y[rows] == -1)
    with torch.no_grad():
        joined = net._domain_features(Xb, tgt)
        alone = module.features(Xb[~tgt], 0)
        mixed = module.features(Xb, 0)
    torch.testing.assert_close(joined[~tgt], alone)
    assert not torch.allclose(joined[~tgt], mixed[~tgt], atol=1e-4)


def test_batches_join_each_source_batch_with_as_many_target_rows():
    X, y, _, _ = _domains(n_source=21, n_target=5)
    clf = _clf(unlabeled="coral", callbacks=[("log", _BatchLog())]).fit(X, y)
    batches = dict(clf.net_.callbacks_)["log"].batches
    # 21 source rows in batches of 8: 8, 8, 5, each joined by as many target rows (cycling
    # through the 5 target rows), for 2 epochs
    assert [len(b) for b in batches] == [16, 16, 10] * 2
    assert [int((b == -1).sum()) for b in batches] == [8, 8, 5] * 2
    assert all(bool((b[: len(b) // 2] >= 0).all()) for b in batches)


def test_target_rows_go_through_the_frozen_stages_once_cached():
    X, y, _, _ = _domains()
    clf = _clf(unlabeled="coral").fit(X, y)
    assert clf.cache_key_ is not None
    cached = clf.net_.target.source.X  # the frozen stage's outputs, not the images
    assert cached.shape[0] == int((y == -1).sum())
    assert tuple(cached.shape[1:]) != X.shape[1:]


def test_sample_domain_gives_the_fit_of_the_minus_one_marker():
    X, y, sd, yt = _domains()
    y_true = y.copy()
    y_true[y == -1] = yt  # target labels present but hidden by sample_domain
    a = _clf(unlabeled="dann").fit(X, y)
    b = _clf(unlabeled="dann").fit(X, y_true, sample_domain=sd)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_several_source_domains_are_pooled():
    X, y, sd, _ = _domains()
    sd = sd.copy()
    sd[:12] = 2
    clf = _clf(unlabeled="coral").fit(X, y, sample_domain=sd)
    assert clf.predict(X[:3]).shape == (3,)


def test_auto_freeze_depth_fine_tunes_when_adapting():
    X, y, _, _ = _domains()  # 8 labels per class: "auto" alone would be the linear probe
    clf = TransferClassifier("test_cnn", weights=None, unlabeled="coral", max_epochs=1,
                             random_state=0).fit(X, y)
    assert clf.freeze_depth_ != "all" and clf.n_iter_ == 1
    plain = TransferClassifier("test_cnn", weights=None, random_state=0).fit(X[y >= 0],
                                                                              y[y >= 0])
    assert plain.freeze_depth_ == "all"


@pytest.mark.parametrize("method", ["adabn", "coral"])
def test_regressor_adapts_to_nan_rows(method):
    X, y, _, _ = _domains()
    target = np.where(y >= 0, y, np.nan).astype(float)
    reg = TransferRegressor("test_cnn", unlabeled=method, **TINY).fit(X, target)
    assert reg.predict(X[:4]).shape == (4,)
    assert np.isfinite([b["adapt_loss"] for b in reg.net_.history[-1]["batches"]]).all()


def test_early_stopping_and_flip_cache_validate_on_source_rows_only():
    X, y, _, _ = _domains(n_source=30)
    clf = _clf(unlabeled="mcc", early_stopping=True, validation_fraction=0.2).fit(X, y)
    assert "valid_acc" in clf.history_[-1]
    clf = _clf(unlabeled="coral", augment="flip").fit(X, y)
    assert clf.net_.target is not None and len(clf.history_) == 2


def test_adapted_model_saves_and_loads(tmp_path):
    X, y, _, _ = _domains()
    clf = _clf(unlabeled="coral", unlabeled_weight=0.5).fit(X, y)
    save(clf, tmp_path / "m")
    back = load(tmp_path / "m")
    np.testing.assert_allclose(back.predict_proba(X), clf.predict_proba(X), atol=1e-6)
    assert back.get_params()["unlabeled_weight"] == 0.5


def test_contrastive_pretraining_takes_sample_domain_rows_as_unlabeled():
    X, y, sd, yt = _domains()
    y_true = y.copy()
    y_true[y == -1] = yt
    clf = _clf(unlabeled="contrastive", max_epochs=1).fit(X, y_true, sample_domain=sd)
    assert f"({int((sd < 0).sum())} unlabeled)" in clf.weights_


# ---------------------------------------------------------------------------------------------
# The contract: bad input, each a ValueError that says what to do
# ---------------------------------------------------------------------------------------------


def test_empty_target_set_is_refused():
    X, y, _, _ = _domains()
    with pytest.raises(ValueError, match="the target set is empty.*y = -1"):
        _clf(unlabeled="coral").fit(X[y >= 0], y[y >= 0])


def test_all_rows_unlabeled_is_refused():
    X, _, _, _ = _domains()
    with pytest.raises(ValueError, match="Every row is unlabeled.*Add labeled source"):
        _clf(unlabeled="dann").fit(X, np.full(len(X), -1))


def test_target_images_of_another_shape_or_channels_are_refused():
    X, y, _, _ = _domains()
    rows = [x for x in X[y >= 0]]
    for other in (np.zeros((8, 8, 3), np.float32), np.zeros((16, 16, 1), np.float32)):
        X_list = rows + [other] * 4
        y_list = np.concatenate([y[y >= 0], [-1] * 4])
        with pytest.raises(ValueError, match="target images have shape .*Resize"):
            _clf(unlabeled="coral").fit(X_list, y_list)
    with pytest.raises(ValueError, match="target images have shape"):
        merge_domains(X[:3], [0, 1, 2], np.zeros((2, 8, 8, 3)))


def test_sample_domain_of_the_wrong_length_is_refused():
    X, y, sd, _ = _domains()
    with pytest.raises(ValueError, match=r"one domain per row of X \(40\).*\(39,\)"):
        _clf(unlabeled="coral").fit(X, y, sample_domain=sd[:-1])
    with pytest.raises(ValueError, match="non-zero integers"):
        _clf(unlabeled="coral").fit(X, y, sample_domain=np.zeros(len(X), int))


def test_nan_labels_given_to_the_classifier_are_refused():
    X, y, _, _ = _domains()
    y_nan = np.where(y >= 0, y, np.nan)
    for unlabeled in (None, "coral"):
        with pytest.raises(ValueError, match="classifier marks unlabeled rows with -1"):
            _clf(unlabeled=unlabeled).fit(X, y_nan)


def test_nan_targets_without_unlabeled_say_what_to_pass():
    X, y, _, _ = _domains()
    with pytest.raises(ValueError, match="NaN marks unlabeled rows.*unlabeled='coral'"):
        TransferRegressor("test_cnn", **TINY).fit(X, np.where(y >= 0, y, np.nan))


def test_target_rows_without_a_method_are_refused():
    X, y, sd, _ = _domains()
    with pytest.raises(ValueError, match="unlabeled='coral', 'mcc' or 'dann'"):
        _clf().fit(X, y)
    with pytest.raises(ValueError, match="sample_domain marks 16 row"):
        _clf().fit(X, np.where(y >= 0, y, 0), sample_domain=sd)


def test_freeze_all_and_mcc_for_the_regressor_are_refused():
    X, y, _, _ = _domains()
    with pytest.raises(ValueError, match="freeze_depth='all' freezes all of them"):
        _clf(unlabeled="coral", freeze_depth="all").fit(X, y)
    with pytest.raises(ValueError, match="'unlabeled' parameter"):
        TransferRegressor("test_cnn", unlabeled="mcc", **TINY).fit(X, y.astype(float))


# ---------------------------------------------------------------------------------------------
# Losses and the discriminator
# ---------------------------------------------------------------------------------------------


def test_coral_loss_is_the_covariance_distance():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 4, generator=g), torch.randn(30, 4, generator=g) * 2
    expected = ((np.cov(a.numpy().T) - np.cov(b.numpy().T)) ** 2).sum() / (4 * 16)
    assert float(coral_loss(a, b)) == pytest.approx(expected, rel=1e-5)


def test_mcc_loss_is_zero_without_confusion_and_positive_with_it():
    assert float(mcc_loss(torch.eye(4) * 50)) == pytest.approx(0.0, abs=1e-6)
    assert float(mcc_loss(torch.zeros(4, 4))) == pytest.approx(0.75)


def test_dann_ramp_and_gradient_reversal():
    assert dann_ramp(0.0) == 0.0 and dann_ramp(0.5) == pytest.approx(0.98661, abs=1e-5)
    disc = DomainDiscriminator(3, hidden=4)
    x = torch.ones(2, 3, requires_grad=True)
    disc(x, coeff=0.5).sum().backward()
    reversed_grad = x.grad.clone()
    x.grad = None
    disc.layers(x).sum().backward()
    torch.testing.assert_close(reversed_grad, -0.5 * x.grad)


def test_domain_discriminator_learns_to_tell_two_domains_apart():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(200, 8, generator=g)
    target = torch.randn(200, 8, generator=g) + 1.0
    x = torch.cat([source, target])
    d = torch.cat([torch.zeros(200), torch.ones(200)])
    torch.manual_seed(0)
    disc = DomainDiscriminator(8, hidden=32)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(disc(x), d).backward()
        opt.step()
    disc.eval()
    accuracy = float(((disc(x) > 0).float() == d).float().mean())
    assert accuracy > 0.9


# ---------------------------------------------------------------------------------------------
# Scorers and model selection without target labels
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    X, y, sd, yt = _domains()
    return _clf(unlabeled="coral").fit(X, y), X, y, sd, yt


@pytest.mark.parametrize("scorer", [PredictionEntropyScorer(), DeepEmbeddedValidationScorer()])
def test_scorers_ignore_the_target_rows_labels(fitted, scorer):
    clf, X, y, sd, yt = fitted
    y_shown = y.copy()
    y_shown[y == -1] = yt
    y_wrong = y.copy()
    y_wrong[y == -1] = (yt + 1) % 3
    masked = scorer(clf, X, y)
    assert scorer(clf, X, y_shown, sample_domain=sd) == masked
    assert scorer(clf, X, y_wrong, sample_domain=sd) == masked


def test_prediction_entropy_is_minus_the_mean_entropy_of_target_rows(fitted):
    clf, X, y, _, _ = fitted
    p = clf.predict_proba(X[y == -1])
    expected = float(np.mean(np.sum(p * np.log(p), axis=1)))
    assert PredictionEntropyScorer()(clf, X, y) == pytest.approx(expected)


def test_scorers_refuse_a_fold_without_target_rows(fitted):
    clf, X, y, _, _ = fitted
    with pytest.raises(ValueError, match="this validation fold has none"):
        PredictionEntropyScorer()(clf, X[y >= 0], y[y >= 0])


def test_target_rows_helper():
    assert target_rows([0, -1, 2]).tolist() == [False, True, False]
    assert target_rows([0.5, np.nan], classifier=False).tolist() == [False, True]


def test_grid_search_chooses_the_strength_without_target_labels_or_global_config():
    X, y, sd, _ = _domains()
    routing = sklearn.get_config()["enable_metadata_routing"]
    search = GridSearchCV(
        _clf(unlabeled="coral", max_epochs=1), {"unlabeled_weight": [0.1, 1.0]},
        scoring={"entropy": PredictionEntropyScorer(), "dev": DeepEmbeddedValidationScorer()},
        refit="dev", cv=StratifiedKFold(2),
    ).fit(X, y, sample_domain=sd)
    assert search.best_params_["unlabeled_weight"] in (0.1, 1.0)
    assert np.isfinite(search.cv_results_["mean_test_entropy"]).all()
    assert sklearn.get_config()["enable_metadata_routing"] == routing
    scores = cross_val_score(make_pipeline(_clf(unlabeled="mcc", max_epochs=1)), X, y, cv=2,
                             scoring=PredictionEntropyScorer())
    assert scores.shape == (2,) and (scores <= 0).all()


def test_metadata_routing_carries_sample_domain_to_fit():
    X, y, sd, yt = _domains()
    y_true = y.copy()
    y_true[y == -1] = yt
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(_clf(unlabeled="coral", max_epochs=1),
                              {"unlabeled_weight": [1.0]},
                              cv=StratifiedKFold(2, shuffle=True, random_state=0),
                              scoring=PredictionEntropyScorer())
        search.fit(X, y_true, sample_domain=sd)
    # the target rows' labels were hidden by sample_domain in fit and in the scorer
    assert np.isfinite(search.best_score_) and search.best_score_ <= 0


# ---------------------------------------------------------------------------------------------
# skada, when installed
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def skada():
    """skada, with scikit-learn's metadata routing (which importing skada switches on)
    switched off again afterwards."""
    before = sklearn.get_config()["enable_metadata_routing"]
    module = pytest.importorskip("skada")
    yield module
    sklearn.set_config(enable_metadata_routing=before)


def test_skada_scorer_and_splitter_accept_the_estimators(skada):
    from skada.metrics import PredictionEntropyScorer as SkadaEntropy
    from skada.model_selection import SourceTargetShuffleSplit

    X, y, sd, _ = _domains()
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(
            _clf(unlabeled="coral", max_epochs=1), {"unlabeled_weight": [0.5, 1.0]},
            cv=SourceTargetShuffleSplit(n_splits=2, random_state=0),
            scoring={"skada": SkadaEntropy(), "ours": PredictionEntropyScorer()},
            refit="skada",
        ).fit(X, y, sample_domain=sd)
    # skada's scorer is the negated sum of the entropy; ours the negated mean over rows
    assert np.isfinite(search.cv_results_["mean_test_skada"]).all()
    assert np.isfinite(search.cv_results_["mean_test_ours"]).all()
