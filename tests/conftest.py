import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def two_torch_threads():
    """torch on 2 threads during the test; the suite runs on 1 (see the root conftest.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    return request.param


@pytest.fixture
def tiny_images():
    """40 RGB 16x16 float images in [0, 1] with a learnable 2-class signal, NHWC."""
    rng = np.random.RandomState(0)
    X = rng.rand(40, 16, 16, 3).astype(np.float32) * 0.5
    y = np.array([0, 1] * 20)
    X[y == 1, :8] += 0.5
    return X, y


@pytest.fixture
def tiny_vectors():
    rng = np.random.RandomState(0)
    X = rng.randn(60, 5).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    return X, y
