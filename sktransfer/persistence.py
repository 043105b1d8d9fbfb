"""Rebuilding fitted networks from plain arrays; safe save/load (no pickle)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["rebuild_module"]


def _device_for(est):
    device = getattr(est, "device_", "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        import warnings

        warnings.warn(
            f"This model was fitted on {device!r} but CUDA is not available here; it is loaded "
            "on the CPU instead (device_ is now 'cpu').",
            UserWarning,
            stacklevel=4,
        )
        return "cpu"
    return device


def rebuild_module(est, module_state):
    """Build the fitted architecture of ``est`` (no weights downloaded) and load the arrays.

    ``module_state`` maps state-dict keys to numpy arrays. The load is strict.
    """
    from ._base import preserved_global_state

    spec = est.input_spec_
    sample_shape = tuple(spec["sample_shape"])
    sample = torch.zeros((2, *sample_shape), dtype=_torch_dtype(spec["dtype"]))
    with preserved_global_state():
        net, _, _, _ = est._build_network(
            spec, est._n_outputs_fitted(), sample, weights=None, n_frozen=est.n_frozen_stages_
        )
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in module_state.items()}
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or wrong:
        raise ValueError(
            "Stored weights do not match the architecture rebuilt from the hyperparameters: "
            f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shapes {wrong[:5]}. The file "
            "is corrupt or was written by an incompatible version."
        )
    net.load_state_dict(state, strict=True)
    device = _device_for(est)
    est.device_ = device
    net.to(device)
    net.eval()
    return net


def _torch_dtype(name):
    return torch.from_numpy(np.zeros(1, dtype=np.dtype(name))).dtype
