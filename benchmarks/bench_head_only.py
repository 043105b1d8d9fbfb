"""Benchmark 1: head-only fine-tuning (``freeze_depth="all"``) against the plain PyTorch loop.

Both sides train the new head of ImageNet EfficientNet-Lite0 with SGD (lr 0.001, momentum 0.9,
batch 32, shuffled) for the same number of epochs on the same Fashion-MNIST images at 64 px.
The plain loop freezes the backbone (``requires_grad=False``, eval mode) as a careful user
would, and so still runs the whole backbone forward every epoch; sktransfer runs it once per
image (frozen-prefix cache). Timings include building the model and loading the weights on
both sides, start from an empty cache, and are medians of interleaved repetitions.
"""

from __future__ import annotations

import numpy as np
import torch
from _common import (
    PLAIN_RECIPE,
    Timer,
    load_data,
    loadavg,
    median,
    parse_args,
    plain_model,
    plain_predict,
    plain_train,
    report,
    verdict,
    warm_up,
)

from sktransfer import TransferClassifier
from sktransfer.caching import clear_cache

TARGET_RATIO = 0.25
TARGET_ACCURACY_GAP = 0.02


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    n_train, n_test, epochs, size, reps = (1000, 1000, 10, 64, 3)
    if args.quick:
        n_train, n_test, epochs, size, reps = (20, 20, 1, 32, 1)
    load_before = loadavg()
    X, y, X_test, y_test, data_name = load_data(n_train, n_test)
    if not args.quick:  # a smoke run measures nothing
        warm_up(size)

    plain_times, skt_times = [], []
    for rep in range(reps):
        torch.manual_seed(rep)
        with Timer() as t:
            model = plain_model()
            plain_train(model, X, y, epochs=epochs, size=size, head_only=True, seed=rep)
        plain_times.append(t.seconds)
        if rep == 0:
            plain_acc = float(np.mean(plain_predict(model, X_test, size=size) == y_test))

        clear_cache()
        with Timer() as t:
            clf = TransferClassifier(
                "efficientnet_lite0", freeze_depth="all", lr=0.001, momentum=0.9,
                max_epochs=epochs, batch_size=32, input_size=size, random_state=rep,
                **PLAIN_RECIPE,
            ).fit(X, y)
        skt_times.append(t.seconds)
        if rep == 0:
            skt_acc = float(clf.score(X_test, y_test))

    plain_s, skt_s = median(plain_times), median(skt_times)
    ratio = skt_s / plain_s
    gap = abs(skt_acc - plain_acc)
    rows = [
        ["plain PyTorch loop", f"{plain_s:.2f}", "1.00", f"{plain_acc:.3f}"],
        ["sktransfer", f"{skt_s:.2f}", f"{ratio:.3f}", f"{skt_acc:.3f}"],
    ]
    report(
        "1. Head-only fine-tuning (freeze_depth=\"all\")",
        f"{data_name}: {len(X)} training images, {epochs} epochs, {size} px, batch 32, SGD "
        f"lr 0.001 momentum 0.9; test accuracy on {len(X_test)} held-out test images; "
        f"fit time = median of {reps} interleaved repetitions (model building included, "
        "empty cache).",
        ["", "fit time (s)", "time ratio", "test accuracy"],
        rows,
        notes=[
            f"time ratio sktransfer / plain = {ratio:.3f} (target <= {TARGET_RATIO}): "
            f"{verdict(ratio <= TARGET_RATIO)}",
            f"accuracy difference = {gap:.3f} (target <= {TARGET_ACCURACY_GAP}): "
            f"{verdict(gap <= TARGET_ACCURACY_GAP)}",
        ],
        load_before=load_before,
    )
    return {"ratio": ratio, "accuracy_gap": gap}


if __name__ == "__main__":
    main()
