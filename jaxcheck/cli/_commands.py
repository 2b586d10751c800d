"""The subcommands of the ``jaxcheck`` command line, and ``main``, which runs one of them.

``main`` turns a verdict, a usage error, the user's exit or a crash into the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TextIO

import jaxcheck
from jaxcheck import demo
from jaxcheck.cli._cache import cache_command
from jaxcheck.cli._load import layer_args, load_dout, load_function, load_params, positional_names
from jaxcheck.cli._output import (
    EXIT_CORRECT,
    EXIT_CRASH,
    EXIT_HINT,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    EXIT_WRONG,
    UsageError,
    describe_exit,
    exit_code,
    fail,
    in_cli_words,
    json_stdout,
    stdout_to_stderr,
    usage_error,
    wants_json,
    write,
)
from jaxcheck.cli._parser import build_parser
from jaxcheck.errors import JaxcheckError


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of ``jaxcheck.check`` and ``jaxcheck.check_layer`` from the flags."""
    return {
        "method": args.method,
        "samples": args.samples,
        "directions": args.directions,
        "eps": args.eps,
        "rtol": args.rtol,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "twin": args.twin,
        "progress": False if args.no_progress else None,
    }


def _run_check(args: argparse.Namespace) -> Any:
    # Looked up on each call, through the package: tests replace jaxcheck.cli.run_check.
    from jaxcheck.cli import run_check

    with contextlib.ExitStack() as stack:
        modules: dict[str, ModuleType] = {}
        cost = load_function(args.cost, stack, modules)
        grad = load_function(args.grad, stack, modules) if args.grad else None
        jax_cost = load_function(args.jax_cost, stack, modules) if args.jax_cost else None
        params = load_params(args.params)
        try:
            return run_check(cost, grad, params, jax_cost=jax_cost, **_options(args))
        except JaxcheckError as err:
            raise usage_error(err) from err


def _run_check_layer(args: argparse.Namespace) -> Any:
    check_layer = jaxcheck.check_layer  # looked up on each call: tests replace it
    with contextlib.ExitStack() as stack:
        modules: dict[str, ModuleType] = {}
        forward = load_function(args.forward, stack, modules)
        backward = load_function(args.backward, stack, modules)
        arguments = layer_args(args.args, forward)
        names = positional_names(forward)
        unknown = [n for n in args.wrt or () if names is not None and n not in names]
        if unknown:
            raise UsageError(
                f"--wrt {','.join(args.wrt)}: {unknown} are not parameters of forward "
                f"({', '.join(names or [])})"
            )
        dout = load_dout(args.dout) if args.dout else None
        try:
            return check_layer(
                forward, backward, *arguments, dout=dout, wrt=args.wrt, **_options(args)
            )
        except JaxcheckError as err:
            raise usage_error(err) from err


#: The subcommands that end in a report; ``demo`` only prints.
_CHECKS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "check": _run_check,
    "check-layer": _run_check_layer,
}


def _run(args: argparse.Namespace, stdout: TextIO) -> int:
    """Runs the chosen subcommand and prints its report; returns the exit code."""
    if args.command == "demo":
        demo.demo(write=write)
        return EXIT_CORRECT
    if args.command == "cache":
        return cache_command(args.cache_command, stdout)
    run = _CHECKS[args.command]
    if args.json:
        with stdout_to_stderr():
            report = run(args)
    else:
        report = run(args)
    code = EXIT_CORRECT if report.ok else EXIT_WRONG
    if args.json:
        write(json.dumps({**report.to_dict(), "exit_code": code}, indent=2), stdout)
    else:
        write(in_cli_words(str(report)), stdout)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``jaxcheck`` command line.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit code: 0 when the gradient is correct (or the command succeeded), 1 when it is
        wrong, 2 on a usage error, unusable input or an exit called by the user's code, 3 when
        jaxcheck crashed, 130 when interrupted. With ``--json``, standard output holds exactly
        one JSON object whatever the code (see ``jaxcheck check --help``).

    Examples:
        >>> main(["check", "no/such/model.py:cost", "--grad", "x.py:g", "--params", "p.npz"])
        2
    """
    process = argv is None  # the command itself: in --json mode stdout is the JSON's to the end
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = wants_json(argv)
    if not as_json:
        return _main(argv, as_json, sys.stdout)
    with json_stdout(to_the_end=process) as stdout:
        return _main(argv, as_json, stdout)


def _main(argv: list[str], as_json: bool, stdout: TextIO) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        return fail(EXIT_USAGE, err.kind, str(err), err.hint, stdout, as_json)
    except SystemExit as exit_:  # --help, --version
        return exit_code(exit_.code)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args, stdout)
    except UsageError as err:
        named = err.kind not in ("UsageError", "SystemExit")
        return fail(EXIT_USAGE, err.kind, str(err), err.hint, stdout, as_json, named=named)
    except SystemExit as exit_:
        # jaxcheck itself never exits here: the user's code did, and its code is no verdict.
        return fail(EXIT_USAGE, "SystemExit", describe_exit(exit_), EXIT_HINT, stdout, as_json)
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "KeyboardInterrupt", "interrupted", None, stdout, as_json)
    except BaseException as err:
        # Not exit 1, which means "the gradient is wrong".
        traceback.print_exc()
        message = f"{args.command} crashed with {type(err).__name__}: {err}"
        hint = (
            "If your functions run fine on their own, this is a bug in jaxcheck; please report "
            "it with the traceback above."
        )
        return fail(EXIT_CRASH, type(err).__name__, message, hint, stdout, as_json)
