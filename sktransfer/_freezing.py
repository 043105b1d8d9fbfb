"""``freeze_depth`` -> frozen stages, and the BatchNorm policy. Pure PyTorch.

A frozen stage has ``requires_grad=False`` on every parameter and stays in eval mode during
training (BatchNorm running statistics untouched, dropout off), unless ``train_bn=True`` lets its
BatchNorm layers update their running statistics. Trainable BatchNorm layers get momentum 0.1
(PyTorch's default) because checkpoints converted from TensorFlow carry 0.01, which leaves
eval-mode statistics unsettled after a short fine-tuning run.
"""

from __future__ import annotations

import numbers

from torch import nn

__all__ = ["n_frozen_stages", "apply_freezing", "set_frozen_eval"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def n_frozen_stages(freeze_depth, stage_names):
    """Number of leading stages that ``freeze_depth`` freezes.

    Parameters
    ----------
    freeze_depth : int, "auto" or "all"
        ``k >= 0`` freezes the first ``k`` stages (0: fine-tune everything); ``-k`` leaves only
        the last ``k`` stages trainable; ``"all"`` freezes the whole backbone; ``"auto"`` the
        first third of the stages (rounded down), where the most general features are.
    stage_names : list of str
        The backbone's stages, input first.

    Returns
    -------
    k : int
        How many stages, from the input, are frozen.

    Examples
    --------
    >>> n_frozen_stages(-1, ["stem", "layer1", "layer2"])
    2
    >>> n_frozen_stages("all", ["stem", "layer1", "layer2"])
    3
    >>> n_frozen_stages("auto", ["stem"] + [f"group{i}" for i in range(1, 9)])
    3
    """
    n = len(stage_names)
    valid = (
        f"Valid values: 'all', 'auto' (the first third), 0..{n} (number of leading stages "
        f"frozen) or -1..-{n} (number of trailing stages trained); the stages are "
        f"{list(stage_names)}."
    )
    if isinstance(freeze_depth, str):
        if freeze_depth == "all":
            return n
        if freeze_depth == "auto":
            return n // 3
        raise ValueError(f"freeze_depth={freeze_depth!r} is not understood. {valid}")
    if isinstance(freeze_depth, bool) or not isinstance(freeze_depth, numbers.Integral):
        raise ValueError(
            f"freeze_depth must be an integer, 'auto' or 'all', got {freeze_depth!r}. {valid}"
        )
    k = int(freeze_depth)
    if k >= 0:
        if k > n:
            raise ValueError(f"freeze_depth={k} exceeds the {n} stages of the backbone. {valid}")
        return k
    if -k > n:
        raise ValueError(f"freeze_depth={k} asks for more than the {n} stages. {valid}")
    return n + k


def apply_freezing(stages, k, *, bn_momentum=0.1, train_bn=False):
    """Freeze the first ``k`` of ``stages`` (a sequence of modules); unfreeze the rest.

    BatchNorm layers whose statistics update (those of trainable stages; with ``train_bn``
    those of frozen stages too) get ``bn_momentum`` (``None`` keeps theirs).
    """
    for i, stage in enumerate(stages):
        frozen = i < k
        for p in stage.parameters():
            p.requires_grad_(not frozen)
        if (train_bn or not frozen) and bn_momentum is not None:
            for m in stage.modules():
                if isinstance(m, _BN):
                    m.momentum = bn_momentum


def set_frozen_eval(stages, k, *, train_bn=False):
    """Put the first ``k`` stages in eval mode (their BatchNorm layers back in train mode if
    ``train_bn``); called after every ``module.train()``."""
    for stage in list(stages)[:k]:
        stage.eval()
        if train_bn:
            for m in stage.modules():
                if isinstance(m, _BN):
                    m.train()
