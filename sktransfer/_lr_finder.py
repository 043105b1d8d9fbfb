"""``lr="auto"``: a learning-rate range test (Smith 2017, fastai's ``lr_find``). Layer 2.

A copy of the network trains for up to ``num_it`` batches while the learning rate grows
exponentially from ``start_lr`` to ``end_lr``; the smoothed loss is recorded until it exceeds
``stop_div`` times its minimum. The suggestion is the rate where the smoothed loss falls
fastest per decade of learning rate, before its minimum (:func:`steepest`). fastai's "valley"
rule (:func:`valley`) is kept for comparison: on the data sets of ``benchmarks/bench_recipe.py``
it suggests rates about ten times lower, too low for a short fine-tuning run (the benchmark
prints both). The network the fit then trains is untouched: the test runs on a deep copy, with
the optimizer's parameter groups of a fit (per-stage rates included) and its rates set by a
``LambdaLR`` policy, as a fit's schedule sets them. It draws from random generators of its
own, so the fit after it draws what a fit with ``lr=lr_`` draws.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import numpy as np
import torch
from skorch.callbacks import Callback

from ._runtime import preserved_global_state
from ._training import _StopEarly, make_skorch_net

__all__ = ["lr_range_test", "steepest", "valley"]

START_LR, END_LR, NUM_IT, STOP_DIV, SMOOTH = 1e-7, 10.0, 100, 4.0, 0.98


def valley(lrs, losses):
    """fastai's suggestion: in the longest run over which the loss keeps decreasing, the
    learning rate two thirds of the way down (where the loss falls fastest and is still far
    from diverging).

    Examples
    --------
    >>> from sktransfer._lr_finder import valley
    >>> lrs = [10 ** (-4 + i / 4) for i in range(20)]  # 1e-4 .. 0.56
    >>> losses = [2.3 - 0.1 * i if i < 12 else 1.1 + (i - 12) ** 2 for i in range(20)]
    >>> round(valley(lrs, losses), 4)  # falling until 0.01, then diverging
    0.0018
    """
    n = len(losses)
    if n == 0:
        raise ValueError("The range test recorded no loss.")
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return float(lrs[max_start + int(sections) + int(sections / 2)])


def steepest(lrs, losses):
    """The rate where the loss falls fastest per decade of learning rate, before the minimum.

    Examples
    --------
    >>> from sktransfer._lr_finder import steepest
    >>> lrs = [10 ** (-4 + i / 4) for i in range(20)]  # 1e-4 .. 0.56
    >>> losses = [2.3 - 0.002 * i * i if i < 12 else 2.0 + (i - 12) for i in range(20)]
    >>> round(steepest(lrs, losses), 4)  # steepest one step before the minimum at 0.1
    0.0562
    """
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if len(losses) == 0:
        raise ValueError("The range test recorded no loss.")
    stop = int(np.argmin(losses))
    if stop < 2:
        return float(lrs[stop] / 10)
    slope = np.gradient(losses[:stop + 1], np.log10(lrs[:stop + 1]))
    return float(lrs[int(np.argmin(slope[:stop]))])  # never the minimum itself


class _RangeTest(Callback):
    """Exponentially growing learning rate; records the smoothed loss; stops at divergence."""

    def __init__(self, num_it, start_lr, end_lr):
        self.num_it, self.start_lr, self.end_lr = num_it, start_lr, end_lr

    def on_train_begin(self, net, **kwargs):
        self.lrs_, self.losses_ = [], []
        self._avg, self._best, self._step = 0.0, math.inf, 0
        # every group starts at start_lr x its lr_scale (the fit's groups at lr=start_lr)
        ratio = self.end_lr / self.start_lr
        self.policy_ = torch.optim.lr_scheduler.LambdaLR(
            net.optimizer_, lambda step: ratio ** (step / (self.num_it - 1)))

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if not training:
            return
        self._lr = self.policy_.get_last_lr()[-1]  # the head's rate, this batch's
        self._step += 1
        self.policy_.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            if not self.losses_:
                raise FloatingPointError(
                    f"The training loss was {value} at the first batch of the learning-rate "
                    f"range test (lr={self._lr:.2g}); check X and y for extreme values."
                )
            raise _StopEarly
        self._avg = SMOOTH * self._avg + (1 - SMOOTH) * value
        smoothed = self._avg / (1 - SMOOTH ** self._step)
        self.lrs_.append(self._lr)
        self.losses_.append(smoothed)
        self._best = min(self._best, smoothed)
        if smoothed > STOP_DIV * self._best or self._step >= self.num_it:
            raise _StopEarly


def lr_range_test(module, criterion, dataset, config, *, drop_last=False, num_it=NUM_IT,
                  start_lr=START_LR, end_lr=END_LR):
    """Run the range test on a copy of ``module``; the training set is ``dataset``.

    Returns
    -------
    result : dict
        ``lr`` (the suggestion), ``lrs`` and ``losses`` (the smoothed curve), ``steps``,
        ``seconds``.
    """
    t0 = time.perf_counter()
    batches = len(dataset) // config.batch_size if drop_last else math.ceil(
        len(dataset) / config.batch_size)
    epochs = max(1, math.ceil(num_it / max(1, batches)))
    cfg = dataclasses.replace(config, lr=start_lr, max_epochs=epochs, lr_schedule="constant",
                              verbose=0, callbacks=[])
    finder = _RangeTest(num_it, start_lr, end_lr)
    net = make_skorch_net(copy.deepcopy(module), criterion, cfg,
                          callbacks=[("range_test", finder)], drop_last=drop_last)
    with preserved_global_state(config.device):
        net.fit(dataset, None)
    if getattr(net, "interrupted_", False):
        raise KeyboardInterrupt(
            "Training interrupted by user during the learning-rate range test (lr='auto'); "
            "the estimator is unchanged."
        )
    lrs, losses = finder.lrs_, finder.losses_
    skip = len(lrs) // 10 if len(lrs) >= 20 else 0
    end = len(lrs) - 5 if len(lrs) - skip > 10 else len(lrs)
    suggestion = steepest(lrs[skip:end], losses[skip:end])
    return {"lr": suggestion, "lrs": [float(x) for x in lrs],
            "losses": [float(x) for x in np.asarray(losses)], "steps": len(lrs),
            "seconds": time.perf_counter() - t0}
