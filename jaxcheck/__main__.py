"""``python -m jaxcheck``: the same command line as the ``jaxcheck`` script.

The current directory that ``python -m`` puts first on ``sys.path`` is moved behind the standard
library by ``jaxcheck/__init__.py``, which runs before this module.
"""

from jaxcheck.cli import main

# The guard keeps importers (pytest's --doctest-modules collects every module) from running it.
if __name__ == "__main__":
    raise SystemExit(main())
