"""
=================================
The training recipe, step by step
=================================

With little data, *how* a pretrained network is fine-tuned matters as much as which network.
:class:`~sktransfer.TransferClassifier` exposes the parts of the recipe as hyperparameters:

* ``lr_schedule``: a constant rate, cosine decay after a warm-up, or fastai's one-cycle;
* ``layer_decay``: lower learning rates for stages further from the head;
* ``head_init="linear_probe"``: start the new head from a logistic regression on the frozen
  features (LP-FT);
* ``label_smoothing``, ``l2_sp`` (pull the weights towards the pretrained ones), ``augment``;
* ``lr="auto"``: a learning-rate range test chooses the rate.

Here we look at the schedules and the range test on Fashion-MNIST, then compare the plain
recipe with the defaults. (``benchmarks/bench_recipe.py`` measures each part on three data sets
and three seeds.)
"""

# %%
# Learning-rate schedules
# -----------------------
# A skorch callback can watch the optimiser: this one records the rate and momentum of the
# head's parameter group before every training batch.
import matplotlib.pyplot as plt
from skorch.callbacks import Callback

from sktransfer import TransferClassifier
from sktransfer.datasets import fetch_fashion_mnist
from sktransfer.plotting import plot_lr_range_test

X, y = fetch_fashion_mnist(n_per_class=20, random_state=0, return_X_y=True)
X_test, y_test = fetch_fashion_mnist(subset="test", n_per_class=30, random_state=0,
                                     return_X_y=True)


class RecordRate(Callback):
    def on_train_begin(self, net, **kwargs):
        self.lr, self.momentum = [], []

    def on_batch_begin(self, net, training=None, **kwargs):
        if training:
            group = net.optimizer_.param_groups[-1]
            self.lr.append(group["lr"])
            self.momentum.append(group["momentum"])


fig, (ax_lr, ax_mom) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
for schedule in ["constant", "cosine", "onecycle"]:
    record = RecordRate()
    TransferClassifier("efficientnet_lite0", input_size=32, freeze_depth="all", lr=0.05,
                       head_init="random", lr_schedule=schedule, max_epochs=5, random_state=0,
                       callbacks=[("record", record)]).fit(X, y)
    ax_lr.plot(record.lr, label=schedule)
    ax_mom.plot(record.momentum, label=schedule)
ax_lr.set(xlabel="training step", ylabel="learning rate", title="lr (peak 0.05)")
ax_mom.set(xlabel="training step", ylabel="momentum", title="momentum")
ax_lr.legend()

# %%
# Cosine decay warms up linearly over the first 10 % of the steps, then falls to 0. One-cycle
# climbs from ``lr / 25`` to ``lr`` over the first quarter while the momentum falls from its
# value to 0.85/0.95 of it, then anneals both back: large steps in the middle, small ones at
# the end, when the weights settle.
#
# The learning-rate range test
# ----------------------------
# ``lr="auto"`` trains a copy of the network for up to 100 batches while the rate grows from
# 1e-7 to 10, and picks the rate where the smoothed loss falls fastest. The fit then starts
# from the pretrained weights and a fresh head, as with a rate given by hand; the test's curve
# is kept in ``lr_range_test_``.
auto = TransferClassifier("efficientnet_lite0", input_size=32, lr="auto", max_epochs=5,
                          freeze_depth=-3, random_state=0).fit(X, y)
ax = plot_lr_range_test(auto)
ax.set_title(f"range test: {len(auto.lr_range_test_['lr'])} steps")
print(f"chosen lr_ = {auto.lr_:.3g}, test accuracy {auto.score(X_test, y_test):.3f}")

# %%
# The plain recipe and the defaults
# ---------------------------------
# The plain recipe of the design document: one constant rate for every trained stage and a
# randomly initialised head. Against the defaults, on the same 200 images (at 32 pixels here,
# to keep this page quick to build; the benchmark uses 64):
plain = TransferClassifier("efficientnet_lite0", input_size=32, freeze_depth=-1, lr=0.01,
                           lr_schedule="constant", layer_decay=1.0, head_init="random",
                           label_smoothing=0.0, l2_sp=0.0, augment=None, max_epochs=5,
                           random_state=0).fit(X, y)
default = TransferClassifier("efficientnet_lite0", input_size=32, max_epochs=5,
                             random_state=0).fit(X, y)
print(f"plain recipe: {plain.score(X_test, y_test):.3f}   "
      f"defaults: {default.score(X_test, y_test):.3f}")

# %%
# With 20 images per class the defaults are the linear probe on the frozen features
# (``freeze_depth_="all"``, no epoch: see "How much data do I need?"). These two numbers move
# by several points from seed to seed; the benchmark averages over three seeds and three data
# sets before it concludes.
