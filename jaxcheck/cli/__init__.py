"""The ``jaxcheck`` command line: ``demo``, ``check``, ``check-layer`` and ``cache``.

``main(argv)`` parses the arguments, runs one subcommand and returns the process's exit code.
"""

# The check that ``jaxcheck check`` runs: _commands looks it up here each time, so that tests can
# replace jaxcheck.cli.run_check.
from jaxcheck._engine.doors.gradient import check as run_check  # noqa: F401
from jaxcheck.cli._commands import main as main
from jaxcheck.cli._output import EXIT_CORRECT as EXIT_CORRECT
from jaxcheck.cli._output import EXIT_CRASH as EXIT_CRASH
from jaxcheck.cli._output import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from jaxcheck.cli._output import EXIT_USAGE as EXIT_USAGE
from jaxcheck.cli._output import EXIT_WRONG as EXIT_WRONG

__all__ = ["main"]
