"""``python -m jaxcheck``: the same command line as the ``jaxcheck`` script."""

from .cli import _demote_script_directory, main

# The guard keeps importers (pytest's --doctest-modules collects every module) from running it.
if __name__ == "__main__":
    # python -m put the current directory first on sys.path; the jaxcheck script does not.
    _demote_script_directory()
    raise SystemExit(main())
