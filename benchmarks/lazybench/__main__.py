"""`python -m lazybench ...`: the rig's command line (`lazybench.cli`)."""

from lazybench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
