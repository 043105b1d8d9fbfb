"""``python -m sktransfer``: the command line (see :mod:`sktransfer.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
