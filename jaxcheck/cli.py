"""The ``jaxcheck`` command line: ``demo``, ``check`` and ``check-layer``.

``main(argv)`` parses the arguments, runs one subcommand and returns the process's exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import itertools
import json
import linecache
import math
import os
import re
import sys
import sysconfig
import textwrap
import traceback
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, TextIO

import numpy as np

import jaxcheck

from . import lesson
from .check import check as run_check
from .errors import JaxcheckError, PortError

__all__ = ["main"]

#: Exit codes: the gradient is correct / wrong / the input is unusable / jaxcheck itself crashed /
#: interrupted (Ctrl-C).
EXIT_CORRECT, EXIT_WRONG, EXIT_USAGE, EXIT_CRASH, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

_METHODS = ("full", "sample", "directional")
_WIDTH = 100
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_JAX_COST_ADVICE = (
    "On the command line, pass the JAX twin as --jax-cost FILE:function (a jax.numpy function "
    "of params that computes the same cost)."
)
_module_counter = itertools.count()


class _UsageError(Exception):
    """The check could not be run: printed as ``jaxcheck: error: ...``, exit 2.

    Attributes:
        kind: the ``error.class`` of the JSON output (``"UsageError"``, ``"PortError"``, ...).
        hint: what to do about it, or ``None``.
    """

    def __init__(self, message: str, *, kind: str = "UsageError", hint: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.hint = hint


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`_UsageError` instead of exiting."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _UsageError(message, hint=f"see {self.prog} --help")


# --------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("jaxcheck")
    except PackageNotFoundError:
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
        "--json",
        action="store_true",
        help="print the report as one JSON object instead of a table (schema below)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="never show a progress bar on stderr"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxcheck",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the classic gradient-checking lesson, then jaxcheck on it",
        description="Runs the classic gradient-checking lesson end to end: its 1-D and N-D "
        "checks (including the false alarm on a correct gradient), jaxcheck's three-way "
        "reports on the buggy and the fixed backprop, and why the false alarm is rounding.",
    )
    demo.set_defaults(run=_run_demo)

    check = commands.add_parser(
        "check",
        help="check a hand-written gradient from your own files",
        description=_CHECK_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    check.set_defaults(run=_run_check)

    layer = commands.add_parser(
        "check-layer",
        help="check the hand-written backward pass of one layer",
        description=_CHECK_LAYER_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    layer.set_defaults(run=_run_check_layer)
    return parser


# --------------------------------------------------------------------------------------------
# Loading the user's functions and arrays
# --------------------------------------------------------------------------------------------


def _under(path: str, directories: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == d or real.startswith(d.rstrip(os.sep) + os.sep) for d in directories)


def _stdlib_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return [os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib") if key in paths]


def _after_stdlib() -> int:
    """The ``sys.path`` index just after the standard library (the end when it is not found)."""
    stdlib = _stdlib_dirs()
    found = [
        i
        for i, entry in enumerate(sys.path)
        if "-packages" not in entry and _under(entry or os.curdir, stdlib)
    ]
    return found[-1] + 1 if found else len(sys.path)


def _demote_script_directory() -> None:
    """Moves the current directory that ``python -m`` put first on ``sys.path`` after the stdlib.

    The current directory stays importable (``package.module:function`` specs need it), but a
    ``random.py`` or ``statistics.py`` there no longer replaces the standard module for imports
    made from now on. Called by ``python -m jaxcheck`` only; ``main`` leaves its caller's
    ``sys.path`` alone.
    """
    if sys.path and sys.path[0] in ("", os.getcwd()):
        entry = sys.path.pop(0)
        sys.path.insert(_after_stdlib(), entry)


@contextlib.contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    """Adds ``directory`` to ``sys.path`` after the standard library, then removes it again.

    After, not first: a user's ``random.py`` or ``copy.py`` must not replace the standard
    module for anything imported while the check runs.
    """
    sys.path.insert(_after_stdlib(), directory)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(directory)


def _is_file_spec(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _user_traceback(err: BaseException) -> str:
    """The traceback of ``err`` without jaxcheck's and importlib's frames."""
    exc = traceback.TracebackException.from_exception(err)
    exc.stack = traceback.StackSummary.from_list(
        [f for f in exc.stack if not _is_jaxcheck_frame(f.filename)]
    )
    return "".join(exc.format())


def _stdlib_namesakes(directory: str) -> list[str]:
    names = getattr(sys, "stdlib_module_names", frozenset())
    with contextlib.suppress(OSError):
        return sorted(f for f in os.listdir(directory) if f.endswith(".py") and f[:-3] in names)
    return []


def _load_file(path: str, spec_text: str) -> ModuleType:
    if not os.path.exists(path):
        raise _UsageError(f"no file {path} (from {spec_text!r})")
    if not os.path.isfile(path):
        raise _UsageError(f"{path} is not a file (from {spec_text!r})")
    stem = "".join(c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0])
    name = f"_jaxcheck_user_{stem}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise _UsageError(f"cannot import {path} as Python (from {spec_text!r})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        hint = None
        namesakes = _stdlib_namesakes(os.path.dirname(path))
        if isinstance(err, (ImportError, AttributeError)) and namesakes:
            hint = (
                f"{os.path.dirname(path)} holds {', '.join(namesakes)}, named like standard "
                f"modules; jaxcheck keeps the standard library first, so an import of that "
                f"name gets the standard module: rename your file."
            )
        raise _UsageError(
            f"importing {path} raised {type(err).__name__}: {err}\n{_user_traceback(err)}".rstrip(),
            hint=hint,
        ) from err
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(name: str, spec_text: str) -> ModuleType:
    if not all(part.isidentifier() for part in name.split(".")):
        raise _UsageError(
            f"{spec_text!r}: {name!r} is neither a .py file nor a module name; expected "
            f"path/to/file.py:function or package.module:function"
        )
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            raise _UsageError(
                f"no module {err.name!r} (from {spec_text!r}); is it on PYTHONPATH, or did you "
                f"mean a file, path/to/file.py:function?"
            ) from err
        raise _UsageError(f"importing {name} raised ModuleNotFoundError: {err}") from err
    except Exception as err:
        raise _UsageError(
            f"importing {name} raised {type(err).__name__}: {err}\n{_user_traceback(err)}".rstrip()
        ) from err


def _functions_in(module: ModuleType) -> list[str]:
    """Public functions of ``module``: those defined there, or else every public callable."""
    public = {
        key: value
        for key, value in vars(module).items()
        if not key.startswith("_") and callable(value) and not isinstance(value, (type, ModuleType))
    }
    own = [k for k, v in public.items() if getattr(v, "__module__", None) == module.__name__]
    return sorted(own or public)


def _load_function(
    spec_text: str, stack: contextlib.ExitStack, modules: dict[str, ModuleType]
) -> Callable[..., Any]:
    """Resolves ``path/to/file.py:function`` or ``package.module:function`` to the function.

    Each file is executed once per command (``modules`` remembers it), so cost and grad from the
    same file share its module-level data even when that data is random. Directories on
    ``sys.path`` that the module needs (the file's own directory, or the current directory for a
    module name) stay there until ``stack`` closes, so imports the functions make later resolve.
    """
    target, colon, attribute = spec_text.rpartition(":")
    if not colon or not target or not attribute:
        raise _UsageError(
            f"{spec_text!r}: expected path/to/file.py:function or package.module:function"
        )
    if _is_file_spec(target):
        path = os.path.abspath(target)
        if path not in modules:
            if os.path.isdir(os.path.dirname(path)) and os.path.dirname(path) not in sys.path:
                stack.enter_context(_on_sys_path(os.path.dirname(path)))
            modules[path] = _load_file(path, spec_text)
        module = modules[path]
        where = target
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            stack.enter_context(_on_sys_path(os.getcwd()))
        module = _import_module(target, spec_text)
        where = f"module {target}"
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            defined = ", ".join(_functions_in(module)) or "no public functions"
            raise _UsageError(f"no function {attribute!r} in {where} (it defines: {defined})")
        value = getattr(value, part)
    if not callable(value):
        raise _UsageError(
            f"{attribute!r} in {where} is a {type(value).__name__}, not a function "
            f"(from {spec_text!r})"
        )
    return value


def _load_npz(path: str, what: str, advice: str) -> dict[str, np.ndarray]:
    """Reads the arrays of an ``.npz`` archive into a dict, in the order stored."""
    if not os.path.exists(path):
        raise _UsageError(f"no {what} file {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:
        raise _UsageError(
            f"cannot read {what} file {path} ({type(err).__name__}: {err}); {advice}"
        ) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _UsageError(f"{what} file {path} holds a single array, not named arrays; {advice}")
    with archive:
        try:
            return {key: archive[key] for key in archive.files}
        except Exception as err:
            raise _UsageError(
                f"cannot read {what} file {path} ({type(err).__name__}: {err}); {advice}"
            ) from err


def _nest(arrays: dict[str, np.ndarray], where: str) -> Any:
    """Rebuilds nested params from ``/``-separated names: dicts, and lists for numbered levels.

    Names without ``/`` give the flat dict as stored.

    Examples:
        >>> _nest({"layers/1/W": 2, "layers/0/W": 0, "layers/0/b": 1}, "p.npz")
        {'layers': [{'W': 0, 'b': 1}, {'W': 2}]}
    """
    if not any("/" in key for key in arrays):
        return arrays
    tree: dict[str, Any] = {}
    for key, value in arrays.items():
        parts = key.split("/")
        if "" in parts:
            raise _UsageError(
                f"{where}: the array name {key!r} has an empty level; name nested arrays like "
                f"'layers/0/W'"
            )
        node = tree
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise _clash("/".join(parts[: depth + 1]), key, where)
        if parts[-1] in node:
            inner = next(k for k in arrays if k.startswith(key + "/"))
            raise _clash(key, inner, where)
        node[parts[-1]] = value
    return _numbered_to_lists(tree, "", where)


def _clash(array: str, inner: str, where: str) -> _UsageError:
    return _UsageError(
        f"{where} holds both {array!r} and {inner!r}: {array!r} cannot be an array and a group "
        f"of arrays at once; rename one of them"
    )


def _numbered_to_lists(node: Any, prefix: str, where: str) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _numbered_to_lists(v, f"{prefix}{k}/", where) for k, v in node.items()}
    if not all(key.isdecimal() for key in items):
        return items
    numbers = sorted(int(key) for key in items)
    if numbers != list(range(len(numbers))) or any(str(int(k)) != k for k in items):
        found = ", ".join(f"{prefix}{k}" for k in sorted(items, key=int))
        raise _UsageError(
            f"{where}: the numbered names {found} must count 0, 1, 2, ... without gaps or "
            f"leading zeros to form a list"
        )
    return [items[str(i)] for i in numbers]


def _load_params(path: str) -> Any:
    """Reads the parameters from an ``.npz`` archive: a dict, nested where names hold ``/``."""
    advice = f"save the parameters by name with np.savez({path!r}, W1=W1, b1=b1, ...)"
    return _nest(_load_npz(path, "params", advice), f"params file {path}")


def _positional_names(fn: Callable[..., Any]) -> list[str] | None:
    """Names of ``fn``'s positional parameters, or ``None`` when it takes ``*args``/is opaque."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in kinds]


def _layer_args(path: str, forward: Callable[..., Any]) -> list[Any]:
    """Reads forward's positional arguments: ``arg0, arg1, ...`` or by parameter name."""
    advice = f'save them with np.savez("{path}", arg0=x, arg1=w, ...) or by parameter name'
    arrays = _nest(_load_npz(path, "args", advice), f"args file {path}")
    if not isinstance(arrays, dict) or not arrays:
        raise _UsageError(f"args file {path} holds no named arguments; {advice}")
    numbered = {k: v for k, v in arrays.items() if re.fullmatch(r"arg(0|[1-9]\d*)", k)}
    if len(numbered) == len(arrays):
        count = len(numbered)
        missing = [f"arg{i}" for i in range(count) if f"arg{i}" not in numbered]
        if missing:
            raise _UsageError(f"args file {path} has {sorted(numbered)} but not {missing}")
        return [numbered[f"arg{i}"] for i in range(count)]
    names = _positional_names(forward)
    if names is None:
        raise _UsageError(
            f"args file {path} names arguments {list(arrays)}, but forward's parameter names "
            f"are unknown (it takes *args); {advice}"
        )
    unknown = [k for k in arrays if k not in names]
    if unknown:
        raise _UsageError(
            f"args file {path} holds {unknown}, which are not parameters of forward "
            f"({', '.join(names)}); name the arrays arg0, arg1, ... or by parameter name"
        )
    count = 1 + max(names.index(k) for k in arrays)
    missing = [name for name in names[:count] if name not in arrays]
    if missing:
        raise _UsageError(
            f"args file {path} lacks {missing}: forward's arguments are passed by position, so "
            f"every parameter before {names[count - 1]!r} needs an array"
        )
    return [arrays[name] for name in names[:count]]


def _load_dout(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise _UsageError(f"no dout file {path}")
    try:
        value = np.load(path, allow_pickle=False)
    except Exception as err:
        raise _UsageError(f"cannot read dout file {path} ({type(err).__name__}: {err})") from err
    if not isinstance(value, np.ndarray):
        value.close()
        raise _UsageError(
            f"dout file {path} holds named arrays; save the single upstream gradient with "
            f"np.save({path!r}, dout)"
        )
    return value


# --------------------------------------------------------------------------------------------
# What happened: the user's own exits, errors, output
# --------------------------------------------------------------------------------------------


def _is_jaxcheck_frame(filename: str) -> bool:
    return filename.startswith("<frozen") or _under(filename, [_PACKAGE_DIR])


def _is_user_frame(filename: str) -> bool:
    """Whether ``filename`` is the user's: neither jaxcheck, nor the stdlib, nor installed."""
    if filename.startswith("<") or _is_jaxcheck_frame(filename):
        return False
    paths = sysconfig.get_paths()
    libraries = [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]
    return not _under(filename, [os.path.realpath(p) for p in libraries])


def _shown(filename: str) -> str:
    relative = os.path.relpath(filename) if os.path.isabs(filename) else filename
    return filename if relative.startswith(os.pardir) else relative


def _describe_exit(exit_: SystemExit) -> str:
    """Says which of the user's files and functions called exit, where, and with what code."""
    frames = list(traceback.extract_tb(exit_.__traceback__))
    user = [f for f in frames if _is_user_frame(f.filename)] or [
        f for f in frames if not _is_jaxcheck_frame(f.filename)
    ]
    code = exit_.code
    status = 0 if code is None else code if isinstance(code, int) else 1
    meaning = {0: "that the gradient is correct", 1: "that the gradient is wrong"}
    called = "exit" if code is None else f"exit with code {code!r}"
    consequence = (
        f"As jaxcheck's exit status, {status} would claim {meaning[status]}; nothing was judged."
        if status in meaning
        else "Nothing was judged."
    )
    if not user:
        return f"the code jaxcheck ran called {called}. {consequence}"
    entry, site = user[0], user[-1]
    who = (
        f"importing {_shown(entry.filename)}"
        if entry.name == "<module>"
        else f"{entry.name} in {_shown(entry.filename)}"
    )
    line = linecache.getline(site.filename, site.lineno).strip() if site.lineno else ""
    where = f"{_shown(site.filename)}, line {site.lineno}"
    where += "" if site.name == "<module>" else f", in {site.name}"
    where += f": {line}" if line else ""
    last = frames[-1]
    if last is not site and "_sitebuiltins" not in last.filename:
        where += f" (via {os.path.basename(last.filename)}, in {last.name})"
    return f"{who} called {called} at {where}. {consequence}"


_EXIT_HINT = (
    "The code jaxcheck runs must not exit: remove the exit call, or keep script code under "
    'if __name__ == "__main__":.'
)


def _in_cli_words(hint: str) -> str:
    """Rewrites advice written for the Python API (``jax_cost=``) in the command line's flags.

    Examples:
        >>> _in_cli_words("pass jax_cost= to jc.check (a jax.numpy version of your cost)")
        'pass --jax-cost FILE:function (a jax.numpy version of your cost)'
        >>> _in_cli_words("make jax_cost compute the same cost as cost")
        'make --jax-cost compute the same cost as cost'
    """
    hint = re.sub(r"\s+to (jc|jaxcheck)\.check\b", "", hint)
    hint = re.sub(r"\bjax_cost=", "--jax-cost FILE:function", hint)
    return re.sub(r"\bjax_cost\b(?!\()", "--jax-cost", hint)


def _hint_for(err: JaxcheckError) -> str | None:
    """The advice for a jaxcheck error, said the command line's way.

    The error's ``hint`` when it has one, else advice found in its message (``jax_cost=``).
    """
    hint = getattr(err, "hint", None)
    if isinstance(hint, str) and hint.strip():
        hint = _in_cli_words(hint.strip())
        if isinstance(err, PortError) and "--jax-cost FILE:function" not in hint:
            hint = f"{hint} {_JAX_COST_ADVICE}"
        return hint
    if isinstance(err, PortError) or "jax_cost=" in str(err):
        return _JAX_COST_ADVICE
    return None


def _usage_error(err: JaxcheckError) -> _UsageError:
    """The exit-2 error for ``err``: its message, and its hint said the command line's way."""
    if isinstance(err.__cause__, SystemExit):
        # The library caught the user's exit; say where it was, as for an exit at import.
        return _UsageError(_describe_exit(err.__cause__), kind="SystemExit", hint=_EXIT_HINT)
    message = str(err)
    hint = getattr(err, "hint", None)
    if isinstance(hint, str) and hint.strip() and hint in message:
        # Printed once, on its own, and in the command line's words.
        message = message.replace(hint, "").rstrip()
    return _UsageError(message, kind=type(err).__name__, hint=_hint_for(err))


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Sends everything written to standard output to standard error for the duration.

    ``sys.stdout`` is redirected, and when it is the process's file descriptor 1, so is that
    descriptor: writes from C code, child processes or ``sys.__stdout__`` follow too.
    """
    stdout = sys.stdout
    stdout.flush()
    saved = None
    if _fileno(stdout) == 1 and _fileno(sys.stderr) is not None:
        saved = os.dup(1)
        os.dup2(sys.stderr.fileno(), 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for stream in {id(s): s for s in (stdout, sys.__stdout__, sys.stderr) if s}.values():
            with contextlib.suppress(Exception):
                stream.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _write(text: str, file: TextIO | None = None) -> None:
    """Prints ``text``, replacing characters the stream's encoding cannot show (×, —, θ).

    When the reader has gone (``jaxcheck check ... | head -1``), the rest is dropped: the exit
    status still carries the verdict, and a broken pipe must not turn into a crash.
    """
    file = sys.stdout if file is None else file
    try:
        try:
            print(text, file=file)
        except UnicodeEncodeError:
            encoding = getattr(file, "encoding", None) or "ascii"
            print(text.encode(encoding, errors="replace").decode(encoding), file=file)
        file.flush()
    except BrokenPipeError:
        descriptor = _fileno(file)
        if descriptor is not None:
            # Later flushes, at exit included, go nowhere instead of failing again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, descriptor)
            os.close(devnull)


# --------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------


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
        "progress": False if args.no_progress else None,
    }


def _run_check(args: argparse.Namespace) -> Any:
    with contextlib.ExitStack() as stack:
        modules: dict[str, ModuleType] = {}
        cost = _load_function(args.cost, stack, modules)
        grad = _load_function(args.grad, stack, modules) if args.grad else None
        jax_cost = _load_function(args.jax_cost, stack, modules) if args.jax_cost else None
        params = _load_params(args.params)
        try:
            return run_check(cost, grad, params, jax_cost=jax_cost, **_options(args))
        except JaxcheckError as err:
            raise _usage_error(err) from err


def _run_check_layer(args: argparse.Namespace) -> Any:
    check_layer = getattr(jaxcheck, "check_layer", None)
    if check_layer is None:
        raise _UsageError(
            f"check-layer needs jaxcheck.check_layer, which is unavailable in this installation "
            f"of jaxcheck ({_version()})",
            hint="upgrade jaxcheck, or check the layer through a cost with jaxcheck check",
        )
    with contextlib.ExitStack() as stack:
        modules: dict[str, ModuleType] = {}
        forward = _load_function(args.forward, stack, modules)
        backward = _load_function(args.backward, stack, modules)
        layer_args = _layer_args(args.args, forward)
        names = _positional_names(forward)
        unknown = [n for n in args.wrt or () if names is not None and n not in names]
        if unknown:
            raise _UsageError(
                f"--wrt {','.join(args.wrt)}: {unknown} are not parameters of forward "
                f"({', '.join(names or [])})"
            )
        dout = _load_dout(args.dout) if args.dout else None
        try:
            return check_layer(
                forward, backward, *layer_args, dout=dout, wrt=args.wrt, **_options(args)
            )
        except JaxcheckError as err:
            raise _usage_error(err) from err


def _heading(title: str) -> None:
    _write(f"\n{title}\n{'=' * len(title)}")


def _bullets(*paragraphs: str) -> None:
    for text in paragraphs:
        _write(textwrap.fill(text, width=_WIDTH, initial_indent="• ", subsequent_indent="  "))


def _run_demo(args: argparse.Namespace) -> int:
    del args  # The demo has no options.
    _heading("1. The classic 1-D check: J(θ) = θx at x = 2, θ = 4")
    _write("lesson.gradient_check(2, 4): one central difference with ε = 1e-7, threshold 1e-7")
    lesson.gradient_check(2, 4)

    X, Y, params = lesson.gradient_check_n_test_case()
    cost_value, cache = lesson.forward_propagation_n(X, Y, params)
    n_params = sum(p.size for p in params.values())

    def cost(p: dict[str, np.ndarray]) -> tuple[float, tuple[np.ndarray, ...]]:
        return lesson.forward_propagation_n(X, Y, p)

    def grad_buggy(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return lesson.backward_propagation_n_buggy(X, Y, lesson.forward_propagation_n(X, Y, p)[1])

    def grad_fixed(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return lesson.backward_propagation_n(X, Y, lesson.forward_propagation_n(X, Y, p)[1])

    def jax_cost(p: dict[str, Any]) -> Any:
        return lesson.forward_propagation_n_jax(X, Y, p)

    _heading("2. The classic N-D check: lesson.gradient_check_n (ε = 1e-7, threshold 1e-7)")
    _write(
        f"LINEAR→RELU→LINEAR→RELU→LINEAR→SIGMOID: {n_params} parameters, {X.shape[1]} "
        f"examples, 2×{n_params} forward passes in a Python loop."
    )
    _write("\nWith the lesson's buggy backprop (dW2 ×2, db1 ×4):")
    classic_buggy = lesson.gradient_check_n(params, grad_buggy(params), X, Y)
    _write("\nWith the fixed backprop:")
    classic_fixed = lesson.gradient_check_n(params, grad_fixed(params), X, Y)
    _write("← a false alarm: this backprop is correct (see 4).")

    _heading("3. jaxcheck: backprop vs finite differences vs jax.grad, per parameter")
    _write(
        "jc.check(cost, grad, params, jax_cost=lambda p: lesson.forward_propagation_n_jax(X, Y, p))"
    )
    options: dict[str, Any] = {"jax_cost": jax_cost, "progress": False}
    buggy = run_check(cost, grad_buggy, params, **options)
    _write("\nThe buggy backprop:")
    _write(str(buggy))
    fixed = run_check(cost, grad_fixed, params, **options)
    _write("\nThe fixed backprop:")
    _write(str(fixed))

    _heading("4. Why the classic check flags the fixed backprop: rounding, not a bug")
    lesson_eps = 1e-7
    fixed_at_lesson_eps = run_check(cost, grad_fixed, params, eps=lesson_eps, **options)
    buggy_at_lesson_eps = run_check(cost, grad_buggy, params, eps=lesson_eps, **options)
    u = float(np.finfo(np.float64).eps)
    default_step = float(np.cbrt(u))
    j = abs(float(cost_value))
    # J's worst-conditioned term is log(1 - A3) for a label-0 example whose A3 is near 1: there
    # 1 - A3 cancels, and J's rounding error grows from u·|J| to about u / (m (1 - A3)).
    m = X.shape[1]
    gaps = np.where(np.ravel(Y) == 0, 1 - np.ravel(cache[9]), np.inf)
    worst = int(np.argmin(gaps))
    rounding = max(u * j, u / (m * float(gaps[worst])))
    _bullets(
        f"Backprop agrees with jax.grad of the JAX twin to {fixed.difference_autodiff:.1e} "
        f"(report.difference_autodiff): the fixed backprop is right to float64 rounding.",
        f"jc.check(..., eps={lesson_eps:g}) reproduces the classic number, backprop vs finite "
        f"differences = {fixed_at_lesson_eps.difference_fd:.3g} (classic: {classic_fixed:.3g}), "
        f"and its verdict is still "
        f"{'correct' if fixed_at_lesson_eps.ok else 'WRONG'}: jaxcheck estimates the error of "
        f"the finite differences at that step (the 'fd error' column) and does not blame "
        f"backprop for it.",
        f"That error is rounding. J(θ ± ε) carries a rounding error of at least u·|J| = "
        f"{u:.1e} × {j:.3g} = {u * j:.1e}; here about u/(m(1 − A3)) = {rounding:.1e}, because "
        f"1 − A3 = {gaps[worst]:.3g} for example {worst + 1} (label 0) cancels in log(1 − A3). "
        f"Dividing by 2ε = {2 * lesson_eps:g} turns that into errors of up to "
        f"{rounding / lesson_eps:.0e} per coordinate. Truncation error, ∝ ε², is negligible "
        f"at this step.",
        f"Rounding error shrinks as 1/ε. jaxcheck's default step, ∛u·max(1, |θ|) ≥ "
        f"{default_step:.2e}, is {default_step / lesson_eps:.0f}× larger, and backprop vs "
        f"finite differences drops to {fixed.difference_fd:.2e} (1/ε scaling predicts "
        f"{fixed_at_lesson_eps.difference_fd * lesson_eps / default_step:.2e}). A bug does not "
        f"shrink with ε: the buggy backprop scores {buggy_at_lesson_eps.difference_fd:.3g} at "
        f"ε = {lesson_eps:g} and {buggy.difference_fd:.3g} at the default step (classic: "
        f"{classic_buggy:.3g}).",
    )
    return EXIT_CORRECT


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    _write(str(code), sys.stderr)
    return 1


def _wants_json(argv: Sequence[str]) -> bool:
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in options


def _fail(
    code: int,
    kind: str,
    message: str,
    hint: str | None,
    stdout: TextIO,
    as_json: bool,
    *,
    named: bool = False,
) -> int:
    """Reports a run that gave no verdict: on stderr, and as the JSON object with ``--json``.

    ``named`` starts the message on stderr with ``kind`` (``ReimplementationError: ...``).
    """
    text = f"{kind}: {message}" if named else message
    if hint:
        # The hint ends the paragraph, or follows a traceback on a line of its own.
        text += f"\n{hint}" if "\n" in text else f" {hint}"
    _write(f"jaxcheck: error: {text}", sys.stderr)
    if as_json:
        error = {"class": kind, "message": message, "hint": hint}
        _write(json.dumps({"ok": None, "exit_code": code, "error": error}, indent=2), stdout)
    return code


def _run(args: argparse.Namespace, stdout: TextIO) -> int:
    """Runs the chosen subcommand and prints its report; returns the exit code."""
    if args.command == "demo":
        return args.run(args)
    if args.json:
        with _stdout_to_stderr():
            report = args.run(args)
    else:
        report = args.run(args)
    code = EXIT_CORRECT if report.ok else EXIT_WRONG
    if args.json:
        _write(json.dumps({**report.to_dict(), "exit_code": code}, indent=2), stdout)
    else:
        _write(_in_cli_words(str(report)), stdout)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(argv)
    stdout = sys.stdout
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        return _fail(EXIT_USAGE, err.kind, str(err), err.hint, stdout, as_json)
    except SystemExit as exit_:  # --help, --version
        return _exit_code(exit_.code)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args, stdout)
    except _UsageError as err:
        named = err.kind not in ("UsageError", "SystemExit")
        return _fail(EXIT_USAGE, err.kind, str(err), err.hint, stdout, as_json, named=named)
    except SystemExit as exit_:
        # jaxcheck itself never exits here: the user's code did, and its code is no verdict.
        return _fail(EXIT_USAGE, "SystemExit", _describe_exit(exit_), _EXIT_HINT, stdout, as_json)
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "KeyboardInterrupt", "interrupted", None, stdout, as_json)
    except BaseException as err:
        # Not exit 1, which means "the gradient is wrong".
        traceback.print_exc()
        message = f"{args.command} crashed with {type(err).__name__}: {err}"
        hint = (
            "If your functions run fine on their own, this is a bug in jaxcheck; please report "
            "it with the traceback above."
        )
        return _fail(EXIT_CRASH, type(err).__name__, message, hint, stdout, as_json)
