"""The joint test of subgradients accepted one coordinate at a time at kinks.

Each entry on a kink may lie between its own one-sided slopes while the entries together are no
subgradient: a max-pool window with tied entries, whose backward sends the window's gradient to
every tied entry. Kinks that interact (moving two of them together is not the sum of moving each)
form clusters; along directions spanning each cluster, backprop·δ must lie between the one-sided
directional differences J(θ+δ) − J(θ) and J(θ) − J(θ−δ), up to curvature and rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from jaxcheck._engine.evaluate.finite_differences import Evaluation, Probe
from jaxcheck._engine.evaluate.plan import Group, default_step
from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.classify import Tolerance
from jaxcheck._engine.verdict.status import JointKinks, LeafRecord

__all__ = ["MAX_KINKS", "NEIGHBOURS", "RANDOM_PATTERNS", "joint_kink_test"]

#: Kink entries per leaf tested jointly (the first ones in index order beyond this are not).
MAX_KINKS = 512
#: Each kink entry is paired with this many following ones (in flat order) to find clusters.
NEIGHBOURS = 8
#: Random sign patterns per cluster, besides the all-ones direction.
RANDOM_PATTERNS = 8

Evaluate = Callable[[Sequence[Group]], list[Evaluation]]


def _vector_group(i: int, size: int, rows: np.ndarray, kink: np.ndarray, h: np.ndarray) -> Group:
    vectors = np.zeros((len(rows), size))
    vectors[:, kink] = rows * h
    probe = Probe((i,), "vector", len(rows), vectors=vectors)
    return Group(probe, np.full(len(rows), i), np.arange(len(rows)))


def _additive(op: vd.Opinions, rows: np.ndarray, h: np.ndarray, at: np.ndarray) -> tuple:
    """J(θ+δ) − J(θ) and J(θ) − J(θ−δ) if the coordinates of δ did not interact."""
    up, down = op.slope_up[at], op.slope_down[at]
    step = rows * h
    positive = step > 0
    plus = np.where(positive, up, down) * step
    minus = np.where(positive, down, up) * step
    return plus.sum(axis=1), minus.sum(axis=1)


def _clusters(n: int, pairs: np.ndarray, linked: np.ndarray) -> list[np.ndarray]:
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for (a, b), link in zip(pairs, linked):
        if link:
            parent[find(int(a))] = find(int(b))
    roots: dict[int, list[int]] = {}
    for a in range(n):
        roots.setdefault(find(a), []).append(a)
    return [np.array(c) for c in roots.values() if len(c) > 1]


def joint_kink_test(
    evaluate: Evaluate, records: Sequence[LeafRecord], value: float, seed: int
) -> dict[int, JointKinks]:
    """Tests each leaf's kink entries jointly; returns the findings per leaf index.

    A leaf whose kink entries interact gets :class:`JointKinks` (directions tested, failed, and
    the entries of the clusters that failed, which are not a subgradient together).
    """
    work = [w for w in (_pairs(i, r) for i, r in enumerate(records)) if w is not None]
    if not work:
        return {}
    # Stage 1: which kinks interact.
    evals = evaluate(
        [_vector_group(i, records[i].theta.size, rows, kink, h) for i, kink, _, h, _, rows in work]
    )
    stage2, meta = [], []
    for (i, kink, at, h, pairs, rows), ev in zip(work, evals):
        clusters = _interacting(records[i].evidence.op, ev, value, kink, at, h, pairs, rows)
        if not clusters:
            continue
        patterns, owners = _patterns(clusters, kink.size, np.random.default_rng([seed, i, 7]))
        # Each direction at δ and 2δ: the change between them measures the curvature.
        stage2.append(
            _vector_group(
                i, records[i].theta.size, np.concatenate([patterns, 2 * patterns]), kink, h
            )
        )
        meta.append((i, kink, h, clusters, patterns, owners))
    findings = {}
    # Stage 2: each cluster along directions spanning it.
    for ev, (i, kink, h, clusters, patterns, owners) in zip(
        evaluate(stage2) if stage2 else [], meta
    ):
        r = records[i]
        failed = _violations(ev, value, r.backprop64[kink], patterns * h, r.tolerance, kink)
        wrong = [kink[clusters[c]] for c in np.unique(owners[failed])]
        findings[i] = JointKinks(
            int(failed.size),
            int(failed.sum()),
            np.concatenate(wrong) if wrong else np.zeros(0, np.int64),
        )
    return findings


def _pairs(i: int, record: LeafRecord) -> tuple | None:
    """A leaf's kink entries and the pairs of them to test for interaction (stage 1)."""
    e = record.evidence
    kink = np.flatnonzero(record.classes == vd.KINK)[:MAX_KINKS]
    if kink.size < 2 or e.op is None:
        return None
    at = np.searchsorted(e.coords, kink)
    if np.any(at >= e.coords.size) or np.any(e.coords[np.minimum(at, e.coords.size - 1)] != kink):
        return None  # a kink entry without its own one-sided slopes: nothing to compare
    h = default_step(record.theta.reshape(-1)[kink])
    pairs = np.array(
        [(a, b) for a in range(kink.size) for b in range(a + 1, min(kink.size, a + 1 + NEIGHBOURS))]
    )
    rows = np.zeros((2 * len(pairs), kink.size))
    for k, (a, b) in enumerate(pairs):
        rows[2 * k, [a, b]] = (1.0, 1.0)
        rows[2 * k + 1, [a, b]] = (1.0, -1.0)
    return i, kink, at, h, pairs, rows


def _interacting(
    op: vd.Opinions,
    ev: Evaluation,
    value: float,
    kink: np.ndarray,
    at: np.ndarray,
    h: np.ndarray,
    pairs: np.ndarray,
    rows: np.ndarray,
) -> list[np.ndarray]:
    """Clusters of kink entries whose joint moves are not the sum of their own moves."""
    plus, minus = _additive(op, rows, h, at)
    rounding = vd.rounding(max(float(np.max(np.abs(ev.up))), abs(value)), 1.0)
    margin = 8 * rounding + np.abs(rows * h) @ op.slope_error[at]
    got_plus, got_minus = ev.up - value, value - ev.down
    interacts = (np.abs(got_plus - plus) > margin) | (np.abs(got_minus - minus) > margin)
    linked = interacts.reshape(-1, 2).any(axis=1)
    return _clusters(kink.size, pairs, linked)


def _patterns(
    clusters: list[np.ndarray], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The all-ones and random sign patterns spanning each cluster, and the cluster of each."""
    patterns, owners = [], []
    for c, members in enumerate(clusters):
        block = [np.ones(members.size)]
        block += [rng.choice([-1.0, 1.0], size=members.size) for _ in range(RANDOM_PATTERNS)]
        for row in block:
            full = np.zeros(size)
            full[members] = row
            patterns.append(full)
            owners.append(c)
    return np.array(patterns), np.array(owners)


def _violations(
    ev: Evaluation,
    value: float,
    g: np.ndarray,
    displacement: np.ndarray,
    tol: Tolerance,
    kink: np.ndarray,
) -> np.ndarray:
    """Directions where g·δ lies outside [min(D+, D−), max(D+, D−)] beyond the margin."""
    k = displacement.shape[0]
    up, down = ev.up[:k] - value, value - ev.down[:k]
    up_2, down_2 = (ev.up[k:] - value) / 2, (value - ev.down[k:]) / 2
    curvature = np.maximum(np.abs(up_2 - up), np.abs(down_2 - down))
    values = np.abs(np.concatenate([ev.up, ev.down]))
    rounding = vd.rounding(max(float(np.max(values)), abs(value)), 1.0)
    atol = np.asarray(tol.atol)[kink] if np.ndim(tol.atol) else np.full(kink.size, tol.atol)
    margin = 8 * rounding + curvature + (tol.rtol * np.abs(g) + atol) @ np.abs(displacement.T)
    product = displacement @ g
    with np.errstate(invalid="ignore"):
        inside = (product >= np.minimum(up, down) - margin) & (
            product <= np.maximum(up, down) + margin
        )
    return ~inside
