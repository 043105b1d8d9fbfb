"""
=====================================================
Adapting to unlabeled images of another domain
=====================================================

Labeled handwritten digits from one source (MNIST, 28 x 28) and unlabeled digits from another
(scikit-learn's optdigits: 8 x 8 scans with 17 grey levels, scaled up): a model fitted on the
first loses accuracy on the second. Passing the unlabeled images in ``fit`` with ``y = -1``
adapts the model to them: ``unlabeled="adabn"`` recomputes the BatchNorm statistics of the
trained stages on them, ``unlabeled="mcc"`` also trains on them (Minimum Class Confusion), at a
strength chosen without a single target label. See :ref:`domain-adaptation`.
"""

# %%
# Two domains
# -----------
# Both as 28 x 28 RGB uint8 images; the target domain's labels are kept aside, only to score.
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits

from sktransfer import TransferClassifier
from sktransfer.adaptation import PredictionEntropyScorer, merge_domains
from sktransfer.datasets import load_mnist_5k
from sktransfer.inspection import EmbeddingDisplay

rng = np.random.RandomState(0)
X_mnist, y_mnist = load_mnist_5k(return_X_y=True)
rows = rng.permutation(len(X_mnist))[:100]
X_source = np.repeat(X_mnist[rows].reshape(-1, 28, 28, 1).astype(np.uint8), 3, axis=-1)
y_source = y_mnist[rows]

digits = load_digits()
small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
big = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear", antialias=True)
X_opt = np.repeat((big[:, 0].clamp(0, 1) * 255).numpy().astype(np.uint8)[..., None], 3, -1)
order = rng.permutation(len(X_opt))
X_target, X_test, y_test = X_opt[order[:100]], X_opt[order[100:400]], digits.target[order[100:400]]

X, y, sample_domain = merge_domains(X_source, y_source, X_target)
print(f"{int((y == -1).sum())} unlabeled target rows beside {int((y >= 0).sum())} labeled")

# %%
# Source only, then adapted
# -------------------------
# The same estimator on the labeled rows alone, then with the target rows: ``"adabn"``, and
# ``"mcc"`` at two strengths. The prediction entropy scorer reads the target images, never
# their labels, and picks the strength; the target test labels only report the outcome.
params = dict(freeze_depth=-3, max_epochs=4, random_state=0)
source_only = TransferClassifier(**params).fit(X_source, y_source)
entropy = PredictionEntropyScorer()
fits = {"AdaBN": TransferClassifier(unlabeled="adabn", **params).fit(X, y)}
for weight in (0.5, 2.0):
    clf = TransferClassifier(unlabeled="mcc", unlabeled_weight=weight, **params).fit(X, y)
    fits[f"MCC {weight}"] = clf
for name, clf in [("source only", source_only), *fits.items()]:
    print(f"{name:12s} target accuracy {clf.score(X_test, y_test):.3f}, "
          f"prediction entropy score {entropy(clf, X, y):.3f}")
# The entropy ranks the strengths of one method; it is no judge between methods, nor of
# whether to adapt at all: a model can be confidently wrong on the target images (compare
# the source-only model's score with its accuracy).
picked = max(["MCC 0.5", "MCC 2.0"], key=lambda name: entropy(fits[name], X, y))
adapted = fits[picked]
print(f"the entropy scorer picks {picked}")

# %%
# The features, coloured by domain
# --------------------------------
# :class:`~sktransfer.inspection.EmbeddingDisplay` colours by any labels: here the domain of
# each image. Where the two clouds stay apart, the head trained on one guesses on the other.
# The adapted model's BatchNorm statistics are the target's, so in its features the target
# images are the ones in their usual place, and the source images are the ones that moved.
domain = np.where(y == -1, "target (optdigits)", "source (MNIST)")
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
for ax, (name, clf) in zip(axes, [("source only", source_only), (picked, adapted)]):
    EmbeddingDisplay.from_estimator(clf, X, domain, random_state=0, ax=ax)
    ax.set_title(f"{name}: backbone features")
fig.tight_layout()
plt.show()
