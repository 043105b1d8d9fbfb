"""Benchmark 8: the time of saliency maps against a ``predict_proba`` of the same images.

A head-only EfficientNet-Lite0 classifier (ImageNet weights, 64 px) is fitted once; then, for
100 new test images, ``predict_proba`` and ``sktransfer.inspection.saliency_maps`` take turns in
rotating order, and each figure is the median over the repetitions. ``predict_proba`` starts from
an empty activation cache each time (the images are new to the model, as in benchmark 4).
Grad-CAM is measured on the default layer (the last convolutional stage, 2x2 cells at 64 px) and
on ``layer="group5"`` (4x4 cells, the last stage that can localise at 64 px: its gradient runs
back through three more stages). Occlusion (a forward pass per window position, 7x7 positions
with the default window) is timed once, for scale; it has no target.
"""

from __future__ import annotations

import warnings

from _common import (
    PLAIN_RECIPE,
    Timer,
    load_data,
    loadavg,
    median,
    parse_args,
    report,
    verdict,
    warm_up,
)

from sktransfer import TransferClassifier
from sktransfer.caching import clear_cache
from sktransfer.inspection import saliency_maps

TARGET_RATIO = 3.0


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    n_train, n_test, size, reps = 200, 100, 64, 7
    if args.quick:
        n_train, n_test, size, reps = 20, 10, 32, 1
    load_before = loadavg()
    X, y, X_test, _, data_name = load_data(n_train, n_test)
    X_test = X_test[:n_test]
    if not args.quick:  # a smoke run measures nothing
        warm_up(size)
    clf = TransferClassifier(
        "efficientnet_lite0", freeze_depth="all", max_epochs=1, input_size=size, random_state=0,
        **PLAIN_RECIPE,  # one view in predict_proba (no test-time augmentation)
    ).fit(X, y)

    def proba():
        clear_cache()  # new images: computed, not read back
        return clf.predict_proba(X_test)

    def gradcam(layer=None):
        with warnings.catch_warnings():  # the 2x2 map's warning: measured on purpose
            warnings.simplefilter("ignore", UserWarning)
            return saliency_maps(clf, X_test, layer=layer)

    def gradcam_group5():
        return gradcam("group5")

    def occlusion():
        return saliency_maps(clf, X_test, method="occlusion")

    arms = [proba, gradcam, gradcam_group5]
    for arm in arms:  # first calls pay one-off costs (imports, kernel selection)
        arm()
    times = {arm: [] for arm in arms}
    for rep in range(reps):
        for arm in arms[rep % 3:] + arms[:rep % 3]:
            with Timer() as t:
                arm()
            times[arm].append(t.seconds)
    with Timer() as occlusion_time:
        occlusion()

    base = median(times[proba])
    rows = [["predict_proba", f"{base:.3f}", "1.00"]]
    ratios = {}
    for name, key, seconds in (
        ("saliency_maps, Grad-CAM, default layer ('head')", "ratio_gradcam",
         median(times[gradcam])),
        ("saliency_maps, Grad-CAM, layer='group5'", "ratio_gradcam_group5",
         median(times[gradcam_group5])),
        ("saliency_maps, occlusion (for scale)", "ratio_occlusion", occlusion_time.seconds),
    ):
        ratios[key] = seconds / base
        rows.append([name, f"{seconds:.3f}", f"{seconds / base:.2f}"])
    worst = max(ratios["ratio_gradcam"], ratios["ratio_gradcam_group5"])
    report(
        "8. Saliency maps against predict_proba",
        f"{data_name}: {len(X_test)} new test images, {size} px, the fitted head-only "
        f"EfficientNet-Lite0; median of {reps} repetitions in rotating order (occlusion: "
        "one run).",
        ["", "time (s)", "ratio to predict_proba"],
        rows,
        notes=[
            f"highest Grad-CAM ratio = {worst:.2f} (target <= {TARGET_RATIO}): "
            f"{verdict(worst <= TARGET_RATIO)}",
        ],
        load_before=load_before,
    )
    return ratios


if __name__ == "__main__":
    main()
