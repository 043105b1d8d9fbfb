"""
====================================
Linear probe or fine-tuning?
====================================

The two classic ways to reuse a pretrained network:

* the **linear probe** keeps the whole network frozen and fits a linear model on its features:
  a :class:`~sklearn.pipeline.Pipeline` of :class:`~sktransfer.TransferFeatures` and
  :class:`~sklearn.linear_model.LogisticRegression`;
* **fine-tuning** trains a new head together with the last stages of the network:
  :class:`~sktransfer.TransferClassifier`.

Which is better depends on how many labelled images there are. We compare both, and a logistic
regression on raw pixels, on Fashion-MNIST with 10, 30 and 100 training images per class.
"""

# %%
# The three models
# ----------------
# All three see the same images. The images are resized to 64 pixels inside the networks.
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sktransfer import TransferClassifier, TransferFeatures
from sktransfer.datasets import fetch_fashion_mnist

linear_probe = Pipeline(
    [
        ("features", TransferFeatures("efficientnet_lite0", input_size=64)),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(C=0.1, max_iter=2000)),
    ]
)
fine_tuning = TransferClassifier(
    "efficientnet_lite0", freeze_depth=-3, input_size=64, max_epochs=8, random_state=0
)
pixels = make_pipeline(
    FunctionTransformer(lambda X: X.reshape(len(X), -1) / 255),
    LogisticRegression(max_iter=2000),
)
models = {"linear probe": linear_probe, "fine-tuning": fine_tuning, "pixels": pixels}

# %%
# Accuracy against the number of training images
# ------------------------------------------------
# Each model is fitted on training sets of growing size and scored on the same 1,000 test
# images. The linear probe's features are computed once per image and cached, so its fits
# after the first cost almost nothing but the logistic regression.
X_test, y_test = fetch_fashion_mnist(
    subset="test", n_per_class=100, random_state=0, return_X_y=True
)
sizes = [10, 30, 100]
accuracy = {name: [] for name in models}
fit_time = {name: [] for name in models}
for n_per_class in sizes:
    X, y = fetch_fashion_mnist(n_per_class=n_per_class, random_state=0, return_X_y=True)
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(X, y)
        fit_time[name].append(time.perf_counter() - start)
        accuracy[name].append(model.score(X_test, y_test))
        print(f"{n_per_class:4d} per class  {name:13s} accuracy {accuracy[name][-1]:.3f}")

fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
for (name, scores), marker in zip(accuracy.items(), "osD"):
    ax.plot(sizes, scores, marker=marker, label=name)
ax.set_xscale("log")
ax.set_xticks(sizes, [str(s) for s in sizes])
ax.set_xlabel("training images per class")
ax.set_ylabel("test accuracy")
ax.set_title("Fashion-MNIST, EfficientNet-Lite0 pretrained on ImageNet")
ax.grid(True, alpha=0.3)
ax.legend()

# %%
# With ten images per class, both uses of the pretrained network are far ahead of the
# pixels: ImageNet taught it what shapes and textures look like. The linear probe needs no
# training of the network at all and is the natural first try. As images accumulate,
# fine-tuning pulls ahead: Fashion-MNIST's grayscale product shots are far from ImageNet's
# photos, and adapting the last stages to them pays off once there is data to do it.
#
# The fit times of the largest training set:
for name in models:
    print(f"{name:13s} {fit_time[name][-1]:6.1f} s")

# %%
# Which stage to probe?
# ---------------------
# ``TransferFeatures(stage=...)`` returns the globally pooled output of an earlier stage. A
# linear probe on each stage shows where features useful for this task appear: early stages
# hold generic edges and textures, the last ones features tuned to ImageNet's classes. This is
# the same trade-off that ``freeze_depth`` navigates.
stages = ["group3", "group5", "group6", "group7", "head"]
X, y = fetch_fashion_mnist(n_per_class=30, random_state=0, return_X_y=True)
stage_accuracy = []
for stage in stages:
    linear_probe.set_params(features__stage=stage).fit(X, y)
    stage_accuracy.append(linear_probe.score(X_test, y_test))
    print(f"{stage:7s} {linear_probe[0].n_features_out_:5d} features  "
          f"accuracy {stage_accuracy[-1]:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
ax.bar(stages, stage_accuracy, color="C0")
ax.set_ylim(0, 1)
ax.set_ylabel("test accuracy")
ax.set_title("Linear probe on each stage, 30 images per class")
for i, score in enumerate(stage_accuracy):
    ax.text(i, score + 0.02, f"{score:.2f}", ha="center")
