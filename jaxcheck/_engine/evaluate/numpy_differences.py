"""Finite differences of the user's NumPy cost itself, one perturbed point at a time.

The two-way check, for when no JAX twin can be had: the same probes, steps and error estimates
as the batched evaluation of the twin, but each point is a call into the user's cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxcheck._engine.evaluate.finite_differences import Evaluation
from jaxcheck._engine.evaluate.plan import Group
from jaxcheck._engine.evaluate.programs import terminal_bar
from jaxcheck._engine.system.params import Leaves, scalar_cost
from jaxcheck._engine.system.prepare import call_user

__all__ = ["evaluate_numpy"]


def _unit(value: Any) -> float:
    dtype = np.asarray(value).dtype
    if np.issubdtype(dtype, np.floating):
        return float(max(np.finfo(dtype).eps, np.finfo(np.float64).eps))
    return float(np.finfo(np.float64).eps)


def evaluate_numpy(
    cost: Callable[[Any], Any],
    leaves: Leaves,
    leaves64: Sequence[np.ndarray],
    groups: Sequence[Group],
    *,
    backprop: Sequence[np.ndarray],
    progress: bool | None = None,
) -> tuple[float, list[Evaluation]]:
    """The NumPy cost at θ (float64 params) and at every perturbed point of ``groups``.

    Args:
        cost: the user's cost, ``params -> float`` (or a tuple led by it).
        leaves: the flattened params (for their structure).
        leaves64: float64 copies of the leaves, the point θ.
        groups: the probe groups to evaluate.
        backprop: the user's gradient leaves (projected onto directions).
        progress: a progress bar over the calls; ``None``: only on a terminal.

    Returns:
        ``(cost at θ, one Evaluation per group)``.
    """
    total = sum(_calls(g) for g in groups)
    bar = terminal_bar(
        progress, total, worth=total > 200, desc="jaxcheck (NumPy cost)", unit="call"
    )

    def at(moved: dict[int, np.ndarray]) -> tuple[float, float]:
        values = [moved.get(i, v).copy() for i, v in enumerate(leaves64)]
        out = call_user(cost, leaves.unflatten(values), "cost")
        if bar is not None:
            bar.update(1)
        raw = out[0] if isinstance(out, (tuple, list)) and out else out
        return scalar_cost(out, what="cost(params) at a perturbed point"), _unit(raw)

    try:
        value, unit = at({})
        evaluations = [_evaluate(group, leaves64, backprop, at, unit) for group in groups]
    finally:
        if bar is not None:
            bar.close()
    return value, evaluations


def _calls(group: Group) -> int:
    probe = group.probe
    per = 4 if probe.kind == "coordinate" and probe.double else 2
    return per * probe.count


def _evaluate(
    group: Group,
    leaves64: Sequence[np.ndarray],
    backprop: Sequence[np.ndarray],
    at: Callable[[dict[int, np.ndarray]], tuple[float, float]],
    unit: float,
) -> Evaluation:
    probe = group.probe
    n = probe.count
    up, down = np.empty(n), np.empty(n)
    up2 = down2 = None
    proj_bp = None
    units = [unit]
    if probe.kind == "coordinate":
        multiples = (1, -1, 2, -2) if probe.double else (1, -1)
        values = np.empty((len(multiples), n))
        for k in range(n):
            i, j = int(group.owner[k]), int(group.local[k])
            for m, mult in enumerate(multiples):
                flat = leaves64[i].reshape(-1).copy()
                step = probe.steps()[0 if mult > 0 else 1][k]
                flat[j] += mult * step
                values[m, k], u = at({i: flat.reshape(leaves64[i].shape)})
                units.append(u)
        up, down = values[0], values[1]
        if probe.double:
            up2, down2 = values[2], values[3]
        steps_up, steps_down = probe.steps()
    else:
        i = probe.leaves[0]
        x = leaves64[i].reshape(-1)
        if probe.kind == "vector":
            vectors = np.asarray(probe.vectors, np.float64)
        else:
            vectors = np.stack(
                [_direction(probe.seed, int(d), x.size) * probe.step for d in np.asarray(probe.ids)]
            )
        bp = np.asarray(backprop[i], np.float64).reshape(-1)
        for k in range(n):
            up[k], u1 = at({i: (x + vectors[k]).reshape(leaves64[i].shape)})
            down[k], u2 = at({i: (x - vectors[k]).reshape(leaves64[i].shape)})
            units += [u1, u2]
        if probe.kind == "vector":
            steps_up = steps_down = np.ones(n)
        else:
            # The displacement actually applied, as in the batched evaluation.
            applied = ((x + vectors) - x + (x - (x - vectors))) / (2 * probe.step)
            proj_bp = applied @ bp
            steps_up = steps_down = np.full(n, probe.step)
    return Evaluation(
        up,
        down,
        steps_up,
        steps_down,
        up2,
        down2,
        None if proj_bp is None else np.full(n, np.nan),
        proj_bp,
        1,
        max(units),
    )


def _direction(seed: int, index: int, size: int) -> np.ndarray:
    v = np.random.default_rng([seed, index]).standard_normal(size)
    return v / np.linalg.norm(v)
