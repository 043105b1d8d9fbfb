"""Run every benchmark, each in a fresh process, and record the figures in README.md.

    python benchmarks/run_all.py            # full run (what ``make bench`` does); updates README
    python benchmarks/run_all.py --quick    # smoke run in seconds; README untouched
    python benchmarks/run_all.py --only bench_predict bench_memory   # those parts only
    python benchmarks/run_all.py --only bench_recipe --no-readme

The results section of ``benchmarks/README.md`` (between the two ``results`` markers) is
rewritten from the output of a full run of all benchmarks, with the machine, torch version,
date and command: its figures are never typed in by hand. A run of some of them (``--only``)
replaces their own part of that section (each benchmark's output sits between
``<!-- name -->`` and ``<!-- /name -->``), headed by the machine and command of that run.
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
    "bench_pretraining",
    "bench_data_size",
    "bench_adaptation",
    "bench_search",
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


def marked(name, text):
    return f"<!-- {name} -->\n{text.rstrip()}\n<!-- /{name} -->\n"


def update_readme_parts(parts):
    """Replace (or add, before the closing line) the marked parts of the results section."""
    head, body, tail = _read_results()
    for name, text in parts.items():
        begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        if begin in body and end in body:
            before, after = body.split(begin, 1)
            body = before + marked(name, text).rstrip("\n") + after.split(end, 1)[1]
        else:
            lines = body.rstrip("\n").split("\n")
            closing = lines.pop() if lines and lines[-1].startswith("Total time") else None
            body = "\n".join(lines).rstrip("\n") + "\n\n" + marked(name, text)
            if closing is not None:
                body += "\n" + closing
    with open(README, "w") as fh:
        fh.write(f"{head}{START}{body.rstrip()}\n{END}{tail}")


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
    sections, total = {}, 0.0
    for name in names:
        out, seconds = run(name, args.quick, args.threads)
        sections[name] = out
        total += seconds
    footer = f"Total time: {total / 60:.1f} min; load average at end: {loadavg()}.\n"
    print(footer)
    if args.quick or args.no_readme:
        return
    if names == BENCHMARKS:
        update_readme("\n".join([header, *(marked(n, t) for n, t in sections.items()), footer]))
    else:
        update_readme_parts({
            n: f"{header}\n{text}\nTime: {total / 60:.1f} min; load average at end: "
               f"{loadavg()}.\n" for n, text in sections.items()
        })
    print(f"Results written to {README}.")


if __name__ == "__main__":
    main()
