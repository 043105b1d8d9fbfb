"""Images as users have them: files of every common kind, PIL images, augmentation."""

import shutil
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageFile
from sklearn.datasets import load_sample_images
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from skorch.callbacks import Callback

import sktransfer.backbones
from sktransfer import TransferClassifier, TransferRegressor, register_backbone
from sktransfer.images import (
    BadImageError,
    ImageSource,
    decode_image,
    drop_unreadable,
    is_image_list,
    load_images,
)

SIZE = 32


def _photos():
    china, flower = load_sample_images().images
    return [china, flower, skimage.data.chelsea(), skimage.data.coffee()]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of each kind a user may have, good and bad."""
    root = tmp_path_factory.mktemp("kinds")
    china, flower, chelsea, coffee = _photos()
    out = {}

    def save(name, img, **kw):
        out[name] = root / name
        img.save(out[name], **kw)

    save("photo.jpg", Image.fromarray(china[100:220, 200:360]), quality=90)
    save("photo.png", Image.fromarray(flower[100:220, 200:360]))
    gray = Image.fromarray(chelsea[50:170, 100:260]).convert("L")
    save("gray.png", gray)
    save("gray16.png", Image.fromarray(np.asarray(gray).astype(np.uint16) * 257))
    rgba = np.dstack([coffee[:120, :160], np.full((120, 160), 255, np.uint8)])
    rgba[:, :80, 3] = 0  # left half transparent
    save("rgba.png", Image.fromarray(rgba))
    save("palette.png", Image.fromarray(china[:120, :160]).quantize(64))
    save("cmyk.jpg", Image.fromarray(coffee[100:220, 200:360]).convert("CMYK"), quality=95)
    # stored 64 wide x 32 high, left half red, right half blue; EXIF orientation 6 means
    # "rotate 90 degrees clockwise to display": shown 32 wide x 64 high, red on top
    pattern = np.zeros((32, 64, 3), np.uint8)
    pattern[:, :32, 0] = 255
    pattern[:, 32:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rotated.jpg", Image.fromarray(pattern), exif=exif, quality=95)
    data = out["photo.jpg"].read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image\n")
    out["truncated.jpg"] = root / "truncated.jpg"
    out["empty.jpg"] = root / "empty.jpg"
    out["notes.jpg"] = root / "notes.jpg"
    out["missing.png"] = root / "missing.png"
    return out


BAD = ["truncated.jpg", "empty.jpg", "notes.jpg", "missing.png"]
GOOD = ["photo.jpg", "photo.png", "gray.png", "gray16.png", "rgba.png", "palette.png",
        "cmyk.jpg", "rotated.jpg"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """24 crops of 4 photos (the class is the photo), as JPEG and PNG files."""
    root = tmp_path_factory.mktemp("train")
    rng = np.random.RandomState(0)
    paths, y = [], []
    for i in range(24):
        k = i % 4
        photo = _photos()[k]
        top, left = rng.randint(0, photo.shape[0] - 80), rng.randint(0, photo.shape[1] - 100)
        path = root / f"img{i:02d}.{'jpg' if i % 3 else 'png'}"
        Image.fromarray(photo[top : top + 80, left : left + 100]).save(path)
        paths.append(str(path))
        y.append(["china", "flower", "cat", "coffee"][k])
    return paths, np.array(y, dtype=object)


def _clf(**kw):
    params = dict(weights=None, input_size=SIZE, max_epochs=2, batch_size=8, random_state=0,
                  freeze_depth=1, head_init="random")  # trained, whatever the data size
    params.update(kw)
    return TransferClassifier("test_cnn", **params)


@pytest.fixture(scope="module")
def fitted(dataset):
    paths, y = dataset
    return _clf().fit(paths, y)


class _Spy(Callback):
    """Counts training starts (a class attribute: the estimator copies its callbacks)."""

    started = 0

    def on_train_begin(self, net, **kwargs):
        type(self).started += 1


# -- decoding rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD)
def test_every_kind_of_file_decodes_to_rgb_uint8_of_the_size(files, name):
    pixels = decode_image(files[name], SIZE)
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8


def test_grayscale_and_16_bit_files_become_equal_rgb_channels(files):
    gray = decode_image(files["gray.png"], SIZE).astype(int)
    gray16 = decode_image(files["gray16.png"], SIZE).astype(int)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0],
                                                                         gray[..., 2])
    # 16-bit values v * 257 are scaled back by 257: the same picture as the 8-bit file
    assert np.abs(gray16 - gray).max() <= 1


def test_16_bit_values_are_divided_by_257(tmp_path):
    path = tmp_path / "level.png"
    Image.fromarray(np.full((20, 30), 200 * 257, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    assert np.all(decode_image(path, 8) == 200)


def test_transparency_is_composited_on_white(files):
    pixels = decode_image(files["rgba.png"], 120)  # 160x120: centre crop keeps x in 20..140
    assert np.all(pixels[:, :50] == 255)  # transparent left half
    opaque = np.asarray(Image.open(files["rgba.png"]))[:, 20:140, :3]
    assert np.array_equal(pixels[:, 70:], opaque[:, 70:])
    la = Image.new("LA", (10, 10), (0, 0))
    assert np.all(decode_image(la, 4) == 255)


def test_palette_image_decodes_to_its_colours(files):
    palette = Image.open(files["palette.png"])
    assert palette.mode == "P"
    assert np.array_equal(decode_image(palette, SIZE), decode_image(palette.convert("RGB"),
                                                                    SIZE))


def test_cmyk_jpeg_is_converted_to_rgb(files):
    rgb = Image.open(files["cmyk.jpg"])
    assert rgb.mode == "CMYK"
    expected = decode_image(Image.fromarray(_photos()[3][100:220, 200:360]), SIZE)
    diff = np.abs(decode_image(files["cmyk.jpg"], SIZE).astype(int) - expected.astype(int))
    assert diff.mean() < 8


def test_exif_orientation_is_applied(files):
    pixels = decode_image(files["rotated.jpg"], 32).astype(int)
    # shown 32 wide x 64 high with red on top; the centre crop keeps rows 16..48
    assert pixels[4, 16, 0] > 200 and pixels[4, 16, 2] < 60
    assert pixels[28, 16, 2] > 200 and pixels[28, 16, 0] < 60


def test_shorter_side_is_resized_and_the_longer_centre_cropped():
    thirds = np.zeros((30, 60, 3), np.uint8)
    thirds[:, :20, 0] = thirds[:, 20:40, 1] = thirds[:, 40:, 2] = 255
    pixels = decode_image(Image.fromarray(thirds), 30)
    assert pixels.shape == (30, 30, 3)
    assert pixels[15, 0].tolist() == [255, 0, 0]
    assert pixels[15, 15].tolist() == [0, 255, 0]
    assert pixels[15, 29].tolist() == [0, 0, 255]
    # upsampling follows the same rule
    assert decode_image(Image.fromarray(thirds), 90)[45, 45].tolist() == [0, 255, 0]


def test_a_pil_image_decodes_like_its_file_and_is_not_changed(files):
    img = Image.open(files["photo.png"])
    size, mode = img.size, img.mode
    assert np.array_equal(decode_image(img, SIZE), decode_image(files["photo.png"], SIZE))
    assert (img.size, img.mode) == (size, mode)


def test_file_digests_hash_the_bytes(files, tmp_path):
    copy = tmp_path / "copy.png"
    shutil.copy(files["photo.png"], copy)
    other = files["photo.jpg"]
    d = ImageSource([files["photo.png"], copy, other], SIZE).digests()
    assert d[0] == d[1] != d[2]


def test_image_lists_are_recognised():
    assert is_image_list([Path("a.png"), "b.jpg"])
    assert is_image_list(np.array(["a.png", "b.png"], dtype=object))
    assert is_image_list([Image.new("RGB", (4, 4))])
    assert not is_image_list(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="single path"):
        is_image_list("a.png")


# -- estimators on files --------------------------------------------------------------------------


def test_fit_on_paths_predicts_on_paths_pil_and_decoded_arrays(dataset, fitted):
    paths, y = dataset
    assert fitted.input_spec_["source"] == "files"
    assert fitted.input_spec_["decode_size"] == SIZE
    assert fitted.n_features_in_ == SIZE * SIZE * 3
    proba = fitted.predict_proba(paths)
    assert proba.shape == (24, 4)
    np.testing.assert_array_equal(fitted.predict(paths), fitted.classes_[proba.argmax(axis=1)])
    as_arrays = load_images(paths, SIZE)
    np.testing.assert_allclose(fitted.predict_proba([Path(p) for p in paths]), proba, atol=1e-6)
    np.testing.assert_allclose(fitted.predict_proba(np.array(paths, dtype=object)), proba,
                               atol=1e-6)
    np.testing.assert_allclose(fitted.predict_proba(as_arrays), proba, atol=1e-6)
    # arrays as floats in [0, 1], or channels first, are brought to the fitted layout
    np.testing.assert_allclose(fitted.predict_proba(as_arrays / 255.0), proba, atol=1e-5)
    np.testing.assert_allclose(
        fitted.predict_proba(np.ascontiguousarray(as_arrays.transpose(0, 3, 1, 2))), proba,
        atol=1e-6,
    )
    png = [i for i, p in enumerate(paths) if p.endswith(".png")]
    pil = [Image.open(paths[i]) for i in png]
    np.testing.assert_allclose(fitted.predict_proba(pil), proba[png], atol=1e-6)


def test_without_input_size_files_are_decoded_to_the_backbone_native_size(dataset,
                                                                          monkeypatch):
    paths, y = dataset
    # register into a copy of the registry, so that no other test sees the name
    monkeypatch.setattr(sktransfer.backbones, "_REGISTRY", dict(sktransfer.backbones._REGISTRY))

    def small_cnn():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(1))

    register_backbone("native24_cnn", small_cnn, input_size=24, overwrite=True)
    clf = TransferClassifier("native24_cnn", weights=None, max_epochs=1, random_state=0)
    assert clf.fit(paths[:8], y[:8]).input_spec_["decode_size"] == 24


def test_fit_on_a_list_of_pil_images(dataset):
    paths, y = dataset
    pil = [Image.open(p) for p in paths]
    clf = _clf(max_epochs=1).fit(pil, y)
    assert clf.input_spec_["source"] == "pil"
    assert clf.predict_proba(pil[:3]).shape == (3, 4)


def test_regressor_fits_on_paths(dataset):
    paths, _ = dataset
    target = np.arange(len(paths), dtype=float)
    reg = TransferRegressor("test_cnn", weights=None, input_size=SIZE, max_epochs=1,
                            random_state=0).fit(paths, target)
    assert reg.predict(paths[:5]).shape == (5,)


def test_joblib_round_trip_of_a_model_fitted_on_paths(dataset, fitted, tmp_path):
    paths, _ = dataset
    joblib.dump(fitted, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    assert np.array_equal(loaded.predict_proba(paths), fitted.predict_proba(paths))


def test_model_selection_slices_path_lists(dataset):
    paths, y = dataset
    scores = cross_val_score(_clf(max_epochs=1), np.array(paths, dtype=object), y, cv=2,
                             error_score="raise")
    y = np.asarray(y)
    by_hand = [  # the same folds, sliced by hand as lists of paths
        _clf(max_epochs=1).fit([paths[i] for i in train], y[train])
        .score([paths[i] for i in test], y[test])
        for train, test in StratifiedKFold(2).split(paths, y)
    ]
    np.testing.assert_array_equal(scores, by_hand)
    search = GridSearchCV(_clf(max_epochs=1), {"lr": [0.01, 0.1]}, cv=2, refit=False,
                          error_score="raise").fit(paths, y)
    assert len(search.cv_results_["mean_test_score"]) == 2


def test_workers_decode_the_same_data(dataset, fitted):
    paths, y = dataset
    clf = _clf(num_workers=1).fit(paths, y)
    assert np.array_equal(clf.predict_proba(paths), fitted.predict_proba(paths))


# -- bad files ------------------------------------------------------------------------------------


def test_bad_files_are_all_reported_before_training(dataset, files):
    paths, y = dataset
    bad = [str(files[name]) for name in BAD]
    clf = _clf(callbacks=[_Spy()])
    _Spy.started = 0
    with pytest.raises(ValueError, match="4 of 28 images could not be read") as info:
        clf.fit(paths + bad, list(y) + ["cat"] * 4)
    message = str(info.value)
    for path in bad:
        assert path in message
    assert "on_bad_image='skip'" in message
    assert not any(p in message for p in paths)
    assert _Spy.started == 0 and not hasattr(clf, "module_")


def test_skip_mode_warns_naming_the_files_and_drops_their_targets(dataset, files):
    paths, y = dataset
    bad = [str(files[name]) for name in BAD]
    truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.warns(UserWarning, match="Skipped 4 of 28 images") as record:
        X_kept, y_kept = drop_unreadable(paths + bad, list(y) + ["unreadable"] * 4)
    clf = _clf(max_epochs=1).fit(X_kept, y_kept)
    message = " ".join(str(w.message) for w in record)
    assert all(path in message for path in bad)
    assert "unreadable" not in set(clf.classes_)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is truncated_flag


def test_predict_reports_every_bad_file_at_once(dataset, files, fitted):
    paths, _ = dataset
    with pytest.raises(ValueError, match="2 of 4 images could not be read") as info:
        fitted.predict(paths[:2] + [str(files["truncated.jpg"]), str(files["notes.jpg"])])
    assert str(files["truncated.jpg"]) in str(info.value)
    assert str(files["notes.jpg"]) in str(info.value)


def test_drop_unreadable_leaves_out_bad_files_and_their_targets(files):
    good = [str(files[name]) for name in GOOD]
    bad = [str(files[name]) for name in BAD]
    X = good[:3] + bad[:2] + good[3:] + bad[2:]
    with pytest.warns(UserWarning, match="Skipped 4 of 12 images that could not be read") as rec:
        X_kept, y_kept = drop_unreadable(X, list(range(12)))
    assert X_kept == good and y_kept == [0, 1, 2, 5, 6, 7, 8, 9]
    message = str(rec[0].message)
    assert all(path in message for path in bad) and not any(path in message for path in good)
    assert rec[0].filename == __file__  # the warning points at the caller
    # an array stays an array; without y only X comes back
    with pytest.warns(UserWarning, match=r"empty\.jpg \(empty file\)"):
        kept = drop_unreadable(np.array([good[0], bad[1]], dtype=object))
    assert isinstance(kept, np.ndarray) and kept.tolist() == [good[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to drop: no warning
        assert drop_unreadable(good) == good


def test_drop_unreadable_errors(files):
    bad = [str(files[name]) for name in BAD]
    with pytest.raises(BadImageError, match="4 of 4 images could not be read") as info:
        drop_unreadable(bad)
    assert info.value.paths == bad and info.value.reasons[1] == "empty file"
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        drop_unreadable([str(files["photo.png"])], [0, 1])
    with pytest.raises(ValueError, match="non-empty list of paths or PIL images"):
        drop_unreadable([[0.5, 1.0]])


def test_decompression_bomb_propagates_and_global_flags_stay(files, monkeypatch):
    flag = ImageFile.LOAD_TRUNCATED_IMAGES
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 160x120 photo is > 2x that
    bombs = [str(files["photo.png"])] * 4
    for load in (lambda: _clf().fit(bombs, [0, 1] * 2),  # fit's own check
                 lambda: drop_unreadable(bombs, [0, 1] * 2)):  # skipping never swallows one
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with pytest.raises(Image.DecompressionBombError, match="decompression bomb"):
                load()
    assert Image.MAX_IMAGE_PIXELS == 1000
    assert ImageFile.LOAD_TRUNCATED_IMAGES is flag


# -- input errors ---------------------------------------------------------------------------------


def test_input_errors_name_the_remedy(dataset):
    paths, y = dataset
    with pytest.raises(ValueError, match="single path"):
        _clf().fit(paths[0], y[:1])
    with pytest.raises(ValueError, match="input_size"):
        TransferClassifier("test_cnn", weights=None).fit(paths, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        _clf().fit(paths, y[:-1])
    with pytest.raises(ValueError, match="backbone takes 2-D vectors"):
        TransferClassifier("test_mlp", weights=None).fit(paths, y)
    rng = np.random.RandomState(0)
    on_arrays = _clf(max_epochs=1).fit(rng.rand(8, SIZE, SIZE, 3), [0, 1] * 4)
    with pytest.raises(ValueError, match="fitted on arrays"):
        on_arrays.predict(paths)


# -- augmentation ---------------------------------------------------------------------------------


def test_light_augmentation_is_reproducible_and_changes_training(dataset, fitted):
    paths, y = dataset
    a = _clf(augment="light").fit(paths, y).predict_proba(paths)
    b = _clf(augment="light").fit(paths, y).predict_proba(paths)
    assert np.array_equal(a, b)
    assert not np.allclose(a, fitted.predict_proba(paths), atol=1e-4)


class _CountingFlip:
    """A callable augmentation recording what it is given."""

    def __init__(self):
        self.calls = 0
        self.seen = []

    def __call__(self, img):
        self.calls += 1
        self.seen.append((tuple(img.shape), img.dtype, float(img.min()), float(img.max())))
        return img.flip(-1)


def test_callable_augmentation_runs_only_in_fit_on_arrays_too():
    rng = np.random.RandomState(0)
    X = (rng.rand(12, 16, 16, 3) * 255).astype(np.uint8)
    flip = _CountingFlip()
    clf = _clf(augment=flip, max_epochs=2, batch_size=4, input_size=None).fit(X, [0, 1] * 6)
    # the check of the transform on the first two images, then every image in each epoch
    assert flip.calls == 2 + 2 * 12
    shape, dtype, low, high = flip.seen[0]  # X[0], scaled to [0, 1]
    assert shape == (3, 16, 16) and dtype == torch.float32
    assert (low, high) == pytest.approx((X[0].min() / 255, X[0].max() / 255))
    calls = flip.calls
    clf.predict_proba(X)
    assert flip.calls == calls


def test_light_augmentation_works_on_grayscale_arrays():
    rng = np.random.RandomState(0)
    X = rng.rand(8, 16, 16).astype(np.float32)
    clf = _clf(augment="light", max_epochs=1, input_size=None).fit(X, [0, 1] * 4)
    assert clf.predict(X).shape == (8,)


def test_augmentation_errors_before_training(dataset):
    paths, y = dataset
    with pytest.raises(ValueError, match="augment must return a tensor of the shape"):
        _clf(augment=lambda img: img[:, :8]).fit(paths, y)
    with pytest.raises(ValueError, match="backbone takes vectors"):
        TransferClassifier("test_mlp", weights=None, augment="light").fit(
            np.random.RandomState(0).rand(10, 4), [0, 1] * 5
        )
