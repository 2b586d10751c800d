"""What the command line says: exit codes, messages on stderr, the ``--json`` object.

It also says what the user's code did when it exited or raised, in the user's files and lines.
"""

from __future__ import annotations

import contextlib
import json
import linecache
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Iterator, Sequence
from typing import TextIO

from jaxcheck.errors import JaxcheckError, PortError

#: Exit codes: the gradient is correct / wrong / the input is unusable / jaxcheck itself crashed /
#: interrupted (Ctrl-C).
EXIT_CORRECT, EXIT_WRONG, EXIT_USAGE, EXIT_CRASH, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# jaxcheck/, the package above this one: its frames are not the user's.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_JAX_COST_ADVICE = (
    "On the command line, pass the JAX twin as --jax-cost FILE:function (a jax.numpy function "
    "of params that computes the same cost)."
)
EXIT_HINT = (
    "The code jaxcheck runs must not exit: remove the exit call, or keep script code under "
    'if __name__ == "__main__":.'
)


class UsageError(Exception):
    """The check could not be run: printed as ``jaxcheck: error: ...``, exit 2.

    Attributes:
        kind: the ``error.class`` of the JSON output (``"UsageError"``, ``"PortError"``, ...).
        hint: what to do about it, or ``None``.
    """

    def __init__(self, message: str, *, kind: str = "UsageError", hint: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.hint = hint


# --------------------------------------------------------------------------------------------
# Whose code it was: frames of the user's files, of jaxcheck, of the libraries
# --------------------------------------------------------------------------------------------


def under(path: str, directories: Sequence[str]) -> bool:
    """Whether ``path``, resolved, is one of ``directories`` or lies inside one of them."""
    real = os.path.realpath(path)
    return any(real == d or real.startswith(d.rstrip(os.sep) + os.sep) for d in directories)


def _is_jaxcheck_frame(filename: str) -> bool:
    return filename.startswith("<frozen") or under(filename, [_PACKAGE_DIR])


def _is_user_frame(filename: str) -> bool:
    """Whether ``filename`` is the user's: neither jaxcheck, nor the stdlib, nor installed."""
    if filename.startswith("<") or _is_jaxcheck_frame(filename):
        return False
    paths = sysconfig.get_paths()
    libraries = [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]
    return not under(filename, [os.path.realpath(p) for p in libraries])


def user_traceback(err: BaseException) -> str:
    """The traceback of ``err`` without jaxcheck's and importlib's frames."""
    exc = traceback.TracebackException.from_exception(err)
    exc.stack = traceback.StackSummary.from_list(
        [f for f in exc.stack if not _is_jaxcheck_frame(f.filename)]
    )
    return "".join(exc.format())


def _shown(filename: str) -> str:
    relative = os.path.relpath(filename) if os.path.isabs(filename) else filename
    return filename if relative.startswith(os.pardir) else relative


def describe_exit(exit_: SystemExit) -> str:
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


# --------------------------------------------------------------------------------------------
# jaxcheck's errors and advice, said the command line's way
# --------------------------------------------------------------------------------------------


def in_cli_words(hint: str) -> str:
    """Rewrites advice written for the Python API (``jax_cost=``) in the command line's flags.

    Examples:
        >>> in_cli_words("pass jax_cost= to jc.check (a jax.numpy version of your cost)")
        'pass --jax-cost FILE:function (a jax.numpy version of your cost)'
        >>> in_cli_words("make jax_cost compute the same cost as cost")
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
        hint = in_cli_words(hint.strip())
        if isinstance(err, PortError) and "--jax-cost FILE:function" not in hint:
            hint = f"{hint} {_JAX_COST_ADVICE}"
        return hint
    if isinstance(err, PortError) or "jax_cost=" in str(err):
        return _JAX_COST_ADVICE
    return None


def usage_error(err: JaxcheckError) -> UsageError:
    """The exit-2 error for ``err``: its message, and its hint said the command line's way."""
    if isinstance(err.__cause__, SystemExit):
        # The library caught the user's exit; say where it was, as for an exit at import.
        return UsageError(describe_exit(err.__cause__), kind="SystemExit", hint=EXIT_HINT)
    message = str(err)
    hint = getattr(err, "hint", None)
    if isinstance(hint, str) and hint.strip() and hint in message:
        # Printed once, on its own, and in the command line's words.
        message = message.replace(hint, "").rstrip()
    return UsageError(message, kind=type(err).__name__, hint=_hint_for(err))


# --------------------------------------------------------------------------------------------
# Writing: standard output for the report, standard error for everything else
# --------------------------------------------------------------------------------------------


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
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


@contextlib.contextmanager
def json_stdout(*, to_the_end: bool) -> Iterator[TextIO]:
    """For ``--json``: yields the stream for the JSON object; all else written goes to stderr.

    ``sys.stdout`` (and file descriptor 1, when it is that) point at standard error, and the
    stream yielded writes to the original standard output. With ``to_the_end`` (the command
    line as a process) they stay so until the process ends, so that what the user's code prints
    from ``atexit`` handlers, or C code at exit, cannot follow the JSON object on stdout.
    """
    stdout = sys.stdout
    stdout.flush()
    if _fileno(stdout) != 1 or _fileno(sys.stderr) is None:
        with contextlib.redirect_stdout(sys.stderr):
            yield stdout
        if to_the_end:
            sys.stdout = sys.stderr
        return
    saved = os.dup(1)
    os.dup2(sys.stderr.fileno(), 1)
    encoding = getattr(stdout, "encoding", None) or "utf-8"
    out = os.fdopen(saved, "w", encoding=encoding, errors=getattr(stdout, "errors", None))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield out
    finally:
        with contextlib.suppress(Exception):
            out.flush()
        if to_the_end:
            sys.stdout = sys.stderr
            with contextlib.suppress(Exception):
                out.close()
        else:
            os.dup2(saved, 1)
            out.close()


def write(text: str, file: TextIO | None = None) -> None:
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


def exit_code(code: object) -> int:
    """The exit code of a ``SystemExit`` raised by argparse (``--help``, ``--version``)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    write(str(code), sys.stderr)
    return 1


def wants_json(argv: Sequence[str]) -> bool:
    """Whether ``--json`` is among the options, before any ``--``."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in options


def _separator(text: str, hint: str) -> str:
    """What goes between a one-line message and its hint, so that the line reads as prose.

    Examples:
        >>> "required: COST" + _separator("required: COST", "see jaxcheck --help") + "see ..."
        'required: COST; see ...'
        >>> _separator("No such file.", "Check the path.")
        ' '
    """
    if text.rstrip().endswith((".", "!", "?", ":")):
        return " "
    return "; " if hint[:1].islower() else ". "


def fail(
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
        text += f"\n{hint}" if "\n" in text else _separator(text, hint) + hint
    write(f"jaxcheck: error: {text}", sys.stderr)
    if as_json:
        error = {"class": kind, "message": message, "hint": hint}
        write(json.dumps({"ok": None, "exit_code": code, "error": error}, indent=2), stdout)
    return code
