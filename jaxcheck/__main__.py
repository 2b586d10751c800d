"""``python -m jaxcheck``: the same command line as the ``jaxcheck`` script."""

from .cli import main

# The guard keeps importers (pytest's --doctest-modules collects every module) from running it.
if __name__ == "__main__":
    raise SystemExit(main())
