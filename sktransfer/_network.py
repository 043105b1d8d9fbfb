"""The network an estimator trains: preprocessing, backbone stages, new head. Pure PyTorch."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ._freezing import apply_freezing, set_frozen_eval


class TransferNet(nn.Module):
    """``head(stages(preprocess(x)))`` with the first ``n_frozen`` stages frozen.

    ``start`` lets the same network train on cached activations: with ``start=k`` the input is
    taken to be the output of stage ``k - 1`` and only stages ``k..`` and the head run.
    """

    def __init__(self, preprocess, stages, head, *, n_frozen=0, train_bn=False, bn_momentum=0.1):
        super().__init__()
        self.preprocess = preprocess
        self.stages = nn.Sequential(OrderedDict(stages))
        self.head = head
        self.n_frozen = int(n_frozen)
        self.train_bn = bool(train_bn)
        self.start = 0
        apply_freezing(list(self.stages), self.n_frozen, bn_momentum=bn_momentum)

    def refreeze(self, n_frozen, *, train_bn=False, bn_momentum=0.1):
        """Change the frozen depth (used by ``warm_start`` fits with a new ``freeze_depth``)."""
        self.n_frozen = int(n_frozen)
        self.train_bn = bool(train_bn)
        apply_freezing(list(self.stages), self.n_frozen, bn_momentum=bn_momentum)

    def train(self, mode=True):
        super().train(mode)
        if mode:
            set_frozen_eval(list(self.stages), self.n_frozen, train_bn=self.train_bn)
        return self

    def prefix(self, x, k):
        """Output of preprocessing and the first ``k`` stages."""
        x = self.preprocess(x)
        for stage in list(self.stages)[:k]:
            x = stage(x)
        return x

    def features(self, x, start=0):
        """Backbone features (before the head), from stage ``start`` on."""
        if start == 0:
            x = self.preprocess(x)
        for stage in list(self.stages)[start:]:
            x = stage(x)
        return x

    def forward(self, x, start=None):
        return self.head(self.features(x, self.start if start is None else start))


def frozen_prefix_is_exact(net, k):
    """Whether the first ``k`` stages give the same output in training as in evaluation."""
    return k > 0 and not net.train_bn


@torch.no_grad()
def dry_run(module, x):
    """One eval-mode forward (materialises lazy layers); returns the output batch."""
    was = module.training
    module.eval()
    try:
        return module(x)
    finally:
        module.train(was)
