"""Why grid searches that train EfficientNet-Lite0's last block are slow on CPU.

Times, on the tensor shapes of Lite0's last block (1152 channels, 3x3 depthwise) at the spatial
sizes that 64 px and 128 px inputs reach there, the depthwise convolution's forward and each
half of its backward: the gradient for the input and the gradient for the weights. Median of
50 calls after 5 warm-up calls; batch 32.

    python benchmarks/diagnose_depthwise.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F


def per_call_ms(fn, n=50):
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    torch.manual_seed(0)
    print("| input (N, C, H, W) | forward (ms) | forward + input gradient (ms) | "
          "forward + weight gradient (ms) |")
    print("|---|---|---|---|")
    for shape in [(32, 1152, 2, 2), (32, 1152, 4, 4)]:
        c = shape[1]
        x = torch.randn(*shape)
        w = torch.randn(c, 1, 3, 3)

        def forward(x=x, w=w, c=c):
            with torch.no_grad():
                F.conv2d(x, w, padding=1, groups=c)

        def input_grad(x=x, w=w, c=c):
            xi = x.clone().requires_grad_(True)
            F.conv2d(xi, w, padding=1, groups=c).sum().backward()

        def weight_grad(x=x, w=w, c=c):
            wi = w.clone().requires_grad_(True)
            F.conv2d(x, wi, padding=1, groups=c).sum().backward()

        print(f"| {shape} | {per_call_ms(forward):.2f} | {per_call_ms(input_grad):.2f} | "
              f"{per_call_ms(weight_grad):.2f} |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
