"""Sphinx extension: a benchmark's measured results, as reStructuredText.

``benchmarks/run_all.py`` writes each benchmark's Markdown output between ``<!-- name -->`` and
``<!-- /name -->`` in ``benchmarks/README.md``. This extension converts the parts named in
``PARTS`` (headings, paragraphs, pipe tables, bullet notes) to ``generated/<name>.rst.inc``
when the build starts, so that a user-guide page shows the figures of the last run without
anyone typing them in.
"""

import re
from pathlib import Path

PARTS = {"bench_pretraining": "pretraining_results.rst.inc",
         "bench_data_size": "data_size_results.rst.inc",
         "bench_search": "search_results.rst.inc"}

README = Path(__file__).resolve().parents[2] / "benchmarks" / "README.md"


def extract(markdown, name):
    """The Markdown between ``<!-- name -->`` and ``<!-- /name -->``, or ``None``."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if begin not in markdown or end not in markdown:
        return None
    return markdown.split(begin, 1)[1].split(end, 1)[0].strip()


def inline(text):
    """Markdown inline code to reStructuredText literals; bold stays as it is."""
    return re.sub(r"`([^`]+)`", r"``\1``", text)


def _table(rows):
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    header, body = cells[0], [r for r in cells[1:] if not all(set(c) <= {"-", ":"} for c in r)]
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *body]:
        lines.append(f"   * - {inline(row[0]) or ' '}")
        lines += [f"     - {inline(c) or ' '}" for c in row[1:]]
    return lines


def to_rst(markdown):
    """Convert the subset of Markdown that the benchmarks print."""
    out, table = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            out += _table(table) + [""]
            table = []
        if line.startswith(("### ", "#### ")):
            out.append(".. rubric:: " + inline(line.split(" ", 1)[1]))
        else:
            out.append(inline(line))
    if table:
        out += _table(table)
    return "\n".join(out).rstrip() + "\n"


def render(name, readme=README):
    markdown = extract(readme.read_text(encoding="utf-8"), name) if readme.is_file() else None
    if markdown is None:
        return (f"No results of ``{name}`` in ``benchmarks/README.md`` yet: run "
                f"``python benchmarks/run_all.py --only {name}``.\n")
    return to_rst(markdown)


def write_results(app):
    for name, filename in PARTS.items():
        target = Path(app.srcdir) / "generated" / filename
        text = render(name)
        if target.is_file() and target.read_text() == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def setup(app):
    app.connect("builder-inited", write_results)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
