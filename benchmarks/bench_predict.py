"""Benchmark 4: ``predict`` throughput against a plain ``inference_mode`` loop on the same model.

A head-only classifier is fitted once; then the fitted network (``clf.module_``, which holds
the preprocessing) labels the same new test images through ``clf.predict`` and through a plain
loop (``torch.inference_mode()``, eval mode, batches of 64 as ``predict`` uses, argmax). The
default ``predict`` passes new images through the frozen stages once and stores them in the
activation cache (emptied before each repetition, so nothing is reused); ``cache=False``
is measured too. The test images are split into chunks of 500 and the arms take turns on each
chunk, in rotating order, so that a change in the machine's speed during the run hits every arm
alike; an arm's time for a repetition is the sum over the chunks, and its figure the median
over repetitions.
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
    report,
    verdict,
    warm_up,
)

from sktransfer import TransferClassifier
from sktransfer.caching import clear_cache

TARGET_RATIO = 0.95
BATCH = 64


@torch.inference_mode()
def plain_loop(module, X):
    module.eval()
    out = []
    for i in range(0, len(X), BATCH):
        out.append(module(torch.from_numpy(X[i:i + BATCH])).argmax(1))
    return torch.cat(out).numpy()


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    n_train, n_test, size, reps, chunk = 200, 2000, 64, 8, 500
    if args.quick:
        n_train, n_test, size, reps, chunk = 20, 40, 32, 1, 20
    load_before = loadavg()
    X, y, X_test, _, data_name = load_data(n_train, n_test)
    if not args.quick:  # a smoke run measures nothing
        warm_up(size)
    clf = TransferClassifier(
        "efficientnet_lite0", freeze_depth="all", max_epochs=1, input_size=size, random_state=0,
        **PLAIN_RECIPE,
    ).fit(X, y)

    def plain(Xc):
        return clf.classes_[plain_loop(clf.module_, Xc)]

    def cached(Xc):
        clear_cache()  # new images every time: computed, stored, then used
        return clf.predict(Xc)

    def uncached(Xc):
        clf.set_params(cache=False)  # read at predict time
        try:
            return clf.predict(Xc)
        finally:
            clf.set_params(cache=True)

    arms = [plain, cached, uncached]
    times = {arm: [] for arm in arms}
    labels = {arm: [] for arm in arms}
    chunks = [X_test[i:i + chunk] for i in range(0, len(X_test), chunk)]
    turn = 0
    for rep in range(reps):
        total = dict.fromkeys(arms, 0.0)
        for Xc in chunks:
            # rotate the order, so that no arm always runs first or after the same one
            for arm in arms[turn % 3:] + arms[:turn % 3]:
                with Timer() as t:
                    out = arm(Xc)
                total[arm] += t.seconds
                if rep == 0:
                    labels[arm].append(out)
            turn += 1
        for arm in arms:
            times[arm].append(total[arm])
    plain_t, cached_t, uncached_t = (times[arm] for arm in arms)
    labels_plain, labels, labels_uncached = (np.concatenate(labels[arm]) for arm in arms)
    agree = float(np.mean(labels == labels_plain))
    agree_uncached = float(np.mean(labels_uncached == labels_plain))

    n = len(X_test)
    plain_ips = n / median(plain_t)
    rows = [["plain inference_mode loop", f"{plain_ips:.0f}", "1.00", "1.000"]]
    ratios = []
    for name, times, same in (
        ("sktransfer predict (default, cache=True)", cached_t, agree),
        ("sktransfer predict (cache=False)", uncached_t, agree_uncached),
    ):
        ips = n / median(times)
        ratios.append(ips / plain_ips)
        rows.append([name, f"{ips:.0f}", f"{ips / plain_ips:.3f}", f"{same:.3f}"])
    worst = min(ratios)
    report(
        "4. predict throughput",
        f"{data_name}: {n} new test images, {size} px, batch {BATCH}, the fitted head-only "
        f"model; median of {reps} repetitions, the arms taking turns on chunks of {chunk} "
        "images in rotating order.",
        ["", "images / s", "throughput ratio", "same labels as plain"],
        rows,
        notes=[
            f"lowest throughput ratio sktransfer / plain = {worst:.3f} (target >= "
            f"{TARGET_RATIO}): {verdict(worst >= TARGET_RATIO)}",
        ],
        load_before=load_before,
    )
    return {"ratio": worst}


if __name__ == "__main__":
    main()
