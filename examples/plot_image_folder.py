"""
===================================
Training on a folder of image files
===================================

Real projects rarely start from a NumPy array: they start from a folder of photos sorted into
one sub-folder per class. This example writes such a folder, lists it with
:func:`~sktransfer.datasets.load_image_folder`, and trains on the file paths directly: the
estimator opens, converts and resizes the images batch by batch, so the folder never has to fit
in memory.
"""

# %%
# A folder of images, one sub-folder per class
# --------------------------------------------
# We cut scikit-image's photos of bricks, grass and gravel into 96x96 patches and save them as
# files: PNG for two classes, JPEG for the third, as a real folder would mix them::
#
#     textures/
#         brick/  brick_000.png  brick_001.png  ...
#         grass/  grass_000.png  ...
#         gravel/ gravel_000.jpg ...
#
# With your own images you would start at the next step.
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

from sktransfer.datasets import load_textures

textures = load_textures(patch_size=96, stride=104)
root = Path(tempfile.mkdtemp()) / "textures"
for i, (patch, label) in enumerate(zip(textures.data, textures.target)):
    name = textures.target_names[label]
    suffix = ".jpg" if name == "gravel" else ".png"
    (root / name).mkdir(parents=True, exist_ok=True)
    Image.fromarray(patch).save(root / name / f"{name}_{i:03d}{suffix}")

# %%
# List the files
# --------------
# :func:`~sktransfer.datasets.load_image_folder` follows torchvision's ``ImageFolder``
# convention: each sub-folder is a class. It returns the paths and their labels; nothing is
# read yet.
from sktransfer.datasets import load_image_folder

paths, labels, classes = load_image_folder(root, return_classes=True)
print(f"{len(paths)} images in classes {classes}")
print([str(Path(p).relative_to(root)) for p in paths[:3]])

# %%
# Train on the paths
# ------------------
# A list of paths is a valid ``X``: it can be split, cross-validated and grid-searched like an
# array. ``input_size`` says what size the images are decoded to (the shorter side is scaled to
# it and the longer one centre-cropped); grayscale files become RGB.
from sklearn.metrics import ConfusionMatrixDisplay
from sklearn.model_selection import train_test_split

from sktransfer import TransferClassifier

paths_train, paths_test, y_train, y_test = train_test_split(
    paths, labels, test_size=0.4, stratify=labels, random_state=0
)
clf = TransferClassifier(
    "efficientnet_lite0", freeze_depth=-2, input_size=64, max_epochs=5, random_state=0
)
clf.fit(paths_train, y_train)
print(f"test accuracy: {clf.score(paths_test, y_test):.3f}")

ConfusionMatrixDisplay.from_estimator(clf, paths_test, y_test, colorbar=False, cmap="Blues")

# %%
# Predict on new files
# --------------------
# ``predict`` takes paths too, decoded exactly as in ``fit``. Here are a few test images with
# their predicted labels.
shown = paths_test[:6]
predicted = clf.predict(shown)
fig, axes = plt.subplots(1, len(shown), figsize=(10, 2.2), layout="constrained")
for ax, path, label in zip(axes, shown, predicted):
    ax.imshow(Image.open(path), cmap="gray")
    ax.set_title(f"{Path(path).name}\n-> {label}", fontsize=8)
    ax.set_axis_off()

# %%
# Unreadable files
# ----------------
# ``fit`` reads every file once before training, and reports every file it cannot read in one
# error, instead of failing in the middle of an epoch.
broken = root / "brick" / "broken.png"
broken.write_bytes(b"not an image")
paths, labels = load_image_folder(root)
try:
    clf.fit(paths, labels)
except ValueError as exc:
    print(f"ValueError: {exc}")

# %%
# To train without them, leave them out where the data is loaded, so that the samples and
# labels the estimator sees are the ones you pass it: ``on_bad_image="skip"`` drops them, with
# a warning naming each (:func:`~sktransfer.images.drop_unreadable` does the same for a list of
# paths you hold).
import warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    paths, labels = load_image_folder(root, on_bad_image="skip")
print(*(str(w.message) for w in caught), sep="\n")
print(f"{len(paths)} images left")
