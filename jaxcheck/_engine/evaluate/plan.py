"""What to perturb: the probe groups of a check, from its method, and the steps to take.

Small leaves share one probe group (one vmapped program for all of them); each large leaf has
its own, so that only that leaf is batched and it can be evaluated incrementally.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxcheck._engine.evaluate.finite_differences import INCREMENTAL_MIN_SIZE, Probe
from jaxcheck._engine.options import Options
from jaxcheck._engine.verdict.classify import U64
from jaxcheck.errors import InputError

__all__ = [
    "Group",
    "SMALL_CHECK",
    "coordinate_probes",
    "default_step",
    "direction_step",
    "plan",
]

#: Checks with at most this many probed coordinates evaluate ±2h with ±h in one program, so a
#: small check compiles once and never needs a second pass for error estimates.
SMALL_CHECK = 4096


def default_step(theta: np.ndarray) -> np.ndarray:
    """The default central-difference step per coordinate: ∛u · max(1, |θᵢ|) in float64.

    The cube root of machine epsilon balances truncation error (∝ h²) against rounding error
    (∝ u/h) of a central difference.

    Examples:
        >>> import numpy as np
        >>> default_step(np.array([0.5, -10.0]))
        array([6.05545445e-06, 6.05545445e-05])
    """
    return np.cbrt(U64) * np.maximum(1.0, np.abs(np.asarray(theta, np.float64)))


@dataclasses.dataclass(frozen=True)
class Group:
    """A probe and, per probe, the leaf it perturbs and the flat index within that leaf."""

    probe: Probe
    owner: np.ndarray
    local: np.ndarray


def _sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    edges = np.linspace(0, n, k + 1).astype(np.int64)
    return np.sort(rng.integers(edges[:-1], edges[1:]))


def _bucket(n: int) -> int:
    return max(8, 1 << (int(n) - 1).bit_length())


def coordinate_probes(
    leaves: Sequence[np.ndarray],
    paths: Sequence[str],
    chosen: dict[int, np.ndarray],
    eps: float | None,
    *,
    double: bool,
    pad: bool = False,
    group_small: bool = True,
) -> list[Group]:
    """Coordinate probes for ``chosen`` (leaf index → flat indices), small leaves grouped.

    Args:
        leaves: the float64 leaves.
        paths: their paths (for errors).
        chosen: which entries to perturb, per leaf.
        eps: the forced step, or None for :func:`default_step`.
        double: also evaluate at twice the step.
        pad: pad each group to a power of two (repeating its first probe), so that programs
            for re-evaluations of varying size are reused.
        group_small: evaluate the leaves below ``INCREMENTAL_MIN_SIZE`` together in one group
            (False: one group per leaf, so each can be evaluated incrementally).

    Raises:
        InputError: the step underflows (θ + eps == θ) somewhere.
    """
    small = [
        i
        for i in sorted(chosen)
        if group_small and leaves[i].size < INCREMENTAL_MIN_SIZE and chosen[i].size
    ]
    large = [i for i in sorted(chosen) if i not in small and chosen[i].size]
    groups = []
    for members in ([small] if small else []) + [[i] for i in large]:
        offsets = np.cumsum([0] + [leaves[i].size for i in members])
        coords, owner, local, up, down = [], [], [], [], []
        for i, offset in zip(members, offsets[:-1]):
            idx = np.asarray(chosen[i], np.int64)
            x = leaves[i].reshape(-1)[idx]
            h = default_step(x) if eps is None else np.full(x.shape, float(eps))
            step_up, step_down = (x + h) - x, x - (x - h)
            bad = np.flatnonzero((step_up <= 0) | (step_down <= 0))
            if bad.size:
                where = tuple(int(k) for k in np.unravel_index(idx[bad[0]], leaves[i].shape))
                raise InputError(
                    f"eps={eps!r} is too small for leaf {paths[i]!r}: θ + eps == θ in float64 at "
                    f"index {where} (θ = {x[bad[0]]!r}), so the step underflows. Use eps ≥ "
                    f"{float(np.spacing(abs(x[bad[0]])) * 1e3):.1e}, or eps=None for jaxcheck's "
                    f"default step."
                )
            coords.append(idx + offset)
            owner.append(np.full(idx.size, i))
            local.append(idx)
            up.append(step_up)
            down.append(step_down)
        arrays = [np.concatenate(a) for a in (coords, owner, local, up, down)]
        if pad:
            size = _bucket(arrays[0].size)
            arrays = [np.concatenate([a, np.repeat(a[:1], size - a.size)]) for a in arrays]
        coord, own, loc, su, sd = arrays
        probe = Probe(tuple(members), "coordinate", coord.size, coord, su, sd, double=double)
        groups.append(Group(probe, own, loc))
    return groups


def plan(leaves: Sequence[np.ndarray], paths: Sequence[str], options: Options) -> list[Group]:
    """The probe groups of a check.

    ``full`` perturbs every coordinate, ``sample`` a stratified, seeded sample per leaf, and
    ``directional`` random unit directions per leaf (every coordinate of a leaf smaller than
    ``INCREMENTAL_MIN_SIZE`` or than the number of directions, where that is cheaper and exact).
    """
    chosen: dict[int, np.ndarray] = {}
    directions = []
    for i, theta in enumerate(leaves):
        n = theta.size
        if options.method == "full":
            chosen[i] = np.arange(n)
        elif options.method == "sample":
            chosen[i] = _sample(
                n, options.samples_per_leaf, np.random.default_rng([options.seed, i])
            )
        elif n <= options.directions_per_leaf or n < INCREMENTAL_MIN_SIZE:
            # Every coordinate of a small leaf costs no more than its directions, and small
            # leaves share one program (hundreds of them compile once).
            chosen[i] = np.arange(n)
        else:
            directions.append(i)
    total = sum(c.size for c in chosen.values())
    groups = coordinate_probes(
        leaves,
        paths,
        chosen,
        options.eps,
        double=total <= SMALL_CHECK,
        group_small=options.incremental is not True,
    )
    for i in directions:
        count = options.directions_per_leaf
        probe = Probe(
            (i,),
            "direction",
            count,
            step=direction_step(leaves[i], options.eps),
            seed=options.seed + i,
            ids=np.arange(count),
        )
        groups.append(Group(probe, np.full(count, i), np.arange(count)))
    return groups


def direction_step(theta: np.ndarray, eps: float | None) -> float:
    """The step along a random unit direction: ∛u · max(1, rms θ), or ``eps``."""
    if eps is not None:
        return float(eps)
    rms = float(np.sqrt(np.mean(np.square(theta)))) if theta.size else 0.0
    return float(np.cbrt(U64) * max(1.0, rms))
