"""Frozen-prefix activation cache. Pure PyTorch/numpy.

When the first ``k`` stages of a network are frozen and run in eval mode, their output for a
sample never changes during training. Fine-tuning then only needs those outputs, computed once.
This module stores them per sample (keyed by a digest of the sample's bytes) and per prefix (a
key naming backbone, weights, preprocessing and depth), so that GridSearchCV folds and candidates
that share a prefix pass each image through it once per process. A folder (the estimators'
``cache="path"``) shares them between processes.

Memory is bounded by :func:`set_cache_options` (``max_bytes``; float16 storage optional). When a
request would exceed the budget, older prefixes are evicted; when one data set alone would exceed
it, no activations are stored and training recomputes the prefix every epoch instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict

import numpy as np
import torch

__all__ = ["cache_info", "clear_cache", "set_cache_options"]


def _default_budget():
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return int(min(2 * 2**30, total // 4))


_OPTIONS = {"max_bytes": _default_budget(), "dtype": "float32"}


def set_cache_options(*, max_bytes=None, dtype=None):
    """Configure the process-wide activation cache.

    Parameters
    ----------
    max_bytes : int, default=None
        Budget for stored activations (default: a quarter of RAM, at most 2 GiB).
    dtype : {"float32", "float16"}, default=None
        Storage type. ``"float16"`` halves memory but makes cached training differ from
        uncached training by float16 rounding; ``"float32"`` (the default) is exact.

    Examples
    --------
    >>> from sktransfer.caching import set_cache_options, cache_info
    >>> before = cache_info()
    >>> set_cache_options(max_bytes=2**30, dtype="float16")
    >>> cache_info()["max_bytes"], cache_info()["dtype"]
    (1073741824, 'float16')
    >>> set_cache_options(max_bytes=before["max_bytes"], dtype=before["dtype"])
    """
    if max_bytes is not None:
        if int(max_bytes) < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}.")
        _OPTIONS["max_bytes"] = int(max_bytes)
    if dtype is not None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}.")
        _OPTIONS["dtype"] = dtype
    _CACHE.shrink_to(_OPTIONS["max_bytes"])


class _ActivationCache:
    def __init__(self):
        self._stores: OrderedDict[str, dict] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.computed = 0
        self._lock = threading.Lock()

    def get(self, key, digests):
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                self.misses += len(digests)
                return [None] * len(digests)
            self._stores.move_to_end(key)
            rows = [store.get(d) for d in digests]
            found = sum(r is not None for r in rows)
            self.hits += found
            self.misses += len(rows) - found
            return rows

    def put(self, key, digests, rows):
        budget = _OPTIONS["max_bytes"]
        add = sum(r.numel() * r.element_size() for r in rows)
        with self._lock:
            if add > budget:
                return False
            while self.nbytes + add > budget and self._stores:
                oldest = next(iter(self._stores))
                if oldest == key and len(self._stores) == 1:
                    break
                self._drop(oldest)
            if self.nbytes + add > budget:
                return False
            store = self._stores.setdefault(key, {})
            for d, r in zip(digests, rows):
                if d not in store:
                    store[d] = r
                    self.nbytes += r.numel() * r.element_size()
            return True

    def _drop(self, key):
        store = self._stores.pop(key)
        self.nbytes -= sum(r.numel() * r.element_size() for r in store.values())

    def shrink_to(self, budget):
        with self._lock:
            while self.nbytes > budget and self._stores:
                self._drop(next(iter(self._stores)))

    def clear(self):
        with self._lock:
            self._stores.clear()
            self.nbytes = 0
            self.hits = self.misses = self.computed = 0


_CACHE = _ActivationCache()


def clear_cache():
    """Empty the in-process activation cache.

    Stored activations are freed and the counters of :func:`cache_info` reset; the options
    of :func:`set_cache_options` are kept. Folders given as ``cache="folder"`` are not touched.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> from sktransfer.caching import cache_info, clear_cache
    >>> X = np.random.RandomState(0).rand(20, 16, 16, 3).astype(np.float32)
    >>> clf = TransferClassifier("test_cnn", weights=None, freeze_depth=2, max_epochs=2,
    ...                          random_state=0).fit(X, [0, 1] * 10)
    >>> cache_info()["nbytes"] > 0
    True
    >>> clear_cache()
    >>> cache_info()["nbytes"], cache_info()["hits"]
    (0, 0)
    """
    _CACHE.clear()


def cache_info():
    """Counters and settings of the in-process activation cache.

    Returns
    -------
    info : dict
        ``hits`` and ``misses`` (samples looked up and found or not), ``computed`` (samples
        passed through a frozen prefix), ``nbytes`` (memory held), ``prefixes`` (frozen
        prefixes stored), ``max_bytes`` and ``dtype`` (see :func:`set_cache_options`).

    Examples
    --------
    Each image passes through the frozen stages once, however many epochs and fits use it:

    >>> import numpy as np
    >>> from sktransfer import TransferClassifier
    >>> from sktransfer.caching import cache_info, clear_cache
    >>> clear_cache()
    >>> X = np.random.RandomState(0).rand(20, 16, 16, 3).astype(np.float32)
    >>> for lr in (0.1, 0.01):
    ...     _ = TransferClassifier("test_cnn", weights=None, freeze_depth=2, lr=lr,
    ...                            head_init="random", max_epochs=3,
    ...                            random_state=0).fit(X, [0, 1] * 10)
    >>> cache_info()["computed"], cache_info()["prefixes"]
    (20, 1)
    """
    return {
        "hits": _CACHE.hits,
        "misses": _CACHE.misses,
        "computed": _CACHE.computed,
        "nbytes": _CACHE.nbytes,
        "prefixes": len(_CACHE._stores),
        "max_bytes": _OPTIONS["max_bytes"],
        "dtype": _OPTIONS["dtype"],
    }


def prefix_key(*, backbone, backbone_name, weights, spec, k, seed, input_size, grayscale,
               flip=False):
    """A string naming everything the output of the first ``k`` stages depends on.

    ``backbone`` is the value given (a name or a factory), ``backbone_name`` and ``weights``
    what it resolved to, ``seed`` the seed of a randomly initialised backbone (``None`` for
    pretrained weights), ``spec`` the :class:`~sktransfer._spec.InputSpec` of the input,
    ``flip`` whether the images are flipped left-right first.
    """
    parts = {
        "backbone": backbone_name,
        # A callable's name does not tell two factories apart (two lambdas, two partials of one
        # function): its repr (with its address, or a partial's arguments) does, within a process.
        "factory": None if isinstance(backbone, str) else repr(backbone),
        "weights": weights,
        "seed": seed,
        "spec": {key: (list(v) if isinstance(v, tuple) else v)
                 for key, v in spec.to_dict().items() if v is not None},
        "input_size": input_size,
        "grayscale": grayscale,
        "k": k,
        "torch": torch.__version__,
        **({"flip": True} if flip else {}),
        # float16 rows must never be taken for exact ones (a shared cache folder)
        "storage": _OPTIONS["dtype"],
    }
    if weights and os.path.isfile(str(weights)):
        st = os.stat(str(weights))
        parts["weights_file"] = [st.st_size, st.st_mtime_ns]
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _memory_dir(memory, key):
    if memory is None:
        return None
    location = getattr(memory, "location", memory)
    if location is None:
        return None
    path = os.path.join(str(location), "sktransfer_activations", key)
    os.makedirs(path, exist_ok=True)
    return path


def _read_disk(folder, digest):
    path = os.path.join(folder, digest.hex() + ".npy")
    try:
        return torch.from_numpy(np.load(path, allow_pickle=False))
    except (OSError, ValueError):
        return None


def _on_disk(folder, digest):
    return os.path.isfile(os.path.join(folder, digest.hex() + ".npy"))


def _write_disk(folder, digest, row):
    path = os.path.join(folder, digest.hex() + ".npy")
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, row.numpy(), allow_pickle=False)
    os.replace(tmp, path)


def prefix_activations(net, k, source, *, key, device, batch_size, memory=None, flip=False,
                        share=False):
    """Output of ``net.prefix(., k)`` for every sample of a source, as a float32 CPU tensor
    (of every sample flipped left-right with ``flip``: pass a key of its own).

    With ``share``, when every row is computed here (nothing cached yet, no folder), the cache
    keeps views of the returned tensor instead of copies, so that the activations are held
    once: the caller must never write into it (training only indexes it, which copies).

    Returns ``None`` when the activations of X alone would exceed the cache budget: the caller
    then trains on X and recomputes the prefix, rather than risking memory.
    """
    digests = source.digests()
    rows = _CACHE.get(key, digests)
    folder = _memory_dir(memory, key)
    from_disk, unsaved = [], []
    if folder is not None:
        for i, r in enumerate(rows):
            if r is None:
                rows[i] = _read_disk(folder, digests[i])
                if rows[i] is not None:
                    from_disk.append(i)
            elif not _on_disk(folder, digests[i]):
                unsaved.append(i)  # computed earlier in this process, before memory= was set
    missing = [i for i, r in enumerate(rows) if r is None]
    store_dtype = torch.float16 if _OPTIONS["dtype"] == "float16" else torch.float32
    channels_last = getattr(getattr(net, "preprocess", None), "channels_last", False)
    shared = (share and folder is None and store_dtype == torch.float32
              and len(missing) == len(rows))
    new_rows, full = [], None
    if missing:
        computed = _compute_rows(net, k, source, rows, missing, device=device,
                                 batch_size=batch_size, flip=flip, store_dtype=store_dtype,
                                 shared=shared, channels_last=channels_last)
        if computed is None:
            return None
        new_rows, full = computed
    # rows read from the folder are kept in memory too, for the next fit of this process
    kept = new_rows + from_disk
    if kept:
        _CACHE.put(key, [digests[i] for i in kept], [rows[i] for i in kept])
    if folder is not None:
        for i in new_rows + unsaved:
            _write_disk(folder, digests[i], rows[i])
    if len(rows) and rows[0].numel() * 4 * len(rows) > _OPTIONS["max_bytes"]:
        return None
    if full is not None:
        return full
    if rows and rows[0].dim() == 3 and channels_last:
        # The later stages then run on channels_last tensors as they do without the cache:
        # the same kernels, so the same results (and the faster convolutions on CPU).
        out = torch.empty((len(rows), *rows[0].shape), dtype=torch.float32,
                          memory_format=torch.channels_last)
        for i, r in enumerate(rows):
            out[i] = r
        return out
    return torch.stack([r.to(torch.float32) for r in rows])


def _compute_rows(net, k, source, rows, missing, *, device, batch_size, flip, store_dtype, shared,
                  channels_last):
    """Fill ``rows[i]`` for each ``i`` in ``missing`` with the prefix output of that sample:
    ``(new_rows, full)``, where ``full`` is the one tensor the rows are views of (``shared``)
    or ``None``; ``None`` when the activations would exceed the cache budget."""
    new_rows, full = [], None
    was = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(missing), batch_size):
                idx = missing[s : s + batch_size]
                out = net.prefix(source.batch(idx).to(device), k, flip=flip).to("cpu",
                                                                                 torch.float32)
                if s == 0:
                    if out[0].numel() * 4 * len(source) > _OPTIONS["max_bytes"]:
                        return None
                    if shared:  # one tensor for the cache and the caller, batch by batch
                        fmt = (torch.channels_last if out.dim() == 4 and channels_last
                               else torch.contiguous_format)
                        full = torch.empty((len(rows), *out.shape[1:]), dtype=torch.float32,
                                           memory_format=fmt)
                if full is not None:
                    full[idx] = out
                    for i in idx:
                        rows[i] = full[i]
                    new_rows.extend(idx)
                    continue
                for j, i in enumerate(idx):
                    row = out[j].contiguous().clone()
                    rows[i] = row if store_dtype == torch.float32 else row.to(store_dtype)
                    new_rows.append(i)
    finally:
        net.train(was)
    _CACHE.computed += len(missing)
    return new_rows, full
