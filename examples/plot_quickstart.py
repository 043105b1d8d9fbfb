"""
============================================
Quick start: fine-tune a pretrained network
============================================

Fine-tune EfficientNet-Lite0, pretrained on ImageNet, to recognise the product photos of
Fashion-MNIST from 30 images per class, then look at what it learned: learning curves, accuracy
on a test set and a confusion matrix.
"""

# %%
# The data
# --------
# :func:`~sktransfer.datasets.fetch_fashion_mnist` reads Fashion-MNIST from local files: 28x28
# grayscale photos of clothes, shoes and bags in ten classes. We keep a small, balanced training
# set of 30 images per class, the situation transfer learning is for, and 50 test images per
# class. The images stay ``uint8`` arrays of shape ``(n, 28, 28)``: the estimator reads them as
# grayscale images with values in [0, 255].
import matplotlib.pyplot as plt
import numpy as np

from sktransfer.datasets import fetch_fashion_mnist

train = fetch_fashion_mnist(subset="train", n_per_class=30, random_state=0)
test = fetch_fashion_mnist(subset="test", n_per_class=50, random_state=0)
X_train, y_train = train.data, train.target
X_test, y_test = test.data, test.target
class_names = np.asarray(train.target_names)
print(f"train: {X_train.shape} {X_train.dtype}, test: {X_test.shape}")

fig, axes = plt.subplots(2, 10, figsize=(10, 2.6), layout="constrained")
for label, column in enumerate(axes.T):
    for ax, i in zip(column, np.flatnonzero(y_train == label)):
        ax.imshow(X_train[i], cmap="gray_r")
        ax.set_axis_off()
    column[0].set_title(class_names[label], fontsize=8)

# %%
# Fine-tune
# ---------
# :class:`~sktransfer.TransferClassifier` replaces the network's 1,000-way ImageNet head by a
# new 10-way one and trains it together with the last stages of the network. The grayscale
# images are repeated to RGB and resized to 64x64 pixels inside the network (``input_size``):
# the native 224 pixels would cost twelve times more for little gain on 28-pixel images.
#
# ``freeze_depth=-1`` trains the last of the network's nine stages and keeps the
# first eight frozen. Frozen stages are computed once per image and reused in every epoch, which
# makes this fast even on a CPU. ``early_stopping=True`` holds out 20% of the training images to
# watch the validation loss; it also records the validation accuracy.
from sktransfer import TransferClassifier

clf = TransferClassifier(
    "efficientnet_lite0",
    weights="DEFAULT",
    freeze_depth=-1,
    input_size=64,
    lr=0.01,
    momentum=0.9,
    max_epochs=6,
    early_stopping=True,
    validation_fraction=0.2,
    random_state=0,
)
clf.fit(X_train, y_train)
print(f"stages: {clf.stage_names_}")
print(f"frozen: {clf.n_frozen_stages_} of {len(clf.stage_names_)}, epochs run: {clf.n_iter_}")
print(f"test accuracy: {clf.score(X_test, y_test):.3f}")

# %%
# Learning curves
# ---------------
# :func:`~sktransfer.plotting.plot_learning_curves` draws the training and validation loss of
# each epoch and, on the right axis, the validation accuracy. Training loss falling far below
# a validation loss that stalls is the mark of overfitting: with so few images, training more
# of the network risks making it worse, and more epochs would not help.
from sktransfer.plotting import plot_learning_curves

ax = plot_learning_curves(clf)
ax.set_title("EfficientNet-Lite0 on 300 Fashion-MNIST images")

# %%
# Where it errs
# -------------
# The confusion matrix counts, for each true class (rows), the predicted classes (columns).
# The mistakes are the expected ones: shirts, T-shirts, pullovers and coats look alike at 28
# pixels.
from sklearn.metrics import ConfusionMatrixDisplay

fig, ax = plt.subplots(figsize=(6.5, 6.5), layout="constrained")
ConfusionMatrixDisplay.from_estimator(
    clf,
    X_test,
    y_test,
    display_labels=class_names,
    xticks_rotation="vertical",
    colorbar=False,
    cmap="Blues",
    ax=ax,
)
ax.set_title("Test set, 50 images per class")

# %%
# Next steps
# ----------
# The estimator is an ordinary scikit-learn estimator: it can be cross-validated, put in a
# :class:`~sklearn.pipeline.Pipeline`, tuned with
# :class:`~sklearn.model_selection.GridSearchCV`
# (:ref:`sphx_glr_auto_examples_plot_grid_search.py`) and saved
# (:ref:`sphx_glr_auto_examples_plot_persistence.py`). How it compares with a linear probe and
# with a model on raw pixels is the subject of
# :ref:`sphx_glr_auto_examples_plot_linear_probe_vs_finetuning.py`.
