"""``python -m hyperinverter``: the command line, as the ``hyperinverter`` script (for a Python whose scripts are
not on the PATH, and for ``torchrun -m hyperinverter``)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
