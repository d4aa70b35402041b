"""`python -m lazyllm.bench ...`: the same as `lazyllm bench ...`."""

from lazyllm.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
