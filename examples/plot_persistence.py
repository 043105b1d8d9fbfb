"""
=======================================
Saving and loading models, safely
=======================================

A fitted estimator can be stored in two ways:

* with :mod:`pickle` or :mod:`joblib`, like any scikit-learn estimator: convenient, but loading
  a pickle runs code chosen by whoever wrote the file, so only for files you trust;
* with :func:`sktransfer.save` and :func:`sktransfer.load`: a folder holding a JSON file and a
  safetensors file, which can be loaded from anywhere without running any of its content.

See :ref:`persistence` for the details.
"""

# %%
# A model to store
# ----------------
# A face detector on scikit-image's 200 faces and non-faces (25x25 grayscale): a linear probe on
# EfficientNet-Lite0's features, with string labels.
import numpy as np
from sklearn.model_selection import train_test_split

from sktransfer import TransferClassifier
from sktransfer.datasets import load_faces

faces = load_faces()
labels = np.asarray(faces.target_names)[faces.target]  # "face" / "non-face"
X_train, X_test, y_train, y_test = train_test_split(
    faces.data, labels, test_size=0.3, stratify=labels, random_state=0
)
clf = TransferClassifier(
    "efficientnet_lite0", freeze_depth="all", input_size=64, max_epochs=10, random_state=0
)
clf.fit(X_train, y_train)
print(f"classes: {clf.classes_}, test accuracy: {clf.score(X_test, y_test):.3f}")
proba = clf.predict_proba(X_test)

# %%
# joblib, for files you trust
# ---------------------------
# The network travels as arrays and is rebuilt on loading, without downloading anything.
# Predictions are identical.
import tempfile
from pathlib import Path

import joblib

folder = Path(tempfile.mkdtemp())
joblib.dump(clf, folder / "faces.joblib")
restored = joblib.load(folder / "faces.joblib")
print(f"{(folder / 'faces.joblib').stat().st_size / 2**20:.1f} MiB")
print("identical probabilities:", np.array_equal(restored.predict_proba(X_test), proba))

# %%
# The safe format, for files from anywhere
# ----------------------------------------
# :func:`sktransfer.save` writes a folder; :func:`sktransfer.load` reads it back.
import sktransfer

model_dir = sktransfer.save(clf, folder / "faces-model")
print(sorted(p.name for p in model_dir.iterdir()))
loaded = sktransfer.load(model_dir)
print("identical probabilities:", np.array_equal(loaded.predict_proba(X_test), proba))
print(loaded.classes_)

# %%
# ``config.json`` is readable: the versions that wrote it, the estimator's class, its
# hyperparameters, its fitted attributes, and the SHA-256 of the weights file.
import json

config = json.loads((model_dir / "config.json").read_text())
print("sections:", list(config))
print("estimator:", config["estimator"])
print("versions:", config["versions"])
print("weights:", config["weights"])
print("hyperparameters:", {k: config["params"][k] for k in ("backbone", "freeze_depth", "lr")})

# %%
# Tampering is detected
# ---------------------
# ``weights.safetensors`` holds tensors and names, nothing that can execute. Before reading
# it, :func:`sktransfer.load` checks its size and SHA-256 against ``config.json``; then it loads
# every tensor strictly into the rebuilt architecture. A changed byte is enough to refuse the
# folder, and no half-loaded model is returned.
weights = model_dir / "weights.safetensors"
data = bytearray(weights.read_bytes())
data[-1] ^= 0xFF
weights.write_bytes(bytes(data))
try:
    sktransfer.load(model_dir)
except ValueError as exc:
    print(f"ValueError: {exc}")
