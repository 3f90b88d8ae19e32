"""``python -m steepest ...``: the same command line as the ``steepest`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
