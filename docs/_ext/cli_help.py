"""Sphinx extension: the ``--help`` text of the ``sktransfer`` command and its subcommands.

Written when the build starts from the installed parser (:func:`sktransfer.cli.build_parser`)
to ``generated/cli_help_<name>.txt`` and included by the command-line page, so the page always
shows the options of the installed version.
"""

import os
from pathlib import Path

OUTPUT = Path("generated")
WIDTH = "92"


def help_texts():
    """``{"sktransfer": main help, "fit": ..., ...}`` as argparse prints them."""
    from sktransfer.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        texts = {"sktransfer": parser.format_help()}
        subparsers = next(
            a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"
        )
        for name, sub in subparsers.choices.items():
            texts[name] = sub.format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return texts


def write_help(app):
    folder = Path(app.srcdir) / OUTPUT
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in help_texts().items():
        target = folder / f"cli_help_{name}.txt"
        if not (target.is_file() and target.read_text() == text):
            target.write_text(text)


def setup(app):
    app.connect("builder-inited", write_help)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
