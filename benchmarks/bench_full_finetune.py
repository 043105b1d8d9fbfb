"""Benchmark 3: full fine-tuning (``freeze_depth=0``), time per epoch against the plain loop.

Nothing is frozen, so there is nothing to cache: this measures what the estimator's machinery
(skorch's loop, the batch source, preprocessing inside the network, the divergence guard and
the per-epoch snapshot) adds to the plain PyTorch loop doing the same training. An epoch is
timed from its start to the end of its last callback on the sktransfer side, and around the
loop over the DataLoader on the plain side; the figure is the median over epochs and
interleaved repetitions.
"""

from __future__ import annotations

import time

import torch
from _common import (
    PLAIN_RECIPE,
    Timer,
    load_data,
    loadavg,
    median,
    parse_args,
    plain_model,
    plain_train,
    report,
    verdict,
    warm_up,
)
from skorch.callbacks import Callback

from sktransfer import TransferClassifier

TARGET_RATIO = 1.10


class EpochClock(Callback):
    """Wall time of each epoch, callbacks included (it runs after the estimator's own)."""

    def initialize(self):
        self.times = []
        return self

    def on_epoch_begin(self, net, **kwargs):
        self._start = time.perf_counter()

    def on_epoch_end(self, net, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    n_train, epochs, size, reps = 1000, 3, 64, 3
    if args.quick:
        n_train, epochs, size, reps = 20, 1, 32, 1
    load_before = loadavg()
    X, y, _, _, data_name = load_data(n_train, 10)
    if not args.quick:  # a smoke run measures nothing
        warm_up(size)

    plain_epochs, skt_epochs, plain_fits, skt_fits = [], [], [], []

    def plain(rep):
        torch.manual_seed(rep)
        with Timer() as t:
            times = plain_train(plain_model(), X, y, epochs=epochs, size=size, seed=rep)
        plain_epochs.extend(times)
        plain_fits.append(t.seconds)

    def ours(rep):
        clock = EpochClock()
        with Timer() as t:
            TransferClassifier(
                "efficientnet_lite0", freeze_depth=0, lr=0.001, momentum=0.9,
                max_epochs=epochs, batch_size=32, input_size=size, random_state=rep,
                callbacks=[("clock", clock)], **PLAIN_RECIPE,
            ).fit(X, y)
        skt_fits.append(t.seconds)
        skt_epochs.extend(clock.times)

    for rep in range(reps):
        for side in ((plain, ours) if rep % 2 == 0 else (ours, plain)):  # alternate the order
            side(rep)

    plain_s, skt_s = median(plain_epochs), median(skt_epochs)
    ratio = skt_s / plain_s
    rows = [
        ["plain PyTorch loop", f"{plain_s:.2f}", "1.00", f"{median(plain_fits):.2f}"],
        ["sktransfer", f"{skt_s:.2f}", f"{ratio:.3f}", f"{median(skt_fits):.2f}"],
    ]
    report(
        "3. Full fine-tuning (freeze_depth=0), time per epoch",
        f"{data_name}: {len(X)} training images, {size} px, batch 32, SGD lr 0.001 momentum "
        f"0.9; median of {epochs} epochs x {reps} repetitions, the two sides in alternating "
        "order.",
        ["", "time per epoch (s)", "ratio", f"whole fit, {epochs} epochs (s)"],
        rows,
        notes=[
            f"time per epoch ratio sktransfer / plain = {ratio:.3f} (target <= "
            f"{TARGET_RATIO}): {verdict(ratio <= TARGET_RATIO)}",
        ],
        load_before=load_before,
    )
    return {"ratio": ratio}


if __name__ == "__main__":
    main()
