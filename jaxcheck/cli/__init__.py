"""The ``jaxcheck`` command line: ``demo``, ``check`` and ``check-layer``.

``main(argv)`` parses the arguments, runs one subcommand and returns the process's exit code.
"""

# The check that ``jaxcheck check`` runs: _commands looks it up here each time, so that tests can
# replace jaxcheck.cli.run_check.
from ..check import check as run_check  # noqa: F401
from ._commands import main as main
from ._output import EXIT_CORRECT as EXIT_CORRECT
from ._output import EXIT_CRASH as EXIT_CRASH
from ._output import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from ._output import EXIT_USAGE as EXIT_USAGE
from ._output import EXIT_WRONG as EXIT_WRONG

__all__ = ["main"]
