"""
==========================================
Pretraining on your own data (stage one)
==========================================

Pretrained ImageNet weights are a stage one that someone else ran. When you hold the data for a
stage one of your own, sktransfer runs it and hands the result to fine-tuning through
``weights=``:

* a **labeled data set of a related task**: fit a classifier on it, save it, and start the
  next task from its backbone;
* **unlabeled images**: pretrain the backbone without labels with
  :class:`~sktransfer.pretraining.ContrastivePretrainer` (or
  :class:`~sktransfer.pretraining.AutoencoderPretrainer`).

Both on Fashion-MNIST, with a small CNN small enough to train from scratch on a CPU in seconds.
See :ref:`pretraining` for when each one helps and what it costs.
"""

# %%
# A small CNN
# -----------
# Four stages of 3x3 convolution, BatchNorm and ReLU on the 28 x 28 grayscale images as they
# are; registered under a name so that ``weights=`` folders know which backbone they hold.
from collections import OrderedDict

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

import sktransfer
from sktransfer import TransferClassifier, TransferFeatures
from sktransfer.datasets import fetch_fashion_mnist
from sktransfer.pretraining import ContrastivePretrainer


def small_cnn():
    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                nn.ReLU()]

    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(*block(1, 16, 1)),
        stage1=nn.Sequential(*block(16, 32, 2)),
        stage2=nn.Sequential(*block(32, 64, 2)),
        stage3=nn.Sequential(*block(64, 128, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)),
    ))


sktransfer.register_backbone("small_cnn", small_cnn, in_channels=1, mean=(0.5,), std=(0.5,),
                             overwrite=True)

X_all, y_all = fetch_fashion_mnist(subset="train", return_X_y=True)
X_test_all, y_test_all = fetch_fashion_mnist(subset="test", return_X_y=True)
rng = np.random.RandomState(0)
print("classes:", fetch_fashion_mnist(subset="test", n_per_class=1).target_names)

# %%
# Supervised pretraining on a related task, then transfer
# -------------------------------------------------------
# The source task: the first five classes (T-shirts, trousers, pullovers, dresses, coats),
# 1,000 labeled images each. The target task: the other five (sandals, shirts, sneakers, bags,
# ankle boots), with 10 labeled images each. ``sktransfer.save`` writes the source model to a
# folder; ``weights=`` that folder starts the target model from its backbone stages, with a new
# head for the new classes.
import tempfile

source = np.concatenate([rng.permutation(np.flatnonzero(y_all == c))[:1000] for c in range(5)])
target = np.concatenate([rng.permutation(np.flatnonzero(y_all == c))[:10]
                         for c in range(5, 10)])
test = np.flatnonzero(y_test_all >= 5)[:1000]

source_model = TransferClassifier("small_cnn", weights=None, freeze_depth=0, optimizer="adamw",
                                  lr=1e-3, max_epochs=2, batch_size=64, random_state=0)
source_model.fit(X_all[source], y_all[source])
folder = sktransfer.save(source_model, tempfile.mkdtemp() + "/source.skt")

fine_tune = dict(freeze_depth=0, lr=0.01, max_epochs=30, random_state=0)
transfer = {}
for name, weights in [("random init", None), ("pretrained on classes 0-4", folder)]:
    clf = TransferClassifier("small_cnn", weights=weights, **fine_tune)
    transfer[name] = clf.fit(X_all[target], y_all[target]).score(X_test_all[test],
                                                                  y_test_all[test])
    print(f"{name:28s} test accuracy {transfer[name]:.3f}")

# %%
# Fifty labeled images are few to learn features from: the same network, trained the same
# way, does better when its stages start from a related task (the two accuracies above; the
# benchmark measures the gain over three seeds, with the ceiling of this task). The folder holds a
# fitted classifier (``sktransfer.load`` gives it back); ``weights=`` took its stages and left
# its head behind:
print(clf.weights_)

# %%
# Self-supervised pretraining on unlabeled images
# -----------------------------------------------
# Now no labels at all for stage one: 3,000 unlabeled images of all ten classes. The
# contrastive pretrainer shows the network two random views of each image (crops, flips,
# brightness and contrast) and teaches it to tell which views come from the same image.
unlabeled = rng.permutation(len(X_all))[:3000]
pretrainer = ContrastivePretrainer("small_cnn", weights=None, max_epochs=6, batch_size=64,
                                   random_state=0)
pretrainer.fit(X_all[unlabeled])
ssl_folder = pretrainer.save_weights(tempfile.mkdtemp() + "/ssl.skt")

# %%
# How good are the embeddings? A linear probe answers: logistic regression on the features of
# 10 labeled images per class, scored on 1,000 test images. ``TransferFeatures`` loads the
# pretrained backbone from the folder (and never trains it), so the probe is a pipeline.
labeled = np.concatenate([rng.permutation(np.flatnonzero(y_all == c))[:10] for c in range(10)])
X_lab, y_lab = X_all[labeled], y_all[labeled]
X_test, y_test = X_test_all[:1000], y_test_all[:1000]


def probe(weights):
    features = TransferFeatures("small_cnn", weights=weights, cache=False)
    model = make_pipeline(features, StandardScaler(), LogisticRegression(max_iter=2000))
    return model.fit(X_lab, y_lab).score(X_test, y_test)


pixels = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
probes = {
    "raw pixels": pixels.fit(X_lab.reshape(100, -1) / 255, y_lab).score(
        X_test.reshape(1000, -1) / 255, y_test),
    "random network": probe(None),
    "contrastive pretraining": probe(ssl_folder),
}
for name, score in probes.items():
    print(f"linear probe on {name:24s} {score:.3f}")

# %%
# The plots: the supervised transfer, the contrastive loss per epoch, the linear probes.
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), layout="constrained")
axes[0].bar(list(transfer), list(transfer.values()), color=["C7", "C0"])
axes[0].set_title("classes 5-9 from 10 images each")
axes[0].set_ylabel("test accuracy")
axes[0].set_ylim(0, 1)
axes[1].plot([row["epoch"] for row in pretrainer.history_],
             [row["train_loss"] for row in pretrainer.history_], marker="o")
axes[1].set_title("contrastive pretraining")
axes[1].set_xlabel("epoch")
axes[1].set_ylabel("NT-Xent loss")
axes[2].bar(list(probes), list(probes.values()), color=["C7", "C7", "C0"])
axes[2].set_title("linear probe, 10 images per class")
axes[2].set_ylim(0, 1)
for ax in (axes[0], axes[2]):
    ax.tick_params(axis="x", labelsize=8)
    for i, v in enumerate(ax.containers[0].datavalues):
        ax.text(i, v + 0.02, f"{v:.2f}", ha="center")

# %%
# Six epochs on 3,000 images is a short stage one: the contrastive features already separate
# the classes far better than the same network's random features, yet a linear model on the
# raw pixels is a strong baseline on images this simple. Self-supervised pretraining pays
# with more images and more epochs, and where pixels are not already good features; the
# benchmark (``benchmarks/bench_pretraining.py``) measures it on 10,000 images, and
# :ref:`pretraining` says when each kind of stage one is worth its cost.
#
# In one estimator, with ``y = -1`` on the unlabeled rows (scikit-learn's convention for
# semi-supervised data), both stages run in ``fit``::
#
#     clf = TransferClassifier("small_cnn", weights=None, unlabeled="contrastive")
#     clf.fit(X, y)   # contrastive pretraining on every row, fine-tuning on the labeled ones
