"""Run every benchmark, each in a fresh process, and record the figures in README.md.

    python benchmarks/run_all.py            # full run (what ``make bench`` does); updates README
    python benchmarks/run_all.py --quick    # smoke run in seconds; README untouched
    python benchmarks/run_all.py --only bench_predict bench_memory   # those sections only
    python benchmarks/run_all.py --only bench_recipe --no-readme

The results section of ``benchmarks/README.md`` (between the two ``results`` markers) is
rewritten from the output of a full run of all benchmarks, with the machine, torch version,
date and command; a run of some benchmarks (``--only``) replaces their sections alone, each
stamped with its own machine line and command. Its figures are never typed in by hand.
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


def _read_results():
    with open(README) as fh:
        content = fh.read()
    if START not in content or END not in content:
        raise SystemExit(f"{README} has no {START} ... {END} section to update.")
    head, rest = content.split(START, 1)
    body, tail = rest.split(END, 1)
    return head, body, tail


def update_readme(text):
    head, _, tail = _read_results()
    with open(README, "w") as fh:
        fh.write(f"{head}{START}\n{text.rstrip()}\n{END}{tail}")


def _sections(body):
    """``(preamble, {number: section})`` of a results block, split at its ``### N.`` titles."""
    parts = body.split("\n### ")
    sections = {}
    for part in parts[1:]:
        number = part.split(".", 1)[0].strip()
        sections[number] = "### " + part.rstrip() + "\n"
    return parts[0].rstrip() + "\n", sections


def update_sections(outputs, stamp):
    """Replace, in the results block, the sections of the benchmarks that were run (each
    stamped with its own machine line and command); the others stay as they were."""
    head, body, tail = _read_results()
    preamble, sections = _sections("\n" + body.strip("\n") + "\n")
    for out in outputs:
        _, new = _sections("\n" + out.strip("\n") + "\n")
        for number, text in new.items():
            title, rest = text.split("\n", 1)
            sections[number] = f"{title}\n\n_{stamp}_\n{rest}"
    ordered = [sections[k] for k in sorted(sections, key=lambda k: int(k) if k.isdigit() else 99)]
    with open(README, "w") as fh:
        fh.write(f"{head}{START}\n{preamble}\n" + "\n".join(ordered) + f"\n{END}{tail}")


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
    if not args.quick and not args.no_readme:
        if names == BENCHMARKS:
            update_readme("\n".join([header, *sections, footer]))
        else:  # a part of the benchmarks: their sections only, each with its own stamp
            update_sections(sections, f"Run on its own: {machine()}; command `{command}`; "
                                      f"{total / 60:.1f} min")
        print(f"Results written to {README}.")


if __name__ == "__main__":
    main()
