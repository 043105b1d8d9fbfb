"""
=============================================
Regression: how far is a brick wall rotated?
=============================================

:class:`~sktransfer.TransferRegressor` fine-tunes a pretrained network to predict a number. Here
the number is the angle by which a patch of a brick wall photo is rotated, between -30 and +30
degrees. ImageNet's classes say nothing about angles, but the network's features respond to
oriented edges and textures, which is what the new regression head needs.
"""

# %%
# Rotated patches of a real photo
# -------------------------------
# ``skimage.data.brick()`` is a 512x512 grayscale photo of a brick wall. We halve its
# resolution, so that a patch holds several bricks, then cut 64x64 patches at random places,
# each rotated by a random angle: a slightly larger square is rotated and its centre cropped,
# so no patch has empty corners. Each patch's angle is its target.
import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage
from skimage import data, transform

wall = transform.rescale(data.brick(), 0.5, anti_aliasing=True)  # float in [0, 1]


def rotated_patches(n, size=64, max_angle=30.0, seed=0):
    rng = np.random.RandomState(seed)
    big = int(np.ceil(size * np.sqrt(2))) + 2  # large enough for any rotation
    offset = (big - size) // 2
    angles = rng.uniform(-max_angle, max_angle, n)
    X = np.empty((n, size, size), dtype=np.uint8)
    for i, angle in enumerate(angles):
        r, c = rng.randint(0, wall.shape[0] - big, size=2)
        rotated = ndimage.rotate(wall[r : r + big, c : c + big], angle, reshape=False, order=1)
        centre = rotated[offset : offset + size, offset : offset + size]
        X[i] = np.round(255 * np.clip(centre, 0, 1))
    return X, angles


X_train, y_train = rotated_patches(240, seed=0)
X_test, y_test = rotated_patches(160, seed=1)

fig, axes = plt.subplots(1, 8, figsize=(10, 1.9), layout="constrained")
for ax, image, angle in zip(axes, X_train, y_train):
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    ax.set_title(f"{angle:+.0f}°")
    ax.set_axis_off()

# %%
# Fine-tune a regressor
# ---------------------
# The regressor's head has one output, trained on mean squared error. The targets are
# standardised inside the estimator, so the learning rate suits degrees as it would suit
# radians. The last four stages are trained: orientation is a property of mid-level features
# that the last, most ImageNet-specific stages must learn to read out.
from sktransfer import TransferRegressor

reg = TransferRegressor(
    "efficientnet_lite0",
    freeze_depth=-4,
    lr=0.01,
    max_epochs=8,
    random_state=0,
)
reg.fit(X_train, y_train)
y_pred = reg.predict(X_test)
mae = np.mean(np.abs(y_pred - y_test))
print(f"R^2 on the test patches: {reg.score(X_test, y_test):.3f}")
print(f"mean absolute error: {mae:.1f} degrees")

# %%
# Predicted against true angles
# -----------------------------
# Points on the diagonal are exact predictions. Guessing the mean angle for every patch would
# give a mean absolute error of about 15 degrees and an :math:`R^2` of 0.
fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
ax.scatter(y_test, y_pred, s=12, alpha=0.7)
ax.plot([-30, 30], [-30, 30], color="k", linewidth=1, linestyle="--")
ax.set_xlabel("true angle (degrees)")
ax.set_ylabel("predicted angle (degrees)")
ax.set_title(f"Test patches, mean absolute error {mae:.1f}°")
ax.set_aspect("equal")

# %%
# Learning curves
# ---------------
# The regressor's losses are on the standardised targets: 1.0 is the error of always predicting
# the mean.
from sktransfer.plotting import plot_learning_curves

plot_learning_curves(reg).set_title("Training loss (standardised targets)")
