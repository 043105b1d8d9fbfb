"""Device, seeding, global-state hygiene and batched inference. Pure PyTorch/numpy."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from ._data import ArrayDataset, ArraySource, collate_batch

__all__ = [
    "batched_features",
    "batched_forward",
    "check_finite_output",
    "preserved_global_state",
    "resolve_device",
    "seed_from",
    "seeded_global_state",
]


def _rng_devices(device=None):
    """The CUDA devices whose generators a scope must save: every initialised one, and the
    fit's own (initialised now if it is not yet)."""
    devices = set()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices.update(range(torch.cuda.device_count()))
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        devices.add(torch.cuda.current_device() if dev.index is None else dev.index)
    return sorted(devices)


@contextlib.contextmanager
def preserved_global_state(device=None):
    """Leave torch's (CPU and every CUDA device's), numpy's and ``random``'s RNG states, torch's
    thread count and grad mode as found."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    threads = torch.get_num_threads()
    grad = torch.is_grad_enabled()
    with torch.random.fork_rng(devices=_rng_devices(device)):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            torch.set_grad_enabled(grad)


@contextlib.contextmanager
def seeded_global_state(seed, device=None):
    """:func:`preserved_global_state`, inside which torch's CPU generator (and that of the
    CUDA ``device``, if one) and numpy's and ``random``'s global generators start from
    ``seed``: dropout and a callable augmentation that draws from numpy or ``random`` are then
    reproducible. Other CUDA devices are never reseeded (``torch.manual_seed`` would reseed
    them all)."""
    with preserved_global_state(device):
        torch.default_generator.manual_seed(int(seed))
        if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
            with torch.cuda.device(torch.device(device)):
                torch.cuda.manual_seed(int(seed))
        np.random.seed(int(seed) % 2**32)
        random.seed(int(seed))
        yield


def resolve_device(device):
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a device torch understands; use 'auto', 'cpu', 'cuda' "
            "or 'cuda:N'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; use "
            "device='auto' or 'cpu'."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} was requested but MPS is not available.")
    return str(dev)


def seed_from(random_state):
    """An integer seed from a ``random_state`` value (``None``: a fresh draw)."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    return int(random_state)


def batched_forward(net, source, device, batch_size, start=0, num_workers=0, pad=False,
                    flip=False):
    """Outputs for every sample of ``source``, in batches of ``batch_size``
    (:func:`batched_features` with ``net``'s forward pass from stage ``start``).

    With ``pad=True`` every batch is zero-padded to ``batch_size`` rows, so each sample goes
    through exactly the same matrix kernels whatever the size of the request: predictions are
    then bitwise invariant to batch size and row order (used for cheap vector backbones).
    ``flip=True`` runs the images flipped left-right (test-time augmentation).
    """
    extra = {"flip": True} if flip else {}
    return batched_features(lambda xb: net(xb, start=start, **extra), source, device,
                            batch_size, num_workers=num_workers, pad=pad)


def batched_features(features, source, device, batch_size, *, num_workers=0, pad=False):
    """What ``features`` computes for every sample of ``source``, in batches of ``batch_size``,
    under inference mode: the package's one loop over a source in batches.

    Parameters
    ----------
    features : TransferNet or callable
        A network: its ``features`` (the backbone's output, before the head), computed in eval
        mode, the network's mode restored after. A callable: called on each batch as given
        (on ``device``), the caller having set the modes.
    source : ArraySource or ImageSource
        The samples; ``source.batch(indices)`` gives a raw batch.
    device : str
        Where the batches go.
    batch_size : int
        Samples per batch.
    num_workers : int, default=0
        Decode image files in this many worker processes, in order.
    pad : bool, default=False
        Zero-pad every batch to ``batch_size`` rows (the outputs of the padding dropped).

    Returns
    -------
    out : ndarray of shape (n_samples, ...), dtype float32
        Run under the caller's autocast, if any; returned as float32 on the CPU.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sktransfer._runtime import batched_features
    >>> class Source:
    ...     def __len__(self): return 5
    ...     def batch(self, idx): return torch.arange(5.0)[idx, None]
    >>> batched_features(lambda x: 2 * x, Source(), "cpu", 2, pad=True)[:, 0]
    array([0., 2., 4., 6., 8.], dtype=float32)
    """
    if isinstance(features, torch.nn.Module) and hasattr(features, "features"):
        net, was = features, features.training
        net.eval()
        try:
            return batched_features(net.features, source, device, batch_size,
                                    num_workers=num_workers, pad=pad)
        finally:
            net.train(was)
    n = len(source)
    chunks = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    batches = (source.batch(idx) for idx in chunks)
    if num_workers and not isinstance(source, ArraySource):
        # decode (files) in parallel workers, in order
        batches = (xb for xb, _ in torch.utils.data.DataLoader(
            ArrayDataset(source), batch_sampler=chunks, num_workers=num_workers,
            collate_fn=collate_batch,
        ))
    outs = []
    with torch.inference_mode():
        for xb in batches:
            m = len(xb)
            if pad and m < batch_size:
                xb = torch.cat([xb, xb.new_zeros((batch_size - m, *xb.shape[1:]))])
            outs.append(features(xb.to(device, non_blocking=True))[:m].float().cpu())
    return torch.cat(outs).numpy()


def check_finite_output(out):
    """``out``, checked: a NaN or infinite network output is an error, never a prediction."""
    bad = ~np.isfinite(out).reshape(len(out), -1).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"The network's output is NaN or infinite for {len(rows)} sample(s) (rows "
            f"{rows[:5].tolist()}{' ...' if len(rows) > 5 else ''}): their values overflow "
            "float32 inside the network or lie far outside the range seen in fit. Check X "
            "for extreme values."
        )
    return out
