"""GPU check: sktransfer against a plain PyTorch loop on one CUDA device.

On a machine with CUDA this prints, in under five minutes:

* fit and predict throughput (images/s) of ``TransferClassifier`` fine-tuning all of
  EfficientNet-Lite0 (ImageNet weights) on 224 px images, and of a plain PyTorch loop training
  the same network the same way (SGD with momentum, same batches, same preprocessing on the
  GPU) -- fit throughput is taken from the median epoch, predict throughput from a second,
  warm ``predict_proba``;
* the speed-up of mixed precision (``precision="bfloat16"`` and ``"float16"``) over float32;
* the peak GPU memory of each run (``torch.cuda.max_memory_allocated``);
* that the float32 model fitted on CUDA, pickled and unpickled in a process where CUDA is
  hidden (``CUDA_VISIBLE_DEVICES=""``), predicts on the CPU what it predicted on the GPU within
  1e-5 (largest absolute difference of ``predict_proba``).

Without CUDA it says "No CUDA device: GPU figures not measured", runs the same steps at a tiny
size on the CPU (float16 is left out: it needs CUDA) and exits 0; only a failed reload check
exits 1. The images are synthetic (uint8 RGB with a class-dependent pattern): throughput does
not depend on what they show.

Usage::

    python benchmarks/gpu_check.py           # on the GPU machine
    python benchmarks/gpu_check.py --quick   # seconds, tiny sizes (also what a CPU runs)
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

import sktransfer
from sktransfer import TransferClassifier
from sktransfer.backbones import get_backbone

N_CLASSES = 10
TOLERANCE = 1e-5  # float32 model: CUDA vs CPU kernels differ by rounding only

FULL = dict(size=224, n_train=2048, n_predict=4096, batch_size=64, epochs=3)
TINY = dict(size=32, n_train=8, n_predict=8, batch_size=8, epochs=1)
# the plain recipe, whatever the estimators' defaults (as benchmarks/_common.PLAIN_RECIPE)
PLAIN_RECIPE = dict(lr_schedule="constant", layer_decay=1.0, head_init="random",
                    label_smoothing=0.0, l2_sp=0.0, tta=False)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    return parser.parse_args(argv)


def make_images(n, size, seed=0):
    """uint8 (n, size, size, 3) images whose class shows as a brighter horizontal band."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 160, size=(n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % N_CLASSES
    band = max(1, size // N_CLASSES)
    for c in range(N_CLASSES):
        X[y == c, c * band:(c + 1) * band] += 90
    return X, y.astype(np.int64)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device):
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak(device):
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else None


# -- sktransfer -----------------------------------------------------------------------------------


def estimator(cfg, device, precision, epochs):
    return TransferClassifier(
        "efficientnet_lite0", weights="DEFAULT", freeze_depth=0, lr=0.01, momentum=0.9,
        batch_size=cfg["batch_size"], max_epochs=epochs, cache=False, device=device,
        precision=precision, random_state=0, **PLAIN_RECIPE,
    )


def run_sktransfer(cfg, device, precision, data):
    X, y, X_pred = data
    reset_peak(device)
    clf = estimator(cfg, device, precision, cfg["epochs"]).fit(X, y)
    sync(device)
    epoch = statistics.median(row["dur"] for row in clf.history_)
    clf.predict_proba(X_pred[: cfg["batch_size"]])  # warm
    sync(device)
    start = time.perf_counter()
    proba = clf.predict_proba(X_pred)
    sync(device)
    predict_s = time.perf_counter() - start
    return {
        "fit": len(X) / epoch, "predict": len(X_pred) / predict_s, "peak": peak(device),
        "model": clf, "proba": proba,
    }


# -- the plain PyTorch loop -----------------------------------------------------------------------


def plain_model(device):
    bb = get_backbone("efficientnet_lite0", weights="DEFAULT")
    model = nn.Sequential(*bb.stages.values(), nn.Linear(bb.num_features or 1280, N_CLASSES))
    return model.to(device, memory_format=torch.channels_last)


def plain_preprocess(xb, device):
    """uint8 NHWC on the CPU -> normalised float NCHW (channels_last) on the device."""
    x = xb.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - 0.5) / 0.5
    return x.contiguous(memory_format=torch.channels_last)


def run_plain(cfg, device, data):
    X, y, X_pred = data
    torch.manual_seed(0)
    reset_peak(device)
    model = plain_model(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    if device.startswith("cuda"):
        Xt = Xt.pin_memory()
    generator = torch.Generator().manual_seed(0)
    bs = cfg["batch_size"]
    epochs = []
    for _ in range(cfg["epochs"]):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(Xt), generator=generator)
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            optimizer.zero_grad(set_to_none=True)
            out = model(plain_preprocess(Xt[idx], device))
            loss = criterion(out, yt[idx].to(device, non_blocking=True))
            loss.backward()
            optimizer.step()
        sync(device)
        epochs.append(time.perf_counter() - start)
    model.eval()
    Xp = torch.from_numpy(X_pred)

    def predict():
        with torch.inference_mode():
            return torch.cat([
                torch.softmax(model(plain_preprocess(Xp[i:i + bs], device)).float(), 1).cpu()
                for i in range(0, len(Xp), bs)
            ])

    predict()  # warm
    sync(device)
    start = time.perf_counter()
    predict()
    sync(device)
    predict_s = time.perf_counter() - start
    return {
        "fit": len(X) / statistics.median(epochs), "predict": len(X_pred) / predict_s,
        "peak": peak(device),
    }


# -- the reload check -----------------------------------------------------------------------------

_RELOAD = """
import pickle, sys, warnings
import numpy as np
import torch
assert not torch.cuda.is_available(), "CUDA should be hidden here"
warnings.simplefilter("ignore")
with open(sys.argv[1], "rb") as fh:
    clf = pickle.load(fh)
np.save(sys.argv[3], clf.predict_proba(np.load(sys.argv[2])))
print(clf.device_)
"""


def reload_on_cpu(clf, X, expected):
    """Largest |difference| of predict_proba after a pickle round trip into a process that
    sees no GPU, and the device the model was loaded on there."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, name) for name in ("model.pkl", "X.npy", "proba.npy")]
        with open(paths[0], "wb") as fh:
            pickle.dump(clf, fh)
        np.save(paths[1], X)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run(
            [sys.executable, "-c", _RELOAD, *paths], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"reloading the pickled model failed:\n{done.stderr[-2000:]}")
        return float(np.abs(np.load(paths[2]) - expected).max()), done.stdout.strip()


# -- report ---------------------------------------------------------------------------------------


def fmt_mem(nbytes):
    return "n/a (CPU)" if nbytes is None else f"{nbytes / 2**20:,.0f} MiB"


def main(argv=None):
    args = parse_args(argv)
    has_cuda = torch.cuda.is_available()
    device = "cuda" if has_cuda else "cpu"
    cfg = TINY if (args.quick or not has_cuda) else FULL
    print("sktransfer GPU check")
    print(f"sktransfer {sktransfer.__version__}, torch {torch.__version__}")
    if has_cuda:
        props = torch.cuda.get_device_properties(0)
        print(f"CUDA device: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    else:
        print("No CUDA device: GPU figures not measured. The steps below run on the CPU at a "
              "tiny size, to check that they work; their figures are not GPU figures.")
    precisions = ["float32", "bfloat16"] + (["float16"] if has_cuda else [])
    print(
        f"data: {cfg['n_train']} training / {cfg['n_predict']} prediction images, synthetic "
        f"uint8 RGB {cfg['size']}x{cfg['size']}, {N_CLASSES} classes; EfficientNet-Lite0 "
        f"(ImageNet weights), all stages fine-tuned, batch {cfg['batch_size']}, "
        f"{cfg['epochs']} epochs (median epoch)"
    )
    X, y = make_images(cfg["n_train"], cfg["size"], seed=0)
    X_pred, _ = make_images(cfg["n_predict"], cfg["size"], seed=1)
    data = (X, y, X_pred)

    if has_cuda:
        # one-off costs (CUDA context, kernel selection, weights file) are paid here, untimed
        warm = (X[: 2 * cfg["batch_size"]], y[: 2 * cfg["batch_size"]], X_pred[:8])
        run_plain({**cfg, "epochs": 1}, device, warm)
        for precision in precisions:
            run_sktransfer({**cfg, "epochs": 1}, device, precision, warm)

    rows = [("plain PyTorch, float32", run_plain(cfg, device, data))]
    results = {}
    for precision in precisions:
        results[precision] = run_sktransfer(cfg, device, precision, data)
        rows.append((f"sktransfer, {precision}", results[precision]))

    where = "" if has_cuda else " [CPU, tiny size: not GPU figures]"
    print(f"\n{'run':<26}{'fit images/s':>14}{'predict images/s':>18}{'peak GPU memory':>18}"
          f"{where}")
    for name, r in rows:
        print(f"{name:<26}{r['fit']:>14,.1f}{r['predict']:>18,.1f}{fmt_mem(r['peak']):>18}")
    plain, base = rows[0][1], results["float32"]
    print(f"\nsktransfer / plain PyTorch (float32): fit {base['fit'] / plain['fit']:.2f}x, "
          f"predict {base['predict'] / plain['predict']:.2f}x")
    for precision in precisions[1:]:
        r = results[precision]
        print(f"{precision} speed-up over float32: fit {r['fit'] / base['fit']:.2f}x, "
              f"predict {r['predict'] / base['predict']:.2f}x")

    diff, loaded_on = reload_on_cpu(base["model"], X_pred, base["proba"])
    ok = diff <= TOLERANCE
    print(f"\npickled model reloaded on the CPU: max |difference| = {diff:.1e} (float32 model "
          f"fitted on {base['model'].device_}, loaded on {loaded_on} with "
          f"CUDA_VISIBLE_DEVICES=''; tolerance {TOLERANCE:g}): {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
