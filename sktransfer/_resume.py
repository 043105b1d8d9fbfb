"""Resuming a fit: the state a fit leaves after its last epoch, the skorch callback that
restores it at the start of a later fit and stores the fit's own at its end, and the stores
that keep states between the two (in memory, or in a folder that processes share). Layer 2:
PyTorch and skorch; the searches of :mod:`sktransfer.model_selection` decide what is kept.

A state holds what training changes (the trainable parameters and the buffers of modules in
training mode, never the frozen stages, which a fit rebuilds as they were), the optimizers'
state (momentum buffers), the random generators (torch's, numpy's, ``random``'s, the data
loader's) and the history. A fit that restores it, with the same hyperparameters and data,
continues exactly where the fit that stored it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import shutil
import tempfile
import threading
import warnings

import numpy as np
import torch
from skorch.callbacks import Callback

from ._runtime import seed_from
from ._schedules import trained_backbone_anchors

__all__ = ["FolderStates", "MemoryStates", "ResumeCallback", "ResumePoint"]


# ---------------------------------------------------------------------------------------------
# Where states are kept, under (key, epochs)
# ---------------------------------------------------------------------------------------------


class MemoryStates:
    """States in this process's memory (tensors copied to the CPU)."""

    def __init__(self):
        self.active = True
        self._states = {}
        self._lock = threading.Lock()

    def put(self, key, epochs, state):
        with self._lock:
            if self.active:
                self._states[(key, epochs)] = state

    def pop(self, key, before):
        """Take out the state of ``key`` with the most epochs below ``before`` (or ``None``)."""
        with self._lock:
            found = [e for k, e in self._states if k == key and e < before]
            return self._states.pop((key, max(found))) if found else None

    def keys(self):
        with self._lock:
            return list(self._states)

    def discard(self, key, epochs):
        with self._lock:
            self._states.pop((key, epochs), None)

    def release(self):
        with self._lock:
            self.active = False
            self._states.clear()

    def __getstate__(self):
        # another process cannot reach this memory: a copy there resumes and keeps nothing
        return {"active": False, "_states": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


class FolderStates:
    """States as files in a folder of their own (made in ``root``, or the system's temporary
    folder), shared by the worker processes of a search; removed by :meth:`release`."""

    def __init__(self, root=None):
        self.active = True
        if root is not None:
            os.makedirs(root, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix="sktransfer-resume-", dir=root)

    def _file(self, key, epochs):
        return os.path.join(self.path, f"{key}-{epochs}.pt")

    def put(self, key, epochs, state):
        if not self.active:
            return
        path = self._file(key, epochs)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except OSError as exc:
            warnings.warn(f"The state of a fit could not be stored in {self.path} ({exc}); "
                          "its candidate will be fitted from the start in the next round.",
                          RuntimeWarning, stacklevel=2)

    def pop(self, key, before):
        found = [e for k, e in self.keys() if k == key and e < before]
        if not found:
            return None
        path = self._file(key, max(found))
        claimed = f"{path}.{os.getpid()}.{threading.get_ident()}.claimed"
        try:
            os.replace(path, claimed)  # taken by one fit only
        except OSError:
            return None
        try:
            return torch.load(claimed, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - an unreadable state: the fit starts over
            warnings.warn(f"A stored state could not be read ({exc}); the fit starts over.",
                          RuntimeWarning, stacklevel=2)
            return None
        finally:
            _remove(claimed)

    def keys(self):
        try:
            names = os.listdir(self.path)
        except OSError:
            return []
        keys = []
        for name in names:
            stem, dot, ext = name.rpartition(".")
            key, _, epochs = stem.rpartition("-")
            if dot and ext == "pt" and epochs.isdigit():
                keys.append((key, int(epochs)))
        return keys

    def discard(self, key, epochs):
        _remove(self._file(key, epochs))

    def release(self):
        self.active = False
        shutil.rmtree(self.path, ignore_errors=True)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# One fit that continues a stored state (or starts one)
# ---------------------------------------------------------------------------------------------


class ResumePoint:
    """One fit that continues ``state`` (``None``: from the start) up to ``epochs``, on a
    learning-rate schedule of ``schedule_epochs``, and leaves its own state in ``store``
    under ``key`` (not when it ends the schedule: nothing continues it)."""

    def __init__(self, store, key, epochs, state, *, schedule_epochs):
        self.store = store
        self.key = key
        self.epochs = int(epochs)
        self.state = state
        self.schedule_epochs = int(schedule_epochs)
        self.start = 0 if state is None else int(state["epochs"])

    def seed(self, random_state):
        """The fit's seed: the stored fit's, or a new one from ``random_state``."""
        return seed_from(random_state) if self.state is None else int(self.state["seed"])

    def configure(self, config):
        """``config`` (a ``TrainingConfig``) for the epochs this fit lacks, with the schedule
        and the callback that restores the state and stores the fit's own."""
        keep = self.epochs < self.schedule_epochs
        callback = ResumeCallback(self.state, self.store if keep else None, self.key,
                                  self.epochs, config.seed)
        return dataclasses.replace(
            config, max_epochs=self.epochs - self.start, start_epoch=self.start,
            schedule_epochs=self.schedule_epochs,
            callbacks=[*(config.callbacks or []), ("sktransfer_resume", callback)],
        )


class ResumeCallback(Callback):
    """Restores a stored state when training begins; stores the fit's state when it ends."""

    def __init__(self, state, store, key, epochs, seed):
        self.state = state
        self.store = store
        self.key = key
        self.epochs = epochs
        self.seed = seed

    def on_train_begin(self, net, **kwargs):
        if self.state is not None:
            _restore(net, self.state)
            self.state = None  # held by the fit no longer

    def on_train_end(self, net, **kwargs):
        if self.store is not None and len(net.history) == self.epochs:
            self.store.put(self.key, self.epochs, _capture(net, self.epochs, self.seed))


# ---------------------------------------------------------------------------------------------
# A fit's state: taken at the end of one round, restored at the start of the next
# ---------------------------------------------------------------------------------------------


def _trained_names(module):
    """State-dict names of what training changes: trainable parameters and the buffers of
    modules in training mode (the frozen stages stay as built)."""
    was = module.training
    module.train()
    try:
        names = {n for n, p in module.named_parameters() if p.requires_grad}
        for prefix, m in module.named_modules():
            if m.training:
                names.update(f"{prefix}.{b}" if prefix else b
                             for b, _ in m.named_buffers(recurse=False))
    finally:
        module.train(was)
    return sorted(names & set(module.state_dict()))


def _plain(obj):
    """A copy of ``obj`` on the CPU in types that ``torch.load(weights_only=True)`` reads."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _loader_generator(net):
    return net.get_params_for("iterator_train").get("generator")


def _rng_states(net):
    _, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "random": random.getstate(),
              "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached": float(cached)}}
    generator = _loader_generator(net)
    if generator is not None:
        states["loader"] = generator.get_state()
    if net.device is not None and torch.device(net.device).type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(torch.device(net.device))
    return states


def _set_rng_states(net, states):
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["random"]
    random.setstate((version, tuple(internal), gauss))
    np_state = states["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached"]))
    generator = _loader_generator(net)
    if generator is not None and "loader" in states:
        generator.set_state(states["loader"])
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], torch.device(net.device))


def _capture(net, epochs, seed):
    module = net.module_
    own = module.state_dict()
    state = {
        "epochs": int(epochs), "seed": int(seed),
        "module": {name: _plain(own[name]) for name in _trained_names(module)},
        "optimizers": {name: _plain(getattr(net, name + "_").state_dict())
                       for name in net._optimizers},
        "history": _plain([dict(row) for row in net.history]),
        "rng": _plain(_rng_states(net)),
    }
    scaler = getattr(net, "grad_scaler_", None)
    if scaler is not None:
        state["scaler"] = _plain(scaler.state_dict())
    return state


def _restore(net, state):
    module = net.module_
    if getattr(net, "l2_sp", 0):
        # L2-SP pulls towards the weights the fit started from: the built ones, as in an
        # uninterrupted fit (taken before the stored weights replace them)
        net._anchors = trained_backbone_anchors(module)
    result = module.load_state_dict(state["module"], strict=False)
    if result.unexpected_keys:
        raise ValueError(f"A stored state does not fit the network: {result.unexpected_keys}")
    for name in net._optimizers:
        getattr(net, name + "_").load_state_dict(state["optimizers"][name])
    scaler = getattr(net, "grad_scaler_", None)
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    net.history.extend(copy.deepcopy(state["history"]))
    _set_rng_states(net, state["rng"])


