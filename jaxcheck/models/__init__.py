"""A zoo of NumPy networks with hand-written backprops, their JAX twins, and named bugs.

Used by tests, notebooks and benchmarks to show that jaxcheck catches a bug and names the leaves
it breaks: ``make(name)`` builds a :class:`Model`, whose ``bugs`` each declare those leaves.
"""

from __future__ import annotations

from jaxcheck.models._base import Bug as Bug
from jaxcheck.models._base import Model as Model
from jaxcheck.models._zoo import make as make
from jaxcheck.models._zoo import names as names

__all__ = ["Bug", "Model", "make", "names"]
