"""The depthwise convolutions of EfficientNet-Lite0 on small images, on CPU.

For each depthwise convolution Lite0 runs on 64 px inputs (expanded channels, input size,
kernel, stride, with TensorFlow "SAME" padding), times the forward pass, PyTorch's weight
gradient and the weight gradient sktransfer computes where its rule
(``sktransfer._depthwise._small_input``) picks it; median of 30 calls after 3 warm-up calls,
batch 32, channels_last, as in training. Then one whole training step of Lite0 (forward,
backward, SGD) with PyTorch's kernels and with sktransfer's depthwise layers, at 32, 64 and
96 px, median of 5 alternating repetitions of 3 steps.

    python benchmarks/diagnose_depthwise.py
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch
import torch.nn.functional as F

from sktransfer._depthwise import _small_input, depthwise_weight_grad, use_fast_depthwise
from sktransfer._efficientnet_lite import BLOCKS_ARGS, efficientnet_lite0

N_CALLS = 30


def per_call_ms(fn, n=None):
    n = N_CALLS if n is None else n
    for _ in range(min(3, n)):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def lite0_depthwise_shapes(size):
    """(channels, input size, kernel, stride) of each distinct depthwise conv at ``size`` px."""
    shapes, h = [], math.ceil(size / 2)  # after the stride-2 stem
    for repeats, kernel, stride, expand, cin, cout in BLOCKS_ARGS:
        for i in range(repeats):
            c = (cin if i == 0 else cout) * expand
            s = stride if i == 0 else 1
            if (c, h, kernel, s) not in shapes:
                shapes.append((c, h, kernel, s))
            h = math.ceil(h / s)
    return shapes


def layer_table(size=64, batch=32):
    rows = []
    for c, h, k, s in lite0_depthwise_shapes(size):
        out = math.ceil(h / s)
        pad = max((out - 1) * s + k - h, 0)
        x = torch.randn(batch, c, h, h).contiguous(memory_format=torch.channels_last)
        if pad % 2:  # asymmetric "SAME" padding: padded by hand, as Conv2dSame does
            x = F.pad(x, [pad // 2, pad - pad // 2] * 2)
            p = 0
        else:
            p = pad // 2
        w = torch.randn(c, 1, k, k)
        gy = torch.randn(batch, c, out, out).contiguous(memory_format=torch.channels_last)

        def forward(x=x, w=w, s=s, p=p, c=c):
            F.conv2d(x, w, None, s, p, 1, c)

        def native(x=x, w=w, gy=gy, s=s, p=p, c=c):
            torch.ops.aten.convolution_backward(gy, x, w, None, [s, s], [p, p], [1, 1], False,
                                                [0, 0], c, [False, True, False])

        def ours(x=x, gy=gy, s=s, p=p, k=k):
            depthwise_weight_grad(gy, x, (k, k), (s, s), (p, p))

        picked = _small_input((k, k), (h, h))
        t_native, t_ours = per_call_ms(native), per_call_ms(ours)
        rows.append([f"{c}", f"{h}x{h}", f"{k}x{k}", f"{s}", f"{per_call_ms(forward):.2f}",
                     f"{t_native:.2f}", f"{t_ours:.2f}", "sktransfer's" if picked else "PyTorch's",
                     f"{t_ours if picked else t_native:.2f}"])
    return rows


def step_table(sizes=(32, 64, 96), batch=32, reps=5):
    torch.manual_seed(0)
    plain = efficientnet_lite0("imagenet")
    fast = copy.deepcopy(plain)
    use_fast_depthwise(fast)
    rows = []
    for size in sizes:
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        times = {"plain": [], "fast": []}
        for rep in range(reps):
            order = [("plain", plain), ("fast", fast)]
            for name, model in order if rep % 2 == 0 else order[::-1]:
                opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
                start = time.perf_counter()
                for _ in range(3):
                    opt.zero_grad()
                    model(x).sum().backward()
                    opt.step()
                times[name].append((time.perf_counter() - start) / 3 * 1000)
        a, b = statistics.median(times["plain"]), statistics.median(times["fast"])
        rows.append([f"{size} px", f"{a:.0f}", f"{b:.0f}", f"{b / a:.2f}"])
    return rows


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv=None):
    global N_CALLS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="batch 2, one call per timing, 32 px steps only (a smoke run)")
    args = parser.parse_args(argv)
    batch, sizes, reps = 32, (32, 64, 96), 5
    if args.quick:
        N_CALLS, batch, sizes, reps = 1, 2, (32,), 1
    torch.manual_seed(0)
    print(f"Depthwise convolutions of Lite0 at 64 px, batch {batch} (ms per call):\n")
    print(markdown(
        ["channels", "input", "kernel", "stride", "forward", "weight gradient, PyTorch",
         "weight gradient, sktransfer", "used by sktransfer", "time used"],
        layer_table(batch=batch),
    ))
    print(f"\nOne training step of Lite0 (all layers trained), batch {batch} (ms):\n")
    print(markdown(["input", "PyTorch's kernels", "sktransfer's depthwise layers", "ratio"],
                   step_table(sizes, batch=batch, reps=reps)))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
