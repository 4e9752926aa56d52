"""``python -m pipedsl``: the same as the ``pipedsl`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
