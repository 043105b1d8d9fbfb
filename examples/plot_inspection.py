"""
===============================
Why did it predict that?
===============================

A fine-tuned network is a black box. :mod:`sktransfer.inspection` opens it a little, in the
style of scikit-learn's displays:

* :class:`~sktransfer.inspection.SaliencyDisplay` overlays *saliency maps*: where in each image
  the evidence for the prediction lies (Grad-CAM or occlusion, computed by Captum);
* :class:`~sktransfer.inspection.TopLossesDisplay` shows the images the model gets most wrong
  and counts the classes it confuses, as fastai's ``plot_top_losses`` and ``most_confused``;
* :class:`~sktransfer.inspection.EmbeddingDisplay` maps the backbone's features to 2-D, before
  and after fine-tuning.

We first check the maps on real photos where we know the answer, then look at a model
fine-tuned on Fashion-MNIST.
"""

# %%
# A task whose evidence we know
# -----------------------------
# scikit-learn ships two photos, a Chinese palace and a flower. We cut 64x64 pieces of the
# palace, and into half of them we paste a 24x24 piece of the flower, in a random quadrant. The
# class says whether there is a flower: the only evidence is the pasted piece. A linear probe
# on EfficientNet-Lite0's ImageNet features (``freeze_depth="all"``) learns it in seconds.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_sample_images

from sktransfer import TransferClassifier

china, flower = load_sample_images().images
rng = np.random.RandomState(0)


def collage(n):
    X = np.empty((n, 64, 64, 3), dtype=np.uint8)
    y = np.array(["palace", "flower"] * (n // 2))
    where = np.full(n, -1)
    for i in range(n):
        r, c = rng.randint(0, china.shape[0] - 64), rng.randint(0, china.shape[1] - 64)
        X[i] = china[r:r + 64, c:c + 64]
        if y[i] == "flower":
            where[i] = rng.randint(4)
            top, left = 32 * (where[i] // 2) + 4, 32 * (where[i] % 2) + 4
            fr, fc = rng.randint(150, 300), rng.randint(250, 450)
            X[i, top:top + 24, left:left + 24] = flower[fr:fr + 24, fc:fc + 24]
    return X, y, where


X_photo, y_photo, _ = collage(160)
X_new, y_new, quadrant = collage(40)
probe = TransferClassifier(
    "efficientnet_lite0", freeze_depth="all", input_size=64, max_epochs=6, random_state=0
).fit(X_photo, y_photo)
print(f"accuracy on new collages: {probe.score(X_new, y_new):.2f}")

# %%
# Where does the probe look? :meth:`SaliencyDisplay.from_estimator
# <sktransfer.inspection.SaliencyDisplay.from_estimator>` explains the predicted class of each
# image. At 64 pixels, EfficientNet-Lite0's last stages are 2x2 grids: each cell sees nearly the
# whole image, and Grad-CAM on them cannot say where anything is (sktransfer warns). One stage
# earlier, ``"group5"`` is a 4x4 grid, and its maps find the pasted flower. Occlusion, which
# blanks out windows of the image and needs no gradient, finds it in some images only: where a
# 16-pixel window hides too little of the 24-pixel piece, the output hardly drops (the last
# image gets an empty map).
import warnings

from sktransfer.inspection import SaliencyDisplay

shown = np.flatnonzero(y_new == "flower")[:6]
fig, axes = plt.subplots(3, 6, figsize=(11, 6.4), layout="constrained")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    SaliencyDisplay.from_estimator(probe, X_new[shown], y_new[shown], ax=axes[0])
print(caught[0].message)
SaliencyDisplay.from_estimator(probe, X_new[shown], y_new[shown], layer="group5", ax=axes[1])
SaliencyDisplay.from_estimator(probe, X_new[shown], y_new[shown], method="occlusion",
                               ax=axes[2])
for row, label in zip(axes[:, 0], ["last stage (2x2)", 'layer="group5"', "occlusion"]):
    row.text(-0.1, 0.5, label, rotation=90, va="center", ha="right",
             transform=row.transAxes)

# %%
# A map is a claim, so we test it: the share of each ``layer="group5"`` map's mass in the
# quadrant that holds the flower, for the correctly classified flower images. Evenly spread maps
# would score 0.25. The sanity check of Adebayo et al. (2018) then redraws the trained head at
# random: maps that still pointed at the flower would be showing the image, not the model.
import copy

import torch

from sktransfer.inspection import saliency_maps


def mass_in_quadrant(maps, q):
    h = maps.shape[1] // 2
    parts = [maps[i, (q[i] // 2) * h:(q[i] // 2 + 1) * h, (q[i] % 2) * h:(q[i] % 2 + 1) * h]
             for i in range(len(maps))]
    return np.mean([p.sum() / max(m.sum(), 1e-12) for p, m in zip(parts, maps)])


right = np.flatnonzero((y_new == "flower") & (probe.predict(X_new) == "flower"))
randomised = copy.deepcopy(probe)
torch.manual_seed(0)
randomised.module_.head.reset_parameters()
maps = saliency_maps(probe, X_new[right], layer="group5")
random_maps = saliency_maps(randomised, X_new[right], target="flower", layer="group5")
print(f"share of the map in the flower's quadrant ({len(right)} images): "
      f"trained head {mass_in_quadrant(maps, quadrant[right]):.2f}, "
      f"random head {mass_in_quadrant(random_maps, quadrant[right]):.2f}")

# %%
# Fine-tuning on Fashion-MNIST
# ----------------------------
# Now a real task: 30 training images for each of the ten Fashion-MNIST classes, the last stage
# of the network fine-tuned (see :ref:`sphx_glr_auto_examples_plot_quickstart.py`). Labels are
# class names, so that the displays can print them.
from sktransfer.datasets import fetch_fashion_mnist

train = fetch_fashion_mnist(subset="train", n_per_class=30, random_state=0)
test = fetch_fashion_mnist(subset="test", n_per_class=20, random_state=0)
names = np.asarray(train.target_names)
X_train, y_train = train.data, names[train.target]
X_test, y_test = test.data, names[test.target]
clf = TransferClassifier(
    "efficientnet_lite0", freeze_depth=-1, input_size=64, max_epochs=6, random_state=0
).fit(X_train, y_train)
print(f"test accuracy: {clf.score(X_test, y_test):.3f}")

# %%
# The images it gets most wrong
# -----------------------------
# :meth:`TopLossesDisplay.from_estimator
# <sktransfer.inspection.TopLossesDisplay.from_estimator>` ranks the test images by their loss,
# the cross-entropy of their true class: first the confident mistakes. Each title reads
# ``prediction / actual`` and ``loss / probability of the prediction``; the overlay shows what
# the network saw in the class it chose.
from sktransfer.inspection import TopLossesDisplay

top = TopLossesDisplay.from_estimator(clf, X_test, y_test, k=10, saliency=True,
                                      layer="group5", n_cols=5)

# %%
# :meth:`~sktransfer.inspection.TopLossesDisplay.most_confused` counts the pairs (true class,
# predicted class) over the whole test set, most frequent first. Tops are taken for other tops
# (coats, pullovers, shirts, T-shirts) and shoes for other shoes, as people do at 28 pixels.
for true, predicted, count in top.most_confused(min_val=2):
    print(f"{count:2d} x {true:>11s} predicted as {predicted}")

# %%
# Features before and after fine-tuning
# -------------------------------------
# :meth:`EmbeddingDisplay.from_estimator
# <sktransfer.inspection.EmbeddingDisplay.from_estimator>` maps the features that feed the
# head to 2-D (their first two principal components; ``method="tsne"`` draws neighbourhoods
# instead, more slowly): on the left those of the pretrained network, on the right those of the
# fine-tuned one, for the same test images. The silhouette score, computed on the features
# themselves, measures how well the classes sit apart.
from sktransfer.inspection import EmbeddingDisplay

fig, (left, right_ax) = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
EmbeddingDisplay.from_estimator(clf, X_test, y_test, features="pretrained", ax=left)
after = EmbeddingDisplay.from_estimator(clf, X_test, y_test, ax=right_ax)
left.get_legend().remove()
after.ax_.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))

# %%
# Trousers and the shoes stand apart already in the pretrained features. After fine-tuning,
# the points stretch along a few directions, those the new head reads: trousers one way,
# ankle boots another, tops a third. Shirts, pullovers and coats still share one cloud, the
# confusions counted above. The clusters did not get tighter (the silhouette scores stay near
# zero): a linear head needs classes it can cut apart with planes, not compact clusters, and
# 30 images per class do not reshape the network much.

# %%
# What the maps cannot tell
# -------------------------
# A saliency map shows where the evidence for one output lies, at the resolution of the layer
# it reads; it does not say *what* the network recognised there, nor whether that is the right
# reason. Maps from a network that fits its task well can still point at a watermark or a
# background that happens to go with a class: they reveal such shortcuts, they do not rule them
# out. The user guide (:ref:`inspection`) says more.
