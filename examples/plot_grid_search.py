"""
======================================================================
Tuning ``freeze_depth``, learning rate and momentum with a grid search
======================================================================

How much of a pretrained network to fine-tune depends on the data, and the best learning rate
depends on how much is fine-tuned. ``freeze_depth``, ``lr`` and ``momentum`` are ordinary
hyperparameters: :class:`~sklearn.model_selection.GridSearchCV` cross-validates them like any
other.
"""

# %%
# Data
# ----
# 30 Fashion-MNIST images per class, 300 in all. Cross-validation uses every image for
# training and for validation in turn, which is what small data sets need.
import matplotlib.pyplot as plt
import numpy as np

from sktransfer.datasets import fetch_fashion_mnist

X, y = fetch_fashion_mnist(subset="train", n_per_class=30, random_state=1, return_X_y=True)
X_test, y_test = fetch_fashion_mnist(
    subset="test", n_per_class=100, random_state=0, return_X_y=True
)

# %%
# The search
# ----------
# Three depths of fine-tuning (the new head alone, and the last one or two stages with it),
# two learning rates, and plain SGD against SGD with momentum: 12 candidates, each fitted on
# 3 folds. The images are resized to 32 pixels and trained for 3 epochs to keep the 36 fits
# quick.
#
# This is cheaper than it looks. The frozen stages' output for each image is computed once and
# shared by all folds and all candidates with the same ``freeze_depth`` (see
# :ref:`caching`), so most of the cost is the few trainable stages.
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from sktransfer import TransferClassifier

param_grid = {
    "freeze_depth": ["all", -1, -2],
    "lr": [0.003, 0.03],
    "momentum": [0.0, 0.9],
}
search = GridSearchCV(
    TransferClassifier("efficientnet_lite0", input_size=32, max_epochs=3, random_state=0),
    param_grid,
    cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0),
    scoring="accuracy",
)
search.fit(X, y)
print(f"best parameters: {search.best_params_}")
print(f"best cross-validated accuracy: {search.best_score_:.3f}")
print(f"test accuracy of the refitted best model: {search.score(X_test, y_test):.3f}")

# %%
# Scores per freeze depth
# -----------------------
# One heatmap per ``freeze_depth``: learning rate across, momentum down, mean accuracy over the
# folds in each cell, on one colour scale. Read the panels against each other: which depth
# wins, and whether its best cell sits at the same learning rate as the other depths' best
# cells. Momentum acts like a larger learning rate (steps on a steady gradient grow to
# ``lr / (1 - momentum)``), so ``lr=0.003`` with ``momentum=0.9`` behaves more like
# ``lr=0.03`` without momentum than like ``lr=0.003`` without it: the two must be tuned
# together.
results = search.cv_results_
scores = results["mean_test_score"]
lrs, momenta, depths = param_grid["lr"], param_grid["momentum"], param_grid["freeze_depth"]


def cv_score(depth, lr, momentum):
    for params, score in zip(results["params"], scores):
        if params == {"freeze_depth": depth, "lr": lr, "momentum": momentum}:
            return score


fig, axes = plt.subplots(1, len(depths), figsize=(11, 3.2), sharey=True, layout="constrained")
for ax, depth in zip(axes, depths):
    grid = np.array([[cv_score(depth, lr, m) for lr in lrs] for m in momenta])
    image = ax.imshow(grid, cmap="viridis", vmin=scores.min(), vmax=scores.max())
    for (i, j), score in np.ndenumerate(grid):
        dark = score < (scores.min() + scores.max()) / 2
        ax.text(j, i, f"{score:.2f}", ha="center", va="center", color="w" if dark else "k")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_yticks(range(len(momenta)), [f"{m:g}" for m in momenta])
    ax.set_xlabel("lr")
    ax.set_title(f"freeze_depth={depth!r}")
axes[0].set_ylabel("momentum")
fig.colorbar(image, ax=axes, label="mean CV accuracy", shrink=0.8)

# %%
# The ranking
# -----------
# The five best candidates, with the spread of their scores over the folds. Differences smaller
# than that spread are not to be trusted; with few images, they are common.
print("rank  freeze_depth     lr  momentum  accuracy")
for i in np.argsort(results["rank_test_score"])[:5]:
    p = results["params"][i]
    print(
        f"{results['rank_test_score'][i]:4d}  {p['freeze_depth']!r:>12}  {p['lr']:5g}  "
        f"{p['momentum']:8g}  {scores[i]:.3f} +/- {results['std_test_score'][i]:.3f}"
    )
