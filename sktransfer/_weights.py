"""Weights files: read a state dict safely, load it into a module, fetch pretrained files.

Pure PyTorch (and safetensors); nothing here knows about backbones or scikit-learn. Every
``torch.load`` uses ``weights_only=True`` with no fallback: a pickle that carries code is
refused, never executed.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

__all__ = [
    "download_state",
    "hub_checkpoint",
    "is_path_like",
    "load_state_into",
    "load_weights_file",
]

_WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

# Keys under which training scripts commonly nest the model's state dict.
_NESTED_STATE_KEYS = ("state_dict", "model", "model_state_dict")


def is_path_like(weights):
    """Whether ``weights`` names a file rather than a weights name such as ``"DEFAULT"``."""
    if isinstance(weights, Path):
        return True
    if isinstance(weights, str):
        return (
            os.sep in weights
            or weights.endswith(_WEIGHTS_SUFFIXES)
            or os.path.exists(weights)
        )
    return False


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(
            f"Could not read safetensors weights {str(path)!r}: {exc}. The file is "
            "truncated or not a safetensors file."
        ) from exc


def _read_torch(path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"Refused to load {str(path)!r}: it is not a plain weights file (it holds "
            "Python objects that torch.load(weights_only=True) will not unpickle: loading "
            "it would run code). Save the weights with "
            "torch.save(model.state_dict(), path) or as .safetensors."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(
            f"Could not read weights {str(path)!r}: {exc}. The file is truncated or not a "
            "PyTorch weights file."
        ) from exc


def load_weights_file(path):
    """Read a state dict from a ``.safetensors`` file or a plain PyTorch weights file.

    ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` and nothing else:
    a pickle that carries code is refused, never executed.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
        The tensors, on CPU.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> from sktransfer.backbones import load_weights_file
    >>> folder = tempfile.mkdtemp()
    >>> state = torch.nn.Linear(3, 2).state_dict()
    >>> torch.save(state, os.path.join(folder, "w.pt"))
    >>> save_file(state, os.path.join(folder, "w.safetensors"))
    >>> sorted(load_weights_file(os.path.join(folder, "w.pt")))
    ['bias', 'weight']
    >>> loaded = load_weights_file(os.path.join(folder, "w.safetensors"))
    >>> torch.equal(loaded["weight"], state["weight"])
    True

    A pickle that would run code is refused:

    >>> class Payload:
    ...     def __reduce__(self):
    ...         return (print, ("this never runs",))
    >>> torch.save({"weight": Payload()}, os.path.join(folder, "evil.pt"))
    >>> load_weights_file(os.path.join(folder, "evil.pt"))
    Traceback (most recent call last):
    ...
    ValueError: Refused to load '...evil.pt': it is not a plain weights file ...
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"Weights file {str(path)!r} does not exist. Pass an existing .safetensors/.pt/"
            ".pth file, a weights name such as 'DEFAULT', or weights=None for random init."
        )
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    for key in _NESTED_STATE_KEYS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(
            f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)."
        )
    return state


def _first(keys, limit=5):
    return f"{keys[:limit]}{' ...' if len(keys) > limit else ''}"


def load_state_into(module, state, source, head_keys=()):
    """Load ``state`` into ``module`` strictly; only keys starting with one of ``head_keys``
    (the original classification head's) may be missing. ``source`` names the weights in the
    error message."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    missing_non_head = [k for k in missing if not any(k.startswith(h) for h in head_keys)]
    shape_errors = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing_non_head or unexpected or shape_errors:
        parts = []
        if missing_non_head:
            parts.append(f"missing keys {_first(missing_non_head)}")
        if unexpected:
            parts.append(f"unexpected keys {_first(unexpected)}")
        if shape_errors:
            parts.append(f"wrong shapes {shape_errors[:5]}")
        raise ValueError(
            f"Weights {source} do not match the architecture: {'; '.join(parts)}. Use weights "
            "saved from the same architecture, or weights=None for random init."
        )
    module.load_state_dict(state, strict=not missing)


def hub_checkpoint(url):
    """Where ``torch.hub`` keeps the file downloaded from ``url``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def download_state(url, what):
    """The state dict at ``url``: from torch.hub's cache, else downloaded (hash-checked).

    ``what`` names the weights in the error raised when the file is neither cached nor
    downloadable.
    """
    cached = hub_checkpoint(url)
    if os.path.isfile(cached):
        return load_weights_file(cached)
    try:
        return torch.hub.load_state_dict_from_url(
            url, progress=False, check_hash=True, weights_only=True, map_location="cpu"
        )
    except Exception as exc:  # URLError, socket errors, HTTP errors: all mean "not here"
        raise ValueError(
            f"Pretrained weights {what} are not available offline: looked for {cached!r} and "
            f"could not download {url} ({type(exc).__name__}: {exc}). Remedies: copy the file "
            "to that path (or set TORCH_HOME to a folder holding hub/checkpoints/), pass a "
            "local weights file as weights='path/to/file.pth', or use weights=None."
        ) from exc
