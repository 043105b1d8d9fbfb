"""Run every benchmark, each in a fresh process, and record the figures in README.md.

    python benchmarks/run_all.py            # full run (what ``make bench`` does); updates README
    python benchmarks/run_all.py --quick    # smoke run in seconds; README untouched
    python benchmarks/run_all.py --only bench_predict bench_memory --no-readme

The results section of ``benchmarks/README.md`` (between the two ``results`` markers) is
rewritten from the output of a full run of all benchmarks, with the machine, torch version,
date and command: its figures are never typed in by hand.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import loadavg, machine  # noqa: E402

BENCHMARKS = [
    "bench_head_only",
    "bench_grid_search",
    "bench_full_finetune",
    "bench_predict",
    "bench_memory",
    "bench_throughput",
    "bench_recipe",
    "bench_saliency",
]
README = os.path.join(HERE, "README.md")
START, END = "<!-- results:start -->", "<!-- results:end -->"


def run(name, quick, threads):
    cmd = [sys.executable, os.path.join(HERE, f"{name}.py")] + (["--quick"] if quick else [])
    if threads:
        cmd += ["--threads", str(threads)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    print(proc.stdout, end="", flush=True)
    return proc.stdout, seconds


def update_readme(text):
    with open(README) as fh:
        content = fh.read()
    if START not in content or END not in content:
        raise SystemExit(f"{README} has no {START} ... {END} section to update.")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(README, "w") as fh:
        fh.write(f"{head}{START}\n{text.rstrip()}\n{END}{tail}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke runs")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per benchmark")
    args = parser.parse_args(argv)
    names = args.only or BENCHMARKS
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # so that the header reports it
    command = "python benchmarks/run_all.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    header = (
        f"Machine: {machine()}.\n\nCommand: `{command}` (load average at start: {loadavg()}; "
        "the machine is shared, see each benchmark's load line).\n"
    )
    print(header, flush=True)
    sections, total = [], 0.0
    for name in names:
        out, seconds = run(name, args.quick, args.threads)
        sections.append(out)
        total += seconds
    footer = f"Total time: {total / 60:.1f} min; load average at end: {loadavg()}.\n"
    print(footer)
    if not args.quick and not args.no_readme and names == BENCHMARKS:
        update_readme("\n".join([header, *sections, footer]))
        print(f"Results written to {README}.")


if __name__ == "__main__":
    main()
