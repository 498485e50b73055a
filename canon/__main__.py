"""``python -m canon``: the command line of :mod:`canon.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
