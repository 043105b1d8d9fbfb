"""
============================
Linear probe or fine-tuning?
============================

The two classic ways to reuse a pretrained network:

* the **linear probe** keeps the whole network frozen and fits a linear model on its features:
  a :class:`~sklearn.pipeline.Pipeline` of :class:`~sktransfer.TransferFeatures` and
  :class:`~sklearn.linear_model.LogisticRegression`;
* **fine-tuning** trains a new head together with the last stages of the network:
  :class:`~sktransfer.TransferClassifier`.

We compare them on Fashion-MNIST, grayscale product photos that look nothing like ImageNet's,
against a logistic regression on the raw pixels, and ask which of the network's stages a linear
probe should read.
"""

# %%
# Which stage to probe?
# ---------------------
# ``TransferFeatures(stage=...)`` returns the globally averaged output of any stage, not only
# the last. We fit the same linear probe on several stages, with 30 training images per class,
# and score it on 500 test images. The images are resized to 64 pixels inside the network.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sktransfer import TransferClassifier, TransferFeatures
from sktransfer.datasets import fetch_fashion_mnist

X_test, y_test = fetch_fashion_mnist(
    subset="test", n_per_class=50, random_state=0, return_X_y=True
)
X, y = fetch_fashion_mnist(n_per_class=30, random_state=0, return_X_y=True)


def linear_probe(stage):
    return Pipeline(
        [
            ("features", TransferFeatures("efficientnet_lite0", stage=stage, input_size=64)),
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(C=0.1, max_iter=2000)),
        ]
    )


stages = ["group3", "group5", "group7", "head"]
stage_accuracy = []
for stage in stages:
    probe = linear_probe(stage).fit(X, y)
    stage_accuracy.append(probe.score(X_test, y_test))
    n_features = probe.named_steps["features"].n_features_out_
    print(f"{stage:7s} {n_features:5d} features  accuracy {stage_accuracy[-1]:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
ax.bar(stages, stage_accuracy, color="C0")
ax.set_ylim(0, 1)
ax.set_xlabel("stage read by the linear probe (input first)")
ax.set_ylabel("test accuracy")
ax.set_title("Linear probe on each stage, 30 images per class")
for i, score in enumerate(stage_accuracy):
    ax.text(i, score + 0.02, f"{score:.2f}", ha="center")

# %%
# The last stage is not the best one here. Its features are tuned to ImageNet's thousand
# classes of natural photos; the middle stages respond to edges, textures and simple shapes
# that describe a shoe or a shirt just as well. The further a task is from ImageNet, the earlier
# the stage worth reading, and the more of the network worth fine-tuning.
best_stage = stages[int(np.argmax(stage_accuracy))]
print(f"best stage for a linear probe: {best_stage}")

# %%
# Accuracy against the number of training images
# ------------------------------------------------
# Three models, each fitted on 10, 25 and 60 images per class:
#
# * the linear probe on the best stage found above;
# * fine-tuning the last stage of the network with a new head (``freeze_depth=-1``);
# * a logistic regression on the raw pixels.
#
# The networks compute the frozen stages once per image: the activation cache shares them
# between the fits, so each new fit costs little more than its trainable part.
models = {
    f"linear probe ({best_stage})": linear_probe(best_stage),
    "fine-tuning (freeze_depth=-1)": TransferClassifier(
        "efficientnet_lite0", freeze_depth=-1, input_size=64, max_epochs=6, random_state=0
    ),
    "pixels": make_pipeline(
        FunctionTransformer(lambda X: X.reshape(len(X), -1) / 255),
        LogisticRegression(max_iter=2000),
    ),
}
sizes = [10, 25, 60]
accuracy = {name: [] for name in models}
for n_per_class in sizes:
    X, y = fetch_fashion_mnist(n_per_class=n_per_class, random_state=0, return_X_y=True)
    for name, model in models.items():
        accuracy[name].append(model.fit(X, y).score(X_test, y_test))
        print(f"{n_per_class:4d} per class  {name:30s} accuracy {accuracy[name][-1]:.3f}")

fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
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
# What to take from it
# --------------------
# * Centred, aligned 28-pixel product shots are an easy case for a model on raw pixels, and far
#   from ImageNet's photos: a baseline on pixels is worth fitting before anything else.
# * A linear probe is cheap (one pass over the images, then a logistic regression) but only as
#   good as the stage it reads: on this data the middle of the network beats both its last
#   stage and the pixels. Choose the stage like any hyperparameter, e.g. with ``GridSearchCV``
#   over ``features__stage``.
# * Fine-tuning only the last stage starts from the features that transfer worst here, and a
#   few epochs on a few hundred images do not repair them. Training deeper
#   (a larger negative ``freeze_depth``) lets the network adapt its middle stages too;
#   :ref:`sphx_glr_auto_examples_plot_grid_search.py` tunes how much of the network to train.
