"""The ``jaxcheck`` command line's arguments: subcommands, options, help texts, value checks.

Argument errors raise :class:`UsageError` (exit 2) instead of exiting the process.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from importlib import metadata
from typing import Any

import jaxcheck
from jaxcheck.cli._output import UsageError

_METHODS = ("full", "sample", "directional")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> Any:
        raise UsageError(message, hint=f"see {self.prog} --help")


def version() -> str:
    """The installed version of jaxcheck, or the package's own when it is not installed."""
    try:
        return metadata.version("jaxcheck")
    except metadata.PackageNotFoundError:
        return str(getattr(jaxcheck, "__version__", "unknown"))


def _int_at_least(minimum: int, words: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text!r}")
    return value


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(name.isidentifier() for name in names):
        raise argparse.ArgumentTypeError(
            f"expected parameter names separated by commas, e.g. x,w, got {text!r}"
        )
    return names


_DESCRIPTION = """\
Tells you whether your hand-written backpropagation is right, and if not, exactly where it is
wrong: the NumPy gradient is compared with finite differences and jax.grad of a JAX twin of the
cost, leaf by leaf."""

_LOADING = """\
Functions are named as path/to/file.py:function or package.module:function (importable from the
current directory or PYTHONPATH). A file is imported under a name of its own, once per command;
its directory is added to sys.path after the standard library, so it may import its sibling
modules, but a sibling named like a standard module (random.py, copy.py, types.py) never
replaces the standard one."""

_CHECK_DESCRIPTION = f"""\
Checks a hand-written NumPy gradient against central finite differences and jax.grad of a JAX
twin of the cost, and says per parameter who is wrong.

{_LOADING}

jaxcheck calls cost(params) -> float (or a tuple whose first item is the float) and
grad(params) -> dict keyed like params (or by "d" + name, e.g. dW1). Without --grad, COST must
return (loss, grads) itself. params is a dict of the arrays stored by name in FILE.npz
(np.savez(path, W1=W1, b1=b1, ...)); names with "/" nest, and numbered levels become lists:
"layers/0/W", "layers/0/b", "layers/1/W" give {{"layers": [{{"W": ..., "b": ...}}, {{"W": ...}}]}}.
The functions get params alone: when your forward pass also needs data (X, Y), load the data at
module level in your file and close over it (relative paths there start from the current
directory), e.g.

    X, Y = np.load("data.npz").values()          # or build them in the module
    def cost(params): return forward(X, Y, params)[0]
    def grad(params): return backward(X, Y, forward(X, Y, params)[1])
    def jax_cost(params): return forward_jax(X, Y, params)

--jax-cost takes params as a dict of jax arrays and must compute the same cost with jax.numpy;
without it the NumPy cost is ported to jax.numpy automatically (jaxcheck.port)."""

_CHECK_LAYER_DESCRIPTION = f"""\
Checks the hand-written backward pass of one layer: forward(*args) -> out or (out, cache), and
backward(dout, cache) -> the gradients of the arguments, in order (jaxcheck.check_layer).

{_LOADING}

--args holds the layer's arguments, saved with np.savez either as arg0, arg1, ... (positional
order) or by forward's parameter names (np.savez("args.npz", x=x, w=w, b=b)). --dout holds the
upstream gradient, saved with np.save; without it jaxcheck seeds one. --wrt x,w checks only
those arguments."""

_EPILOG = """\
exit status:
  0    the gradient is correct
  1    the gradient is wrong (the report names the parameters)
  2    the check could not be run: a usage error (unknown file or function, missing or unreadable
       .npz file, bad option values), a problem with the input that jaxcheck detected
       (InputError, NondeterminismError, ReimplementationError, PortError), or your code called
       sys.exit()/exit() (that would have claimed a verdict); the message on stderr says what
       to fix. None of these is a verdict on the gradient.
  3    jaxcheck crashed unexpectedly (traceback on stderr)
  130  interrupted (Ctrl-C)

--json: standard output holds exactly one JSON object, whatever the exit status; anything your
code prints goes to standard error. On 0 and 1 it is the report, jaxcheck.Report.to_dict(), with
"exit_code" added:
  {"ok": true|false, "exit_code": 0|1, "failing": [paths], "verdict": "...", "leaves": {...}, ...}
On 2, 3 and 130 it is
  {"ok": null, "exit_code": 2|3|130,
   "error": {"class": "UsageError"|"SystemExit"|"InputError"|...|"KeyboardInterrupt"|...,
             "message": "what happened", "hint": "what to do" or null}}
where class is the jaxcheck error (InputError, PortError, ...), UsageError for the command line
itself, SystemExit when your code exited, or the class of the exception jaxcheck crashed with."""


def _add_check_options(parser: argparse.ArgumentParser) -> None:
    """The options ``check`` and ``check-layer`` share: method, tolerances, output."""
    parser.add_argument(
        "--method",
        choices=_METHODS,
        default="full",
        help="finite differences on every coordinate (full, the default), on at most --samples "
        "coordinates per parameter (sample), or along --directions random directions per "
        "parameter (directional)",
    )
    parser.add_argument(
        "--samples", type=_positive_int, metavar="N", help="coordinates per parameter (sample)"
    )
    parser.add_argument(
        "--directions",
        type=_positive_int,
        metavar="N",
        help="random directions per parameter (directional)",
    )
    parser.add_argument(
        "--eps",
        type=_positive_float,
        metavar="E",
        help="finite-difference step (default: cbrt(machine eps) * max(1, |theta|))",
    )
    parser.add_argument(
        "--rtol",
        type=_positive_float,
        metavar="R",
        help="tolerance of backprop vs autodiff (default: by the gradient's dtype)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="B",
        help="perturbations per vmapped batch (default: fit a memory budget)",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        metavar="S",
        help="seed of the sampled coordinates and random directions (default 0)",
    )
    parser.add_argument(
        "--twin",
        choices=("auto", "required", "none"),
        default="auto",
        help="when the NumPy code cannot be ported to jax.numpy: judge two-way against finite "
        "differences of the NumPy code and say so (auto, the default), stop with the port's "
        "error (required), or never build a JAX twin and judge two-way (none)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the report as one JSON object instead of a table (schema below)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="never show a progress bar on stderr"
    )


def _check_command(commands: Any, name: str, help: str, description: str) -> Any:
    """A subcommand that runs a check: its description, then the epilog every check shares."""
    return commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``jaxcheck``: ``args.command`` names the subcommand, or is ``None``."""
    parser = _Parser(
        prog="jaxcheck",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser(
        "demo",
        help="run the classic gradient-checking lesson, then jaxcheck on it",
        description="Runs the classic gradient-checking lesson end to end: its 1-D and N-D "
        "checks (including the false alarm on a correct gradient), jaxcheck's three-way "
        "reports on the buggy and the fixed backprop, and why the false alarm is rounding.",
    )

    check = _check_command(
        commands, "check", "check a hand-written gradient from your own files", _CHECK_DESCRIPTION
    )
    check.add_argument("cost", metavar="COST", help="the NumPy cost: FILE.py:NAME or MODULE:NAME")
    check.add_argument(
        "--grad",
        metavar="GRAD",
        help="the hand-written NumPy gradient; omit it when COST returns (loss, grads)",
    )
    check.add_argument(
        "--params", required=True, metavar="FILE.npz", help="the parameters, saved with np.savez"
    )
    check.add_argument(
        "--jax-cost",
        metavar="FN",
        help="the JAX twin of the cost (default: port the NumPy cost to jax.numpy)",
    )
    _add_check_options(check)

    layer = _check_command(
        commands,
        "check-layer",
        "check the hand-written backward pass of one layer",
        _CHECK_LAYER_DESCRIPTION,
    )
    layer.add_argument("forward", metavar="FORWARD", help="forward(*args) -> out | (out, cache)")
    layer.add_argument(
        "backward", metavar="BACKWARD", help="backward(dout, cache) -> grads of args, in order"
    )
    layer.add_argument(
        "--args",
        required=True,
        metavar="FILE.npz",
        help="the layer's arguments: arg0, arg1, ... or forward's parameter names",
    )
    layer.add_argument(
        "--dout", metavar="FILE.npy", help="the upstream gradient (default: jaxcheck seeds one)"
    )
    layer.add_argument(
        "--wrt",
        type=_names,
        metavar="NAMES",
        help="check only these arguments, by forward's parameter names, e.g. x,w",
    )
    _add_check_options(layer)
    _add_cache_command(commands)
    return parser


_CACHE_DESCRIPTION = """\
jaxcheck keeps the programs it compiles in a private directory, so that a check re-run in a new
process compiles nothing: $JAXCHECK_CACHE_DIR, else $XDG_CACHE_HOME/jaxcheck or ~/.cache/jaxcheck
(made 0700). Entries are authenticated with a key of yours kept outside it ($JAXCHECK_CACHE_KEY,
else ~/.config/jaxcheck/cache.key, 0600): one that fails is compiled again, never trusted. A
directory that belongs to someone else or that others can write to is not used. The least
recently used entries go beyond $JAXCHECK_CACHE_MAX_BYTES (default 256M). JAXCHECK_NO_CACHE=1
turns the cache off."""


def _add_cache_command(commands: Any) -> None:
    """``jaxcheck cache info`` and ``jaxcheck cache clear``."""
    cache = commands.add_parser(
        "cache",
        help="show or clear the disk cache of compiled programs",
        description=_CACHE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    actions.add_parser(
        "info", help="where the cache is, its size and limit, the key, whether it is trusted"
    )
    actions.add_parser("clear", help="delete every compiled program in the cache")
