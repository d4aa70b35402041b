"""`python -m lazyllm ...`: the same as the `lazyllm` console script."""

import sys

from lazyllm.cli import main

if __name__ == "__main__":
    sys.exit(main())
