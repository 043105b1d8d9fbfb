"""Benchmark 5: peak memory of a fit on 5,000 images at 96 px, against its budget.

Each measurement runs in a fresh process and reads the peak resident set size
(``getrusage``'s ``ru_maxrss``) reached during ``fit``, minus the resident memory just before:

* the fit measured: ``TransferClassifier(input_size=96)`` with the plain recipe, 1 epoch, on
  5,000 uint8 28x28 Fashion-MNIST images, resized per batch inside the network, at
  ``freeze_depth=-1`` (the plain recipe's depth: a small cache) and at the default
  ``freeze_depth="auto"`` (an earlier, larger stage cached);
* the fixed cost: the same fit on 100 images with ``cache=False``: the model and its copies
  (checkpoint, gradients, momentum, epoch snapshot), one batch's working memory at 96 px and
  the libraries' one-off set-up, none of which grows with the data set.

The budget is that fixed cost plus what grows with the data: the uint8 data itself and the
activation cache (bounded by ``sktransfer.caching.set_cache_options``). A float32 copy of the
whole data set at 96 px (5000 x 3 x 96 x 96 x 4 bytes = 553 MB) would show as a peak far above
it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from _common import (
    PLAIN_RECIPE,
    load_data,
    loadavg,
    max_rss_mb,
    parse_args,
    report,
    rss_mb,
    verdict,
)

MB = 1e6  # bytes; the figures are in MB of 10**6 bytes
FIXED_COST_IMAGES = 100
DEPTHS = (-1, "auto")  # the plain recipe's freeze depth, and the default


def child_fit(n, size, cache, depth):
    import torch  # noqa: F401

    from sktransfer import TransferClassifier
    from sktransfer.caching import cache_info

    X, y, _, _, _ = load_data(n, 10)
    before = rss_mb()
    depth = depth if depth == "auto" else int(depth)
    TransferClassifier("efficientnet_lite0", input_size=size, freeze_depth=depth, max_epochs=1,
                       cache=cache, random_state=0, **PLAIN_RECIPE).fit(X, y)
    return {
        "before": before, "peak": max_rss_mb(), "data": X.nbytes / MB,
        "cache": cache_info()["nbytes"] / MB, "n": len(X),
        "float32_copy": len(X) * 3 * size * size * 4 / MB,
    }


def run_child(*args):
    """``child_fit(*args)`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, args)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--child":
        result = child_fit(int(argv[1]), int(argv[2]), argv[3] == "True", argv[4])
        print(json.dumps(result))
        return result
    args = parse_args(__doc__.splitlines()[0], argv)
    n, size = (5000, 96) if not args.quick else (40, 32)
    load_before = loadavg()
    # a smoke run measures nothing: it runs in this process, without the interpreter starts
    measure = child_fit if args.quick else run_child
    fixed_n = min(FIXED_COST_IMAGES, n)
    columns = {}
    for depth in DEPTHS:
        fit = measure(n, size, True, depth)
        fixed = measure(fixed_n, size, False, depth)
        increase = fit["peak"] - fit["before"]
        fixed_cost = fixed["peak"] - fixed["before"]
        columns[depth] = dict(fit=fit, increase=increase, fixed=fixed_cost,
                              budget=fixed_cost + fit["data"] + fit["cache"])
    lines = [
        ("process before fit (imports, data)", lambda c: f"{c['fit']['before']:.0f}"),
        ("peak during fit", lambda c: f"{c['fit']['peak']:.0f}"),
        ("**increase during fit (measured)**", lambda c: f"**{c['increase']:.0f}**"),
        (f"fixed cost (a fit on {fixed_n} images, cache=False, measured)",
         lambda c: f"{c['fixed']:.0f}"),
        (f"uint8 data ({fit['n']} images)", lambda c: f"{c['fit']['data']:.1f}"),
        ("activation cache (stored)", lambda c: f"{c['fit']['cache']:.1f}"),
        ("**budget (sum of the three lines above)**", lambda c: f"**{c['budget']:.0f}**"),
        ("a float32 copy of the data set at this size",
         lambda c: f"{c['fit']['float32_copy']:.0f}"),
    ]
    rows = [[label, *(cell(columns[d]) for d in DEPTHS)] for label, cell in lines]
    ok = {d: c["increase"] <= 1.25 * c["budget"] for d, c in columns.items()}
    report(
        "5. Peak memory of a fit",
        f"{fit['n']} Fashion-MNIST images (uint8 28x28) resized to {size} px inside the "
        "network, 1 epoch of the plain recipe, at freeze_depth=-1 (the plain recipe's depth) "
        "and at the default freeze_depth=\"auto\" (an earlier stage cached); peak resident "
        "memory (ru_maxrss) in fresh processes.",
        ["", *(f"MB, freeze_depth={d!r}" for d in DEPTHS)],
        rows,
        notes=[
            f"freeze_depth={d!r}: measured increase {c['increase']:.0f} MB vs budget "
            f"{c['budget']:.0f} MB (target: within 25% of the budget; a float32 copy of the "
            f"data set alone would add {c['fit']['float32_copy']:.0f} MB): {verdict(ok[d])}"
            for d, c in columns.items()
        ],
        load_before=load_before,
    )
    increase, budget = columns[-1]["increase"], columns[-1]["budget"]
    return {"increase": increase, "budget": budget, "ok": all(ok.values())}


if __name__ == "__main__":
    main()
