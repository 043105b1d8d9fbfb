"""The ``sktransfer`` command line: fine-tune, predict, evaluate and list backbones.

Run ``sktransfer --help`` (or ``python -m sktransfer --help``) for the subcommands, and
``sktransfer SUBCOMMAND --help`` for their options. :func:`main` can also be called from Python
with a list of arguments; it returns the exit status instead of exiting.

Exit status: 0 on success, 1 on errors (unreadable images, a missing folder, an unknown
backbone...: ``error: <message>`` on stderr, no traceback unless ``--traceback``), 2 on usage
errors: those :mod:`argparse` finds, and option values the estimator's own parameter
validation refuses (``sktransfer: error: <message>``, before any data or weights are read).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import warnings

__all__ = ["main"]

_PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")

_DESCRIPTION = """\
Fine-tune pretrained image networks on a folder of images and use the result.

A data folder holds one sub-folder per class: DATA_DIR/<class>/<image>.
"""

_EPILOG = """\
Models saved to a .joblib/.pkl/.pickle path are pickles: load only files you trust. Any other
path (e.g. model.skt) is written in sktransfer's safe format (no pickle).

exit status: 0 success, 1 error (message on stderr), 2 usage error, 130 interrupted.
example:
  sktransfer fit photos/ --backbone efficientnet_lite0 --epochs 5 --out model.skt
  sktransfer predict model.skt new_photos/ --output predictions.csv
  sktransfer evaluate model.skt test_photos/ --plot confusion.png
"""


# ---------------------------------------------------------------------------------------------
# Saving and loading models
# ---------------------------------------------------------------------------------------------


def _is_pickle_path(path):
    return os.fspath(path).lower().endswith(_PICKLE_SUFFIXES)


def save_model(estimator, path):
    """Save a fitted estimator: joblib for ``.joblib``/``.pkl``/``.pickle`` paths, else the
    safe format of :func:`sktransfer.save` (a folder of JSON and safetensors).

    Parameters
    ----------
    estimator : TransferClassifier or TransferRegressor
        A fitted estimator.
    path : str or path-like
        Where to write.
    """
    from . import persistence

    if not _is_pickle_path(path):
        persistence.save(estimator, path)
        return
    import joblib

    joblib.dump(estimator, path)


def load_model(path):
    """Load what :func:`save_model` wrote (pickles: trusted files only).

    Parameters
    ----------
    path : str or path-like
        A model file or folder.

    Returns
    -------
    estimator : TransferClassifier or TransferRegressor
        The fitted estimator.
    """
    from . import persistence

    if not os.path.exists(path):
        raise FileNotFoundError(f"Model {os.fspath(path)!r} does not exist.")
    if not _is_pickle_path(path):
        return persistence.load(path)
    import joblib

    return joblib.load(path)


# ---------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except for required options and those without one."""

    def _get_help_string(self, action):
        if action.required or action.default is None:
            return action.help
        return super()._get_help_string(action)


def _float_or_text(text):
    """A number where the text is one, else the text ("auto" for --lr)."""
    try:
        return float(text)
    except ValueError:
        return text


def _int_or_text(text):
    """An integer where the text is one, else the text ("all" for --freeze-depth)."""
    try:
        return int(text)
    except ValueError:
        return text


def _weights(text):
    return None if text.lower() in ("none", "random") else text


class _UsageError(ValueError):
    """An option value the command refuses (exit status 2)."""


def build_parser():
    """The :class:`argparse.ArgumentParser` of the ``sktransfer`` command."""
    from . import __version__
    from ._explain import add_parser as add_explain

    parser = argparse.ArgumentParser(
        prog="sktransfer",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sktransfer {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    for add in (_add_fit, _add_predict, _add_evaluate, _add_backbones):
        add(sub)
    add_explain(sub, _DefaultsFormatter, _add_common, _load, _image_files)
    return parser


def _add_fit(sub):
    fit = sub.add_parser(
        "fit",
        help="fine-tune a backbone on DATA_DIR and save the model",
        description="Fine-tune a pretrained backbone on DATA_DIR/<class>/<image>. A stratified "
        "share of the images (--test-size) is held out; the accuracy on it is printed. "
        "Every image is read once before training starts, so that all unreadable files are "
        "reported together. Progress and the epoch table go to the terminal.",
        formatter_class=_DefaultsFormatter,
    )
    fit.add_argument("data_dir", metavar="DATA_DIR", help="folder with one sub-folder per class")
    fit.add_argument(
        "--out", "-o", required=True, metavar="MODEL",
        help="where to save the fitted model (.joblib/.pkl: pickle; else the safe format)",
    )
    fit.add_argument(
        "--backbone", default="efficientnet_lite0",
        help="backbone name (see 'sktransfer backbones'; 'timm:<name>' for timm models)",
    )
    fit.add_argument(
        "--weights", type=_weights, default="DEFAULT",
        help="'DEFAULT' for the pretrained weights, a weights name or file, or 'none' for "
        "random initialisation",
    )
    _add_training_options(fit)
    fit.add_argument(
        "--input-size", type=int, default=None,
        help="side in pixels images are resized and centre-cropped to (default: the "
        "backbone's native size)",
    )
    fit.add_argument(
        "--test-size", type=float, default=0.2,
        help="share of the images held out (stratified) to measure accuracy; 0 trains on all",
    )
    fit.add_argument(
        "--random-state", type=int, default=0, help="seed of the split, initialisation, "
        "shuffling and augmentation"
    )
    _add_common(fit)
    fit.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    fit.add_argument(
        "--verbose", type=int, choices=[0, 1, 2], default=2,
        help="0 silent, 1 epoch table, 2 epoch table and progress bar",
    )
    fit.set_defaults(handler=_cmd_fit)


def _add_predict(sub):
    predict = sub.add_parser(
        "predict",
        help="predict the classes of image files with a saved model (CSV output)",
        description="Predict with a saved model. Writes CSV rows 'path,label,probability' "
        "(the most probable class and its probability; 'path,prediction' for a regressor) to "
        "stdout or to --output.",
        formatter_class=_DefaultsFormatter,
    )
    predict.add_argument("model", metavar="MODEL", help="a model saved by 'sktransfer fit'")
    predict.add_argument(
        "inputs", metavar="PATHS_OR_DIR", nargs="+",
        help="image files, or folders searched recursively for image files",
    )
    predict.add_argument("--output", metavar="CSV", help="write the CSV here instead of stdout")
    _add_common(predict)
    predict.set_defaults(handler=_cmd_predict)


def _add_evaluate(sub):
    evaluate = sub.add_parser(
        "evaluate",
        help="accuracy, classification report and confusion matrix on a labelled folder",
        description="Evaluate a saved classifier on DATA_DIR/<class>/<image>: prints the "
        "accuracy and scikit-learn's classification report, and with --plot writes the "
        "confusion matrix as an image.",
        formatter_class=_DefaultsFormatter,
    )
    evaluate.add_argument("model", metavar="MODEL", help="a model saved by 'sktransfer fit'")
    evaluate.add_argument(
        "data_dir", metavar="DATA_DIR", help="folder with one sub-folder per class"
    )
    evaluate.add_argument(
        "--plot", metavar="PNG", help="write the confusion matrix here (needs matplotlib)"
    )
    _add_common(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)


def _add_backbones(sub):
    backbones = sub.add_parser(
        "backbones",
        help="list the backbones and whether their pretrained weights are available offline",
        description="List the backbone names accepted by --backbone, whether their default "
        "pretrained weights are on this machine (nothing is downloaded), and a description. "
        "timm models ('timm:<name>') are not listed.",
        formatter_class=_DefaultsFormatter,
    )
    backbones.add_argument(
        "--stages", metavar="NAME",
        help="instead, list the stage names of backbone NAME (the units of --freeze-depth)",
    )
    backbones.add_argument(
        "--source", choices=["all", "registered", "torchvision"], default="all",
        help="which backbones to list",
    )
    backbones.set_defaults(handler=_cmd_backbones)


def _add_common(parser):
    parser.add_argument(
        "--on-bad-image", choices=["raise", "skip"], default="raise",
        help="unreadable image files: stop with an error listing all of them, or skip them "
        "with a warning",
    )
    parser.add_argument(
        "--num-workers", type=int, default=0,
        help="worker processes decoding images (0: the main process)",
    )


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _decode_size(backbone, input_size):
    """The side images are decoded to: --input-size, else the backbone's native size. An
    unknown backbone name raises the error that names close matches."""
    from .backbones import get_backbone, list_backbones

    if input_size is not None:
        if not backbone.startswith("timm:") and backbone not in list_backbones():
            get_backbone(backbone)
        return input_size
    size = get_backbone(backbone, weights=None).preprocessing.input_size
    if size is None:
        raise ValueError(
            f"Backbone {backbone!r} has no native input size: pass --input-size (e.g. "
            "--input-size 224)."
        )
    return size


def _fit_checked(clf, size, X_train, y_train, X_test):
    """``clf.fit(X_train, y_train)`` with every image, held-out ones too, checked once before
    training starts: ``fit``'s own check reads the training images, this function the
    held-out ones first. One error lists all the unreadable images of both."""
    from .images import BadImageError, ImageSource, bad_images_error

    errors = []
    try:
        if X_test:
            ImageSource(X_test, size).validated()
    except BadImageError as exc:
        errors.append(exc)
    try:
        if not errors:
            return clf.fit(X_train, y_train)
        ImageSource(X_train, size).validated()  # no training now: only to list them all
    except BadImageError as exc:
        errors.insert(0, exc)
    raise bad_images_error(
        [p for e in errors for p in e.paths], [r for e in errors for r in e.reasons],
        len(X_train) + len(X_test),
        "Fix or remove them, or pass --on-bad-image skip to leave them out",
    )


def _add_training_options(fit):
    """The options that set TransferClassifier's training; unset ones keep its defaults."""
    fit.add_argument(
        "--freeze-depth", type=_int_or_text, default=None,
        help="k >= 0 freezes the first k stages, -k trains the last k, 'all' trains the new "
        "head only, 'auto' adapts to the labels per class (default: TransferClassifier's)",
    )
    fit.add_argument("--lr", type=_float_or_text, default=None,
                     help="learning rate, or 'auto' for a range test (default: "
                     "TransferClassifier's)")
    fit.add_argument("--momentum", type=float, default=None,
                     help="SGD momentum (default: TransferClassifier's)")
    fit.add_argument("--epochs", type=_int_or_text, default=None,
                     help="passes over the data, or 'auto' (default: TransferClassifier's "
                     "max_epochs)")
    fit.add_argument("--batch-size", type=int, default=None,
                     help="images per step (default: TransferClassifier's)")
    fit.add_argument(
        "--augment", choices=["default", "none", "flip", "light"], default="default",
        help="training-time augmentation: 'flip' flips half the images left-right, 'light' "
        "also takes a random 70-100%% crop; 'default' keeps TransferClassifier's",
    )


def _cmd_fit(args, out):
    import numpy as np

    from .classifier import TransferClassifier
    from .datasets import load_image_folder

    given = {"freeze_depth": args.freeze_depth, "lr": args.lr, "momentum": args.momentum,
             "max_epochs": args.epochs, "batch_size": args.batch_size}
    if args.augment != "default":
        given["augment"] = None if args.augment == "none" else args.augment
    clf = TransferClassifier(
        args.backbone,
        weights=args.weights,
        **{k: v for k, v in given.items() if v is not None or k == "augment"},
        input_size=args.input_size,
        device=args.device,
        num_workers=args.num_workers,
        random_state=args.random_state,
        verbose=args.verbose,
    )
    clf._validate_params()  # bad option values: exit status 2, before anything is read
    if not 0 <= args.test_size < 1:
        raise _UsageError(f"--test-size must be a fraction in [0, 1), got {args.test_size}.")
    size = _decode_size(args.backbone, args.input_size)
    skip = args.on_bad_image == "skip"  # then the loader reads every image, held-out ones too
    paths, labels, classes = load_image_folder(
        args.data_dir, on_bad_image="skip" if skip else None, return_classes=True
    )
    counts = {c: int(np.sum(labels == c)) for c in classes}
    print(
        f"{len(paths)} images in {len(classes)} classes: "
        + ", ".join(f"{c} ({n})" for c, n in counts.items()),
        file=out,
    )
    X_train, X_test, y_train, y_test = _split(paths, labels, args)
    if skip:
        clf.fit(X_train, y_train)
    else:
        _fit_checked(clf, size, X_train, y_train, X_test)
    if len(X_test):
        accuracy = clf.score(X_test, y_test)
        print(f"held-out accuracy: {accuracy:.4f} ({len(X_test)} images)", file=out)
    save_model(clf, args.out)
    print(f"model saved to {args.out}", file=out)
    return 0


def _split(paths, labels, args):
    """``(X_train, X_test, y_train, y_test)``: a stratified share --test-size held out."""
    if args.test_size == 0:
        return paths, [], labels, labels[:0]
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(
            paths, labels, test_size=args.test_size, stratify=labels,
            random_state=args.random_state,
        )
    except ValueError as exc:
        raise ValueError(
            f"Cannot hold out a stratified test split of {args.test_size} of "
            f"{len(paths)} images: {exc} Add images, change --test-size, or pass "
            "--test-size 0."
        ) from None


def _image_files(inputs, on_bad_image):
    """The files named, and the image files of the folders named (recursively, sorted)."""
    from ._folders import IMAGE_EXTENSIONS, image_files

    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = image_files(item)
            if not found:
                raise ValueError(
                    f"No image files ({' '.join(IMAGE_EXTENSIONS)}) found in folder {item!r}."
                )
            files += found
        elif os.path.exists(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"No such file or folder: {item!r}.")
    if on_bad_image == "skip":
        from .images import drop_unreadable

        files = drop_unreadable(files)
    return files


def _load(args):
    """The saved model, with --num-workers: the estimators' own validation judges the value
    before the model is read (an InvalidParameterError: exit status 2)."""
    from .classifier import TransferClassifier

    TransferClassifier(num_workers=args.num_workers)._validate_params()
    model = load_model(args.model)
    if args.num_workers and hasattr(model, "num_workers"):
        model.num_workers = args.num_workers
    if getattr(model, "input_spec_", {}).get("decode_size") is None:
        raise ValueError(
            "This model was fitted on arrays, not on image files; the command line needs a "
            "model fitted on files (e.g. by 'sktransfer fit')."
        )
    return model


def _cmd_predict(args, out):
    import numpy as np

    model = _load(args)
    files = _image_files(args.inputs, args.on_bad_image)
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(files)
        best = np.argmax(proba, axis=1)
        header = ["path", "label", "probability"]
        rows = [
            [f, model.classes_[b], f"{p[b]:.6f}"]
            for f, b, p in zip(files, best, proba, strict=True)
        ]
    else:
        pred = np.asarray(model.predict(files)).reshape(len(files), -1)
        header = ["path"] + (
            ["prediction"] if pred.shape[1] == 1
            else [f"prediction_{j}" for j in range(pred.shape[1])]
        )
        rows = [[f, *(f"{v:.6g}" for v in r)] for f, r in zip(files, pred, strict=True)]
    if args.output:
        with open(args.output, "w", newline="", encoding="utf-8") as fh:
            _write_csv(fh, header, rows)
        print(f"{len(rows)} predictions written to {args.output}", file=out)
    else:
        _write_csv(out, header, rows)
    return 0


def _write_csv(fh, header, rows):
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)


def _cmd_evaluate(args, out):
    from sklearn.metrics import accuracy_score, classification_report

    from .datasets import load_image_folder

    model = _load(args)
    if not hasattr(model, "classes_"):
        raise ValueError("evaluate needs a classifier; this model is a regressor.")
    skip = args.on_bad_image == "skip"
    paths, labels = load_image_folder(args.data_dir, on_bad_image="skip" if skip else None)
    pred = model.predict(paths)
    labels = labels.astype(model.classes_.dtype) if model.classes_.dtype != object else labels
    print(f"accuracy: {accuracy_score(labels, pred):.4f} ({len(paths)} images)", file=out)
    print(classification_report(labels, pred, zero_division=0), file=out)
    if args.plot:
        _plot_confusion(labels, pred, args.plot)
        print(f"confusion matrix written to {args.plot}", file=out)
    return 0


def _plot_confusion(y_true, y_pred, path):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError(
            "--plot needs matplotlib: pip install 'sktransfer[plot]'."
        ) from None
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(set(y_true) | set(y_pred))
    side = max(4.0, 0.6 * n + 2.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot, no global backend change
    ax = fig.subplots()
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, ax=ax, xticks_rotation="vertical", colorbar=True
    )
    fig.savefig(path, dpi=100)


def _cmd_backbones(args, out):
    from .backbones import describe_backbones, get_backbone

    if args.stages:
        bb = get_backbone(args.stages, weights=None)
        size = bb.preprocessing.input_size
        print(
            f"{bb.name}: {len(bb.stage_names)} stages, {bb.input_kind} input"
            + (f", native size {size}" if size else ""),
            file=out,
        )
        for i, name in enumerate(bb.stage_names):
            print(f"  {i:2d}  {name}", file=out)
        return 0
    rows = describe_backbones(args.source)
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'source':<11}  {'weights':<8}  description", file=out)
    for r in rows:
        weights = r["weights"] or "-"
        print(f"{r['name']:<{width}}  {r['source']:<11}  {weights:<8}  {r['description']}",
              file=out)
    print(
        "\nweights: 'offline' = the default pretrained weights are on this machine, "
        "'missing' = they would need a download (or a local file via --weights), "
        "'-' = random initialisation only.",
        file=out,
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None):
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments after the program name.

    Returns
    -------
    status : int
        0 on success, 1 on errors, 2 on usage errors (including option values the estimator
        refuses).

    Examples
    --------
    >>> from sktransfer.cli import main
    >>> main(["backbones", "--stages", "test_cnn"])
    test_cnn: 3 stages, image input
       0  stem
       1  block1
       2  block2
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.handler(args, sys.stdout)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - the command line reports, never crashes
            if args.traceback:
                raise
            if _is_usage_error(exc):
                print(f"sktransfer: error: {' '.join(str(exc).split())}", file=sys.stderr)
                return 2
            print(f"error: {exc}", file=sys.stderr)
            return 1


def _is_usage_error(exc):
    from ._compat import InvalidParameterError

    return isinstance(exc, (InvalidParameterError, _UsageError))
