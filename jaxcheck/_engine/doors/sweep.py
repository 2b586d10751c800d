"""Finite-difference error against the step size: the V-shaped curve behind the default step.

Truncation error shrinks like h² as the step falls; rounding error grows like u/h. Their sum is
smallest near the cube root of machine epsilon, which is where ``jc.check`` steps by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxcheck._engine.doors.pipeline import Evaluator, RunRecord
from jaxcheck._engine.evaluate.plan import default_step, plan
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.prepare import prepare
from jaxcheck._engine.verdict import classify as vd
from jaxcheck.errors import InputError

__all__ = ["StepSweep", "step_sweep"]


@dataclasses.dataclass
class StepSweep:
    """Differences of finite differences against the other opinions, per step size.

    Attributes:
        steps: the steps tried, ascending.
        difference_fd: classic difference of backprop vs finite differences at each step.
        difference_fd_autodiff: classic difference of finite differences vs ``jax.grad``.
        best_step: the step with the smallest finite-difference vs autodiff difference.
        default_step: jaxcheck's default step for a parameter of magnitude ≤ 1.
    """

    steps: np.ndarray
    difference_fd: np.ndarray
    difference_fd_autodiff: np.ndarray
    best_step: float
    default_step: float

    def __str__(self) -> str:
        lines = ["step       bp vs fd   fd vs ad"]
        for h, a, b in zip(self.steps, self.difference_fd, self.difference_fd_autodiff):
            lines.append(f"{h:.1e}    {a:.2e}   {b:.2e}")
        lines.append(f"best step {self.best_step:.1e} (jaxcheck's default {self.default_step:.1e})")
        return "\n".join(lines)

    def plot(self, ax: Any = None) -> Any:
        """A log-log plot of both differences against the step; returns the figure."""
        from jaxcheck.plotting import plot_step_sweep

        return plot_step_sweep(
            self.steps,
            {
                "backprop vs finite differences": self.difference_fd,
                "finite differences vs autodiff": self.difference_fd_autodiff,
            },
            ax=ax,
            default_step=self.default_step,
        )


def step_sweep(
    cost: Callable,
    grad: Callable,
    params: Any,
    *,
    jax_cost: Callable | None = None,
    steps: Sequence[float] | None = None,
    method: str = "full",
    samples: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    memory_budget: int | None = None,
) -> StepSweep:
    """Measures how the finite-difference error depends on the step size.

    Runs the system under test once, then evaluates central differences of the twin at every
    step (one compiled program, reused for all steps) and compares them with backprop and with
    ``jax.grad``.

    Args:
        cost: ``params -> float`` in NumPy.
        grad: ``params -> gradient`` in NumPy.
        params: a pytree of float arrays.
        jax_cost: the JAX twin of ``cost``; ``None`` ports it.
        steps: the steps to try; ``None``: 23 steps from 1e-12 to 1e-1.
        method: ``"full"`` or ``"sample"``.
        samples: coordinates per leaf for ``method="sample"``.
        seed: seeds the sample.
        batch_size: perturbations per batch, as in :func:`jaxcheck.check`.
        memory_budget: bytes per batch, as in :func:`jaxcheck.check`.

    Returns:
        A :class:`StepSweep`.

    Raises:
        InputError: bad steps or method, and everything :func:`jaxcheck.check` raises.

    Examples:
        >>> import numpy as np
        >>> import jaxcheck as jc
        >>> p = {"w": np.array([0.3, 0.7])}
        >>> sweep = jc.step_sweep(
        ...     lambda p: float(np.sum(np.sin(p["w"]))),
        ...     lambda p: {"w": np.cos(p["w"])},
        ...     p,
        ...     steps=[1e-9, 1e-5, 1e-1],
        ... )
        >>> bool(sweep.difference_fd[1] < min(sweep.difference_fd[0], sweep.difference_fd[2]))
        True
    """
    if method not in ("full", "sample"):
        raise InputError(f"step_sweep supports method='full' or 'sample', not {method!r}.")
    grid = np.sort(np.asarray(np.logspace(-12, -1, 23) if steps is None else steps, float))
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
        raise InputError(f"steps must be a non-empty list of positive floats, got {grid!r}.")
    base = Options(
        method=method,
        samples=samples,
        seed=seed,
        batch_size=batch_size,
        memory_budget=memory_budget,
        twin="required",
    )
    system = prepare(cost, grad, params, jax_cost, base)
    evaluator = Evaluator(system, base, RunRecord(system.twin, system.twin_error))
    diff_bp: list[float] = []
    diff_ad: list[float] = []
    with jax.enable_x64(True):
        for h in grid:
            options = dataclasses.replace(base, eps=float(h))
            groups = plan(system.leaves64, system.leaves.paths, options)
            _, gradient, evals = evaluator(groups, with_gradient=True)
            assert gradient is not None and system.backprop is not None  # both asked for
            parts: list[np.ndarray] = []
            bp: list[float] = []
            ad: list[float] = []
            for group, e in zip(groups, evals):
                n = group.probe.count
                parts.append((e.up - e.down) / (e.step_up + e.step_down))
                for owner, local in zip(group.owner[:n], group.local[:n]):
                    bp.append(float(system.backprop[owner].reshape(-1)[local]))
                    ad.append(float(gradient[owner].reshape(-1)[local]))
            fd = np.concatenate(parts)
            diff_bp.append(vd.relative_difference(np.array(bp), fd))
            diff_ad.append(vd.relative_difference(fd, np.array(ad)))
    finite = np.where(np.isfinite(diff_ad), diff_ad, np.inf)
    return StepSweep(
        steps=grid,
        difference_fd=np.array(diff_bp),
        difference_fd_autodiff=np.array(diff_ad),
        best_step=float(grid[int(np.argmin(finite))]),
        default_step=float(default_step(np.zeros(1))[0]),
    )
