"""Positional arguments as leaves: one rule for naming them, used by every door that takes them.

``check_layer`` names forward's arguments, ``check_rule`` the function's, ``jaxcheck.torch`` the
Function's forward's: all by the parameter names of the callable, ``*args`` as ``args0, args1``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

__all__ = ["argument_names"]


def argument_names(f: Callable, count: int) -> list[str]:
    """Names for ``count`` positional arguments of ``f``: its parameter names where it has them.

    ``*args`` parameters give ``args0``, ``args1``, ...; a callable without a signature gives
    ``arg0``, ``arg1``, ...

    Examples:
        >>> argument_names(lambda x, beta: x * beta, 2)
        ['x', 'beta']
        >>> argument_names(lambda x, *rest: x, 3)
        ['x', 'rest0', 'rest1']
    """
    try:
        parameters = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    names: list[str] = []
    for p in parameters:
        if len(names) == count:
            break
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            names += [f"{p.name}{k}" for k in range(count - len(names))]
    names += [f"arg{k}" for k in range(len(names), count)]
    return names
