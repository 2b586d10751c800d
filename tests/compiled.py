"""``jit``: ``jax.jit`` for the tests' own reference programs, compiled as jaxcheck compiles its
small ones.

On a CPU, without LLVM's optimisation passes and XLA's fusion emitters, a program runs the same
operations and compiles in about a quarter of the time; the quick test command compiles hundreds
of these small programs, and each runs once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def jit(fn: Callable[..., Any], **options: Any) -> Any:
    """``jax.jit(fn, **options)``, compiled fast on a CPU."""
    if jax.default_backend() == "cpu":
        options.setdefault("compiler_options", FAST)
    return jax.jit(fn, **options)
