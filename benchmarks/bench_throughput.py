"""Benchmark 6: throughput by input size and memory format (why ``channels_last``, why 64 px).

EfficientNet-Lite0 with its ImageNet weights, on the same Fashion-MNIST images resized inside
the network (grayscale repeated to RGB, normalised), batch 32: images per second for inference
(eval mode, ``torch.inference_mode()``) at 224, 96 and 64 px, and for training steps (forward,
backward, SGD step on every layer) at 96 and 64 px, each in PyTorch's default memory format
(NCHW) and in ``channels_last``, the format sktransfer gives the inputs of convolutional
backbones (the weights keep their layout, as in sktransfer).
Medians of repetitions, the two formats alternating.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _common import Timer, load_data, loadavg, median, parse_args, plain_model, report, verdict
from torch import nn, optim

BATCH = 32


def batches(X, size, channels_last):
    """Preprocessed float batches of X at ``size``, in the requested memory format."""
    out = []
    for i in range(0, len(X), BATCH):
        x = torch.from_numpy(X[i:i + BATCH]).to(torch.float32).div_(255.0)
        x = x.unsqueeze(1).expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        x = (x - 0.5) / 0.5
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out.append(x.contiguous(memory_format=fmt))
    return out


def model_in(channels_last):
    """As in sktransfer, only the inputs change format; the weights keep theirs."""
    return plain_model()


def infer(model, xbs):
    model.eval()
    with torch.inference_mode():
        for x in xbs:
            model(x)


def train(model, xbs, ys):
    model.train()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    for x, y in zip(xbs, ys):
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()


def measure(work, n_images, reps):
    """Images per second of ``work(channels_last)`` for both formats, alternating."""
    times = {False: [], True: []}
    for rep in range(reps):
        for cl in ((False, True) if rep % 2 == 0 else (True, False)):
            with Timer() as t:
                work(cl)
            times[cl].append(t.seconds)
    return n_images / median(times[False]), n_images / median(times[True])


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    sizes = {"inference": [(224, 64), (96, 512), (64, 1024)], "training": [(96, 128), (64, 256)]}
    reps = 5
    if args.quick:
        sizes = {"inference": [(32, 8)], "training": [(32, 8)]}
        reps = 1
    load_before = loadavg()
    X, y, _, _, data_name = load_data(1000, 10)
    models = {cl: model_in(cl) for cl in (False, True)}
    rows, ratios = [], []
    for kind, settings in sizes.items():
        for size, n in settings:
            xs, ys = X[:n], torch.from_numpy(y[:n])
            data = {cl: batches(xs, size, cl) for cl in (False, True)}
            y_batches = [ys[i:i + BATCH] for i in range(0, n, BATCH)]
            if kind == "inference":
                def work(cl, data=data):
                    infer(models[cl], data[cl])
            else:
                def work(cl, data=data, y_batches=y_batches):
                    train(models[cl], data[cl], y_batches)
            work(False), work(True)  # warm-up: first-call costs are not throughput
            nchw, cl = measure(work, n, reps)
            ratios.append(cl / nchw)
            rows.append([kind, f"{size} px", str(n), f"{nchw:.0f}", f"{cl:.0f}",
                         f"{cl / nchw:.2f}"])
    worst = min(ratios)
    report(
        "6. Throughput by input size and memory format",
        f"{data_name} images, EfficientNet-Lite0 (ImageNet weights), batch {BATCH}, "
        f"median of {reps} repetitions per cell, formats alternating; training = forward, "
        "backward and SGD step on every layer.",
        ["", "input size", "images", "NCHW (images / s)", "channels_last (images / s)",
         "channels_last / NCHW"],
        rows,
        notes=[
            f"lowest channels_last / NCHW ratio = {worst:.2f} (target: >= 1.0, so that "
            f"sktransfer's choice of channels_last on CPU never costs): "
            f"{verdict(worst >= 1.0)}",
        ],
        load_before=load_before,
    )
    return {"channels_last_ratio": worst}


if __name__ == "__main__":
    main()
