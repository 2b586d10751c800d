"""Messages for what cannot be ported: the function, file, line and source, why, and what to do.

Where a value JAX is tracing causes the failure, the message names that value and the line where
it was computed, so the user knows which line to change, not just which line failed.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import functools
import linecache
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

import jax

from jaxcheck.errors import PortError
from jaxcheck.port import _dispatch as dispatch
from jaxcheck.port import _source as source
from jaxcheck.port._branches import BranchMergeError
from jaxcheck.port._masked import MaskedSelectionError
from jaxcheck.port._runtime import CALLEE, QUALNAMES, Overlay

ADVICE = (
    "Pass `jax_cost=` to `jc.check` (a JAX version of your cost, written with jax.numpy) "
    "instead of relying on the automatic port."
)
_BRANCH = (ast.If, ast.While, ast.Assert, ast.IfExp)
# The advice of the door that asked for the port (check_layer asks for jax_forward=).
_ADVICE: contextvars.ContextVar[str] = contextvars.ContextVar("jaxcheck_port_advice")


@contextlib.contextmanager
def advising(advice: str) -> Iterator[None]:
    """Port errors raised inside say ``advice`` (what to pass instead) in place of ``jax_cost=``."""
    token = _ADVICE.set(advice)
    try:
        yield
    finally:
        _ADVICE.reset(token)


def advice() -> str:
    return _ADVICE.get(ADVICE)


def port_error(message: str) -> PortError:
    error = PortError(message)
    error.hint = advice()  # the command line says it its own way
    return error


def innermost_ported_frame(tb: types.TracebackType | None) -> tuple[types.FrameType, int] | None:
    """The innermost frame of ported user code in a traceback, and its line."""
    found = None
    while tb is not None:
        if isinstance(tb.tb_frame.f_globals, Overlay) and tb.tb_lineno is not None:
            found = (tb.tb_frame, tb.tb_lineno)
        tb = tb.tb_next
    return found


def runtime_message(err: Exception, frame: types.FrameType, lineno: int, target: str) -> str:
    """The message of the PortError for ``err``, raised while ported code ran ``frame``."""
    overlay: Overlay = frame.f_globals  # type: ignore[assignment]
    code = frame.f_code
    qualname = getattr(code, "co_qualname", None)
    if qualname is None:  # Python 3.10
        known = QUALNAMES.get(id(code))
        qualname = known[1] if known is not None and known[0] is code else code.co_name
    module = overlay.user.get("__name__")
    where = f"{module}.{qualname}" if isinstance(module, str) else qualname
    if isinstance(err, BranchMergeError) and err.line is not None:
        lineno = err.line  # the `if`, not the branch's last line
    source = linecache.getline(code.co_filename, lineno, overlay.user).strip()
    header = f"jaxcheck could not run `{where}` on jax.numpy"
    if target != where:
        header += f" (called by the port of `{target}`)"
    lines = [f"{header}:", f'  File "{code.co_filename}", line {lineno}, in {qualname}']
    if source:
        lines.append(f"    {source}")
    lines.append(_explain(err, frame, lineno, source, overlay.translate))
    if not isinstance(err, (BranchMergeError, MaskedSelectionError)):  # said in full above
        module = type(err).__module__
        origin = "JAX raised" if module.split(".")[0] in ("jax", "jaxlib") else "It raised"
        lines.append(f"{origin} {type(err).__name__}: {_first_line(err)}")
    lines.append(advice())
    return "\n".join(lines)


def _explain(err: Exception, frame: types.FrameType, lineno: int, source: str, raw: bool) -> str:
    """Why the line cannot run on jax.numpy, in plain words, and what to change."""
    callee = getattr(err, CALLEE, None)
    traced = _traced_values(frame, lineno)
    if raw and _is_inplace(err, source):
        return (
            "It assigns into an array in place (`x[...] = ...`). jaxcheck runs such code on JAX "
            "by rewriting its source, but it could not read the source of this function (or "
            "the file changed since it was imported), and JAX arrays are immutable."
        )
    if isinstance(err, MaskedSelectionError):
        return str(err)
    if isinstance(err, BranchMergeError):
        return str(err)
    if isinstance(err, jax.errors.NonConcreteBooleanIndexError):
        return (
            f"It selects elements with a boolean mask{traced}, so the size of the result "
            "depends on values JAX does not know while it traces the function. Keep the shape "
            "instead: `np.where(mask, x, 0)` (and sum that) in place of `x[mask]`."
        )
    if isinstance(err, jax.errors.TracerBoolConversionError):
        text = (
            f"Python control flow (`if`, `while`, `and`, `or`) here depends on a "
            f"value{traced}. Such values are not known while JAX traces the function, so Python "
            f"cannot choose a branch. Compute both branches and choose with "
            f"`np.where(condition, a, b)`, or make the condition depend on data and shapes only."
        )
        if source.startswith(("if ", "elif ")):
            text += (
                " (jaxcheck computes both branches itself when they only assign variables; "
                "this `if` also returns, breaks, raises, calls something for its effect, or "
                "assigns to attributes or globals.)"
            )
        return text
    if isinstance(err, jax.errors.TracerIntegerConversionError):
        return (
            f"A value{traced} is used as a Python integer (an index, a `range`, a shape), "
            f"which is not known while JAX traces the function. Compute integers from shapes "
            f"and data only (`x.shape[0]`, `len(y)`), not from the parameters."
        )
    if callee is not None and isinstance(
        err, (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError)
    ):
        name = describe(callee)
        needs = "a concrete number" if _is_builtin(callee) else "real NumPy arrays"
        return (
            f"`{name}` needs {needs}, but it is given a value{traced}. jaxcheck runs NumPy "
            f"(and `math`) calls on jax.numpy when JAX values come, but `{name}` is "
            f"neither: use a NumPy function instead, or keep `{name}` away from values that "
            f"depend on the parameters."
        )
    if isinstance(err, jax.errors.ConcretizationTypeError):
        return (
            f"Python needs a concrete value here, but it gets a value{traced}, which JAX is "
            f"tracing. Compute it with NumPy functions, which jaxcheck runs on jax.numpy."
        )
    if isinstance(err, jax.errors.TracerArrayConversionError):
        return (
            f"A value{traced} is passed to code that needs a real NumPy array: a compiled "
            "extension or another library. jaxcheck runs NumPy calls on jax.numpy only in your "
            "own code."
        )
    if isinstance(err, AttributeError):
        return _explain_attribute(err)
    entry = getattr(err, dispatch.NUMPY_CALL, None)
    if entry is not None:
        text = (
            f"`{describe(entry[0])}` is given a value{traced}, so jaxcheck runs its jax.numpy "
            f"counterpart `{describe(entry[1])}`, which rejects these arguments"
        )
        if entry[3]:
            return (
                f"{text}, while NumPy accepts arguments of these shapes: jax.numpy lacks this use "
                f"of it or treats it differently."
            )
        return f"{text}; NumPy rejects arguments of these shapes as well."
    return (
        "Running it on jax.numpy failed: it may use a NumPy feature that jax.numpy lacks or "
        "treats differently."
    )


def _traced_values(frame: types.FrameType, lineno: int) -> str:
    """ " computed from the parameters: `z`, on line 12 (`z = a @ w`)", or a plainer phrase."""
    names = _line_names(frame.f_code.co_filename, lineno, frame.f_globals)
    try:
        local = frame.f_locals
    except Exception:  # noqa: BLE001 - a frame that cannot show its locals
        local = {}
    culprits = [n for n in names if n in local and dispatch.has_jax(local[n])]
    if not culprits:
        return " computed from the parameters"
    described = [_origin(frame, lineno, name) for name in culprits[:3]]
    return " computed from the parameters: " + "; ".join(described)


def _origin(frame: types.FrameType, lineno: int, name: str) -> str:
    function = _enclosing_function(frame.f_code.co_filename, frame.f_globals, lineno)
    if function is None:
        return f"`{name}`"
    arguments = function.args
    every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
    if any(a.arg == name for a in every):
        return f"`{name}`, an argument of `{function.name}`"
    born = [
        node.lineno
        for node in ast.walk(function)
        if isinstance(node, ast.Name)
        and node.id == name
        and not isinstance(node.ctx, ast.Load)
        and node.lineno < lineno
    ]
    if not born:
        return f"`{name}`"
    line = max(born)
    source = linecache.getline(frame.f_code.co_filename, line, frame.f_globals).strip()
    return f"`{name}`, computed on line {line} (`{source}`)"


def _line_names(filename: str, lineno: int, module_globals: Any) -> list[str]:
    """The names read by the statement at ``lineno`` (by its condition, for an `if`)."""
    tree = _tree(filename, module_globals)
    if tree is None:
        return []
    statements = [
        node for node in ast.walk(tree) if isinstance(node, ast.stmt) and node.lineno == lineno
    ]
    if not statements:
        return []
    statement = statements[-1]
    part = statement.test if isinstance(statement, _BRANCH) else statement
    if isinstance(statement, (ast.For, ast.AsyncFor)):
        part = statement.iter
    names: list[str] = []
    for node in ast.walk(part):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in names:
            names.append(node.id)
    return names


def _enclosing_function(
    filename: str, module_globals: Any, lineno: int
) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    tree = _tree(filename, module_globals)
    found = None
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            end = getattr(node, "end_lineno", None) or node.lineno
            if node.lineno <= lineno <= end and (found is None or node.lineno > found.lineno):
                found = node
    return found


def _tree(filename: str, module_globals: Any) -> ast.Module | None:
    user = module_globals.user if isinstance(module_globals, Overlay) else module_globals
    return source.source_tree(filename, user)


def _is_builtin(fn: Any) -> bool:
    module = getattr(fn, "__module__", None) or getattr(type(fn), "__module__", "")
    return module in ("builtins", "math")


def _is_inplace(err: Exception, source: str) -> bool:
    if not (isinstance(err, TypeError) or isinstance(err, jax.errors.TracerArrayConversionError)):
        return False
    try:
        statement = ast.parse(source).body[0]
    except (SyntaxError, IndexError, ValueError):
        return False
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)):
        targets = [statement.target]
    else:
        return False
    return any(isinstance(t, ast.Subscript) for t in targets)


def _explain_attribute(err: AttributeError) -> str:
    name = getattr(err, "name", None)
    owner = getattr(err, "obj", None)
    match = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", str(err))
    module_name = owner.__name__ if isinstance(owner, types.ModuleType) else None
    if match is not None:
        module_name, name = module_name or match.group(1), name or match.group(2)
    if module_name is not None and module_name.startswith("jax.numpy"):
        numpy_name = "numpy" + module_name[len("jax.numpy") :] + f".{name}"
        return f"jax.numpy has no counterpart of `{numpy_name}`, so it cannot run on JAX."
    if isinstance(owner, jax.Array):
        return (
            f"JAX arrays have no `.{name}` (NumPy arrays do), so it cannot run on a value JAX "
            f"is tracing."
        )
    return "An attribute lookup failed when the code ran on jax.numpy."


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= 300 else text[:297] + "..."


def describe(obj: Any) -> str:
    """A user-facing name of a callable: ``module.qualname``.

    Examples:
        >>> describe(functools.partial(ast.parse, "x"))
        'functools.partial(ast.parse, ...)'
    """
    if isinstance(obj, functools.partial):
        return f"functools.partial({describe(obj.func)}, ...)"
    if isinstance(obj, types.MethodType):
        return describe(obj.__func__)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(name, str):
        return f"{type(obj).__module__}.{type(obj).__qualname__} object"
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):  # ufuncs (scipy.special.expit) do not say where they live
        module = _module_holding(obj, name)
    if module == "builtins":
        return name
    return f"{module}.{name}" if isinstance(module, str) else name


def _module_holding(obj: Any, name: str) -> str | None:
    """The public module that has ``obj`` under ``name`` (searched only to word a message)."""
    found = [
        module_name
        for module_name, module in list(sys.modules.items())
        if getattr(module, name, None) is obj
    ]
    found.sort(key=lambda m: (any(part.startswith("_") for part in m.split(".")), len(m)))
    return found[0] if found else None


def not_python_message(obj: Any) -> str:
    kind = "a class" if isinstance(obj, type) else f"a {type(obj).__module__}.{type(obj).__name__}"
    text = (
        f"jaxcheck cannot port `{describe(obj)}`: it is not a Python function (it is {kind}), "
        f"so there is no Python code of yours to run again on jax.numpy."
    )
    entry = dispatch.numpy_entry(obj)
    if entry is not None:
        text += f" Its JAX counterpart is `{describe(entry[1])}`."
    return f"{text} {advice()}"
