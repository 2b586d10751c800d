"""One check, stage by stage: plan → evaluate → judge → report, for a prepared system.

:func:`run` takes a :class:`~jaxcheck._engine.system.prepare.System` and the
:class:`~jaxcheck._engine.options.Options`
and returns the :class:`~jaxcheck.Report`; every entry point (``check``, ``check_layer``,
``check_rule``, ``jaxcheck.torch``) prepares its system and calls it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np

from jaxcheck._engine.evaluate.finite_differences import Evaluation, evaluate
from jaxcheck._engine.evaluate.numpy_differences import evaluate_numpy
from jaxcheck._engine.evaluate.plan import Group, coordinate_probes, plan
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.prepare import System, check_twin, rerun
from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.classify import Status
from jaxcheck._engine.verdict.diagnosis import Diagnosis, diagnose, dimensions_of, facts_of
from jaxcheck._engine.verdict.evidence import (
    MAX_REFINE,
    Evidence,
    classes_of,
    collect,
    leaf_status,
    leaf_tolerance,
    refinement,
)
from jaxcheck._engine.verdict.kinks import joint_kink_test
from jaxcheck._engine.verdict.sentences import leaf_report
from jaxcheck.errors import InputError, JaxcheckError, PortError
from jaxcheck.report import Report

__all__ = ["run"]


class _Evaluator:
    """Evaluates probe groups on the twin (batched) or, two-way, on the NumPy cost."""

    def __init__(self, system: System, options: Options) -> None:
        self.system, self.options = system, options
        self.checked = False

    def __call__(
        self, groups: Sequence[Group], *, with_gradient: bool, progress: bool | None = False
    ) -> tuple[float, list[np.ndarray] | None, list[Evaluation]]:
        system, o = self.system, self.options
        first = not self.checked
        if system.twin is None:
            value, evals = evaluate_numpy(
                system.cost_fn,
                system.leaves,
                system.leaves64,
                groups,
                backprop=system.backprop,
                progress=progress,
            )
            return value, None, evals
        try:
            value, terms, gradient, evals = evaluate(
                system.twin,
                system.leaves64,
                [g.probe for g in groups],
                backprop=system.backprop,
                with_gradient=with_gradient,
                batch_size=o.batch_size,
                memory_budget=o.memory_budget,
                progress=progress,
                devices=o.devices,
                incremental=o.incremental,
                cache=o.cache,
                compile=o.compile,
            )
        except JaxcheckError:
            raise
        except jax.errors.JaxRuntimeError:
            raise
        except Exception as err:
            if system.twin.kind == "ported" and o.twin == "auto":
                # A twin that runs at θ but not under vmap/grad: judge two-way instead.
                system.twin_error = PortError(
                    f"the ported twin ran at params but failed under jax.vmap or jax.grad: "
                    f"{type(err).__name__}: {err}"
                )
                system.twin = None
                return self(groups, with_gradient=with_gradient, progress=progress)
            raise InputError(
                f"the JAX twin ({system.twin_kind}) ran at params but failed under jax.vmap or "
                f"jax.grad: {type(err).__name__}: {err}. jax_cost must be a pure jax.numpy "
                f"function of params that vmap and grad can trace (no Python control flow on "
                f"values, no callbacks into NumPy).",
                hint="pass a jax_cost that jax.vmap and jax.grad can trace",
            ) from err
        if first:
            # The twin must compute the NumPy cost, or every opinion from it is void.
            check_twin(system, value, terms)
            self.checked = True
        return value, gradient, evals


def run(
    system: System, options: Options, *, start: float | None = None, noun: str = "backprop"
) -> Report:
    """Plans, evaluates and judges a prepared system under test; returns the report.

    ``noun`` names the gradient under test in the leaves' messages (``"rule"`` for a custom
    differentiation rule, ``"backward"`` for a torch Function).
    """
    start = time.perf_counter() if start is None else start
    leaves, paths = system.leaves64, system.leaves.paths
    evaluator = _Evaluator(system, options)
    with jax.enable_x64(True):
        groups = plan(leaves, paths, options)
        value, gradient, evals = evaluator(groups, with_gradient=True, progress=options.progress)
        if gradient is None:
            gradient = system.reference  # an autodiff opinion from outside JAX, if any
        if not system.autodiff:
            gradient = None  # the twin's jax.grad is the rule under test: not a witness
        evidence = [Evidence(np.zeros(0, np.int64), None, np.zeros(0, bool)) for _ in leaves]
        collect(groups, evals, value, system.backprop, gradient, evidence)
        tolerances = [
            leaf_tolerance(
                _judged_dtype(system, i),
                leaves[i],
                None if gradient is None else gradient[i],
                value,
                options.eps,
                options.rtol,
            )
            for i in range(len(leaves))
        ]
        more = refinement(
            evidence,
            system.backprop,
            gradient,
            tolerances,
            leaves,
            paths,
            options.eps,
            group_small=options.incremental is not True,
        )
        if more:
            _, _, evals = evaluator(more, with_gradient=False)
            collect(more, evals, value, system.backprop, gradient, evidence)
        judged = [
            _classes(system, i, gradient, evidence[i], tolerances[i]) for i in range(len(leaves))
        ]
        if _kink_leaves_in_full(system, judged, evidence, options, evaluator, value, gradient):
            judged = [
                _classes(system, i, gradient, evidence[i], tolerances[i])
                for i in range(len(leaves))
            ]
        _joint_kinks(system, judged, evidence, tolerances, value, options, evaluator)
    reports = {}
    for i, path in enumerate(paths):
        classes, direction_classes, bp_used = judged[i]
        status = leaf_status(classes, direction_classes)
        status, rounding = _precision(system, i, gradient, status, tolerances[i])
        reports[path] = leaf_report(
            path,
            leaves[i],
            system.backprop[i],
            None if gradient is None else gradient[i],
            classes,
            direction_classes,
            status,
            evidence[i],
            tolerances[i],
            options.method,
            rounding_difference=rounding,
            noun=noun,
        )
    report = _report(system, options, reports, evidence, gradient, start)
    report.diagnosis = _diagnose(system, reports, gradient, evidence, tolerances)
    return report


def _diagnose(
    system: System,
    reports: dict,
    gradient: list[np.ndarray] | None,
    evidence: list[Evidence],
    tolerances: list[vd.Tolerance],
) -> Diagnosis | None:
    """Names the kind of bug of failing leaves where it fits; returns one that spans leaves.

    Each diagnosed leaf gets the field and its sentence; a common factor's sentence is the
    report's, said once.
    """
    if not any(leaf.status == Status.BACKPROP for leaf in reports.values()):
        return None
    facts = []
    for i, (path, leaf) in enumerate(reports.items()):
        e = evidence[i]
        op = e.op
        facts.append(
            facts_of(
                path,
                system.leaves64[i],
                system.backprop[i],
                None if gradient is None else gradient[i],
                leaf.status,
                tolerances[i],
                coords=e.coords,
                finite=None if op is None else op.finite,
                error=None if op is None else op.error,
            )
        )
    consts = () if system.twin is None else system.twin.consts
    data = [tuple(np.shape(c)) for c in consts]
    dimensions = dimensions_of(data, [tuple(v.shape) for v in system.leaves64])
    found, common = diagnose(facts, dimensions)
    for path, d in found.items():
        reports[path].diagnosis = d
        if d is not common:
            reports[path].message = f"{reports[path].message} {d.sentence}"
    return common


def _kink_leaves_in_full(
    system: System,
    judged: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
    evidence: list[Evidence],
    options: Options,
    evaluator: _Evaluator,
    value: float,
    gradient: list[np.ndarray] | None,
) -> bool:
    """Probes every entry of a leaf where a subgradient was accepted at a kink (at h and 2h).

    The entries that share the kink must be tested jointly, also those where backprop happens
    to agree with autodiff and that a partial method did not probe; so sample and directional
    never pass what full fails. Returns whether anything was evaluated.
    """
    chosen = {}
    for i, (classes, _, bp) in enumerate(judged):
        e = evidence[i]
        kink = classes == vd.KINK
        if gradient is not None:  # only where a subgradient other than autodiff's was accepted
            kink &= bp != gradient[i].reshape(-1)
        if not np.any(kink) or classes.size < 2:
            continue
        missing = np.setdiff1d(np.arange(classes.size), e.coords[e.refined])[:MAX_REFINE]
        if missing.size:
            chosen[i] = missing
    if not chosen:
        return False
    groups = coordinate_probes(
        system.leaves64,
        system.leaves.paths,
        chosen,
        options.eps,
        double=True,
        pad=True,
        group_small=options.incremental is not True,
    )
    _, _, evals = evaluator(groups, with_gradient=False)
    collect(groups, evals, value, system.backprop, gradient, evidence)
    return True


def _judged_dtype(system: System, i: int) -> np.dtype:
    return max(
        np.dtype(system.backprop[i].dtype), np.dtype(system.leaves.values[i].dtype), key=vd.epsilon
    )


def _classes(
    system: System, i: int, gradient: list[np.ndarray] | None, e: Evidence, tol: vd.Tolerance
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    bp = system.backprop[i].astype(np.float64).reshape(-1)
    ad = None if gradient is None else gradient[i].reshape(-1)
    classes, direction_classes = classes_of(e, bp, ad, tol)
    return classes, direction_classes, bp


def _joint_kinks(
    system: System,
    judged: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
    evidence: list[Evidence],
    tolerances: list[vd.Tolerance],
    value: float,
    options: Options,
    evaluator: _Evaluator,
) -> None:
    """Tests the subgradients accepted at kinks jointly; failing clusters become BACKPROP."""
    joint_kink_test(
        lambda groups: evaluator(groups, with_gradient=False)[2],
        system.leaves64,
        system.backprop,
        [c for c, _, _ in judged],
        evidence,
        tolerances,
        value,
        options.seed,
    )


def _precision(
    system: System,
    i: int,
    gradient: list[np.ndarray] | None,
    status: Status,
    tol: vd.Tolerance,
) -> tuple[Status, float | None]:
    """The fourth opinion: backprop re-run wider separates rounding from a formula error.

    A leaf judged wrong (or inconclusive) whose re-run in a wider dtype (float64 for a narrower
    system, ``np.longdouble`` for a float64 one) agrees with autodiff has a correct formula:
    rounding in the user's arrays explains the difference, and the leaf passes with status
    ``rounding``.
    """
    if status.passes or gradient is None:
        return status, None
    wide = system.backprop64 if system.backprop64 is not None else _longdouble_rerun(system)
    if wide is None:
        return status, None
    bp = system.backprop[i].astype(np.float64).reshape(-1)
    bp64 = wide[i].astype(np.float64).reshape(-1)
    ad = gradient[i].reshape(-1)
    if not np.all(np.isfinite(bp)):
        return status, None
    # float64's tolerance, or one rounding of the re-run's own dtype if it was cast back at the
    # end (|x − fl(x)| ≤ u/2·|x|, which is u/4 of |a| + |b| in the tolerance's terms).
    narrow = vd.epsilon(np.dtype(wide[i].dtype))
    tol64 = vd.Tolerance(
        rtol=max(vd.rtol_for(np.dtype(np.float64)), 0.3 * narrow),
        atol=tol.atol,
        fd_rtol=tol.fd_rtol,
        fd_atol=tol.fd_atol,
        scale=tol.scale,
    )
    if np.all(vd.backprop_agrees(bp64, ad, tol64)):
        return Status.ROUNDING, vd.relative_difference(bp, ad)
    return status, None


def _longdouble_rerun(system: System) -> list[np.ndarray] | None:
    """A float64 system's gradient re-run at ``np.longdouble`` θ (once; where that is wider).

    The float64 analogue of the narrow system's float64 re-run: a correct backprop that loses
    digits to cancellation (large features, a large offset) agrees with autodiff when the same
    code runs wider.
    """
    if not system.longdouble_tried:
        system.longdouble_tried = True
        wide = np.dtype(np.longdouble)
        if system.grad_fn is not None and vd.epsilon(wide) < vd.epsilon(np.dtype(np.float64)):
            values = [v.astype(wide) for v in system.leaves.values]
            system.longdouble = rerun(system.grad_fn, system.pair, system.leaves, values)
    return system.longdouble


def _report(
    system: System,
    options: Options,
    reports: dict,
    evidence: list[Evidence],
    gradient: list[np.ndarray] | None,
    start: float,
) -> Report:
    def probed(field: str) -> np.ndarray:
        parts = []
        for e in evidence:
            for op in (e.op, e.directions):
                if op is not None:
                    parts.append(getattr(op, field))
        return np.concatenate(parts) if parts else np.empty(0)

    bp_probe, fd_probe = probed("backprop"), probed("finite")
    bp_all = np.concatenate([b.astype(np.float64).ravel() for b in system.backprop])
    if gradient is None:
        diff_ad = diff_fd_ad = float("nan")
    else:
        ad_all = np.concatenate([g.ravel() for g in gradient])
        diff_ad = vd.relative_difference(bp_all, ad_all)
        diff_fd_ad = vd.relative_difference(fd_probe, probed("autodiff"))
    ok = all(leaf.status.passes for leaf in reports.values())
    return Report(
        ok=ok,
        leaves=reports,
        difference_fd=vd.relative_difference(bp_probe, fd_probe),
        difference_autodiff=diff_ad,
        difference_fd_autodiff=diff_fd_ad,
        cost_mismatch=system.cost_mismatch,
        cost=system.cost,
        method=options.method,
        dtype=str(system.dtype),
        twin=system.twin_kind,
        seconds=time.perf_counter() - start,
        twin_error=None if system.twin_error is None else str(system.twin_error),
        autodiff=gradient is not None,
    )
