"""A compiled program as the bytes of its XLA executable, and back, without pickle.

JAX's own ``serialize_executable`` pickles the Python side of a program (its shardings, layouts,
pytrees) around the executable. Here only XLA's executable is kept; everything else is rebuilt
from a fresh lowering of the same program, exactly as ``Lowered.compile()`` builds it, with the
stored executable in place of the compiler's output. This leans on JAX internals
(``pxla.MeshComputation``, ``UnloadedMeshExecutable.from_hlo``); anything unexpected raises, and
the caller compiles instead.
"""

from __future__ import annotations

import types
from typing import Any

import jax
from jax._src.interpreters import pxla

__all__ = ["rebuild", "to_bytes"]


def to_bytes(compiled: Any) -> bytes | None:
    """The executable of ``compiled`` (a ``jax.stages.Compiled``) as bytes, or None.

    None when the program cannot be rebuilt from a lowering alone: not a single-program
    executable, or one that closes over constants or calls back to the host.
    """
    executable = getattr(compiled, "_executable", None)
    if not isinstance(executable, pxla.MeshExecutable):
        return None
    unloaded = getattr(executable, "_unloaded_executable", None)
    if unloaded is None or unloaded.host_callbacks or getattr(unloaded, "mut", None):
        return None
    if getattr(getattr(compiled, "_params", None), "const_args", None):
        return None
    xla = executable.xla_executable
    if hasattr(xla, "serialize"):
        return bytes(xla.serialize())
    return bytes(unloaded.backend.serialize_executable(xla))


def rebuild(lowered: Any, payload: bytes) -> Any:
    """The ``jax.stages.Compiled`` that ``lowered.compile()`` gives, around a stored executable.

    Args:
        lowered: the ``jax.stages.Lowered`` of the program the executable was compiled from.
        payload: the bytes :func:`to_bytes` gave for it.

    Raises:
        TypeError: the lowering is not a single-program one this module knows how to rebuild.
        Exception: whatever XLA raises on bytes it cannot load.
    """
    computation = lowered._lowering
    if not isinstance(computation, pxla.MeshComputation) or computation.const_args:
        raise TypeError(f"cannot rebuild a {type(computation).__name__} from an executable")
    args = computation.compile_args
    if args["host_callbacks"]:
        raise TypeError("cannot rebuild a program that calls back to the host")
    devices = computation._device_list
    executable = args["backend"].deserialize_executable(payload, devices)
    build = _from_hlo_with(executable)
    mesh_executable = build(
        computation._name,
        computation._hlo,
        **args,
        compiler_options_kvs=computation._compiler_options_kvs,
        device_list=devices,
    )
    return jax.stages.Compiled(
        mesh_executable,
        computation.const_args,
        lowered.args_info,
        lowered.out_tree,
        lowered._no_kwargs,
        lowered._in_types,
        lowered._out_types,
    )


def _from_hlo_with(executable: Any) -> Any:
    """``UnloadedMeshExecutable.from_hlo`` whose compilation step returns ``executable``.

    A copy of the function with its own globals, so nothing shared is patched: other threads
    compiling at the same time are untouched.
    """
    original = pxla.UnloadedMeshExecutable.from_hlo
    scope = dict(original.__globals__, _cached_compilation=lambda *_, **__: executable)
    copy = types.FunctionType(
        original.__code__, scope, original.__name__, original.__defaults__, original.__closure__
    )
    copy.__kwdefaults__ = original.__kwdefaults__
    return copy
