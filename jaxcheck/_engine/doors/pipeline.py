"""One check, stage by stage: plan → evaluate → judge → report, for a prepared system.

:func:`run` takes a :class:`~jaxcheck._engine.system.prepare.System` and the
:class:`~jaxcheck._engine.options.Options` and returns the :class:`~jaxcheck.Report`; every
entry point (``check``, ``check_layer``, ``check_rule``, ``jaxcheck.torch``) prepares its system
and calls it. What happens during the run goes into a :class:`RunRecord`; each leaf's findings
into a :class:`~jaxcheck._engine.verdict.status.LeafRecord`, whose final status
:func:`~jaxcheck._engine.verdict.status.decide` decides.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import numpy as np

from jaxcheck._engine.evaluate.finite_differences import Evaluation, evaluate
from jaxcheck._engine.evaluate.numpy_differences import evaluate_numpy
from jaxcheck._engine.evaluate.plan import Group, coordinate_probes, plan
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.prepare import System, check_twin, rerun
from jaxcheck._engine.system.twin import Twin
from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.diagnosis import Diagnosis, diagnose, dimensions_of, facts_of
from jaxcheck._engine.verdict.evidence import (
    MAX_REFINE,
    Evidence,
    classes_of,
    collect,
    leaf_tolerance,
    refinement,
)
from jaxcheck._engine.verdict.kinks import joint_kink_test
from jaxcheck._engine.verdict.sentences import leaf_report
from jaxcheck._engine.verdict.status import LeafRecord, check_expected, decide
from jaxcheck.errors import InputError, JaxcheckError, PortError
from jaxcheck.report import LeafReport, Report

__all__ = ["Evaluator", "RunRecord", "run"]


@dataclasses.dataclass
class RunRecord:
    """What happens during one check; the prepared :class:`System` itself never changes.

    Attributes:
        twin: the twin in use: the system's, or None once a ported twin that failed under
            ``jax.vmap``/``jax.grad`` was dropped for a two-way check.
        twin_error: why there is no twin, else None.
        cost_mismatch: relative |J_numpy − J_twin| at θ, once the twin was checked.
        twin_checked: whether the twin's cost was checked against the NumPy cost.
        longdouble: a float64 system's gradient re-run at ``np.longdouble`` θ, once a leaf
            failed (``longdouble_tried`` says whether it was attempted).
    """

    twin: Twin | None
    twin_error: JaxcheckError | None
    cost_mismatch: float = 0.0
    twin_checked: bool = False
    longdouble: list[np.ndarray] | None = None
    longdouble_tried: bool = False

    @property
    def twin_kind(self) -> str:
        """``"given"``, ``"ported"``, or ``"none"`` for a two-way check."""
        return "none" if self.twin is None else self.twin.kind


class Evaluator:
    """Evaluates probe groups on the twin (batched) or, two-way, on the NumPy cost."""

    def __init__(self, system: System, options: Options, record: RunRecord) -> None:
        self.system, self.options, self.record = system, options, record

    def __call__(
        self, groups: Sequence[Group], *, with_gradient: bool, progress: bool | None = False
    ) -> tuple[float, list[np.ndarray] | None, list[Evaluation]]:
        system, o, record = self.system, self.options, self.record
        if record.twin is None:
            value, evals = evaluate_numpy(
                system.cost_fn,
                system.leaves,
                system.leaves64,
                groups,
                backprop=system.user_gradient,
                progress=progress,
            )
            return value, None, evals
        try:
            value, terms, gradient, evals = evaluate(
                record.twin,
                system.leaves64,
                [g.probe for g in groups],
                backprop=system.user_gradient,
                with_gradient=with_gradient,
                options=o,
                progress=progress,
            )
        except (JaxcheckError, jax.errors.JaxRuntimeError):
            raise
        except Exception as err:
            if record.twin.kind == "ported" and o.twin == "auto":
                # A twin that runs at θ but not under vmap/grad: judge two-way instead.
                record.twin_error = PortError(
                    f"the ported twin ran at params but failed under jax.vmap or jax.grad: "
                    f"{type(err).__name__}: {err}"
                )
                record.twin = None
                return self(groups, with_gradient=with_gradient, progress=progress)
            raise InputError(
                f"the JAX twin ({record.twin_kind}) ran at params but failed under jax.vmap or "
                f"jax.grad: {type(err).__name__}: {err}. jax_cost must be a pure jax.numpy "
                f"function of params that vmap and grad can trace (no Python control flow on "
                f"values, no callbacks into NumPy).",
                hint="pass a jax_cost that jax.vmap and jax.grad can trace",
            ) from err
        if not record.twin_checked:
            # The twin must compute the NumPy cost, or every opinion from it is void.
            record.cost_mismatch = check_twin(system, value, terms)
            record.twin_checked = True
        return value, gradient, evals


def run(
    system: System, options: Options, *, start: float | None = None, noun: str = "backprop"
) -> Report:
    """Plans, evaluates and judges a prepared system under test; returns the report.

    ``noun`` names the gradient under test in the leaves' messages (``"rule"`` for a custom
    differentiation rule, ``"backward"`` for a torch Function).
    """
    start = time.perf_counter() if start is None else start
    expected = check_expected(options.expectations, system.leaves.paths)
    record = RunRecord(system.twin, system.twin_error)
    evaluator = Evaluator(system, options, record)
    with jax.enable_x64(True):
        leaves = _judge(system, options, evaluator)
    wider = _Wider(system, record)
    reports = {}
    for i, leaf in enumerate(leaves):
        decision = decide(leaf, wider=functools.partial(wider, i), expected=expected.get(leaf.path))
        reports[leaf.path] = leaf_report(leaf, decision, options.method, noun=noun)
    report = _report(system, record, options, reports, leaves, start)
    report.diagnosis = _diagnose(system, reports, leaves)
    return report


def _diagnose(
    system: System, reports: dict[str, LeafReport], leaves: Sequence[LeafRecord]
) -> Diagnosis | None:
    """Names the kind of bug of failing leaves where it fits; returns one that spans leaves.

    Each diagnosed leaf gets the field and its sentence; a common factor's sentence is the
    report's, said once.
    """
    if not any(leaf.status == vd.Status.BACKPROP for leaf in reports.values()):
        return None
    facts = []
    for leaf in leaves:
        op = leaf.evidence.op
        facts.append(
            facts_of(
                leaf.path,
                leaf.theta,
                leaf.backprop,
                leaf.autodiff,
                reports[leaf.path].status,
                leaf.tolerance,
                coords=leaf.evidence.coords,
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


def _judge(system: System, options: Options, evaluator: Evaluator) -> list[LeafRecord]:
    """Plan → evaluate → refine → probe codes → joint kinks: one record per leaf."""
    leaves, paths = system.leaves64, system.leaves.paths
    groups = plan(leaves, paths, options)
    value, gradient, evals = evaluator(groups, with_gradient=True, progress=options.progress)
    if gradient is None:
        gradient = system.reference  # an autodiff opinion from outside JAX, if any
    if not system.autodiff:
        gradient = None  # the twin's jax.grad is the rule under test: not a witness
    records = [
        LeafRecord(
            path,
            leaves[i],
            system.user_gradient[i],
            None if gradient is None else gradient[i].reshape(-1),
            leaf_tolerance(
                _judged_dtype(system, i),
                leaves[i],
                None if gradient is None else gradient[i],
                value,
                options.eps,
                options.rtol,
            ),
            Evidence(np.zeros(0, np.int64), None, np.zeros(0, bool)),
        )
        for i, path in enumerate(paths)
    ]
    evidence = [r.evidence for r in records]
    collect(groups, evals, value, system.user_gradient, gradient, evidence)
    more = refinement(
        evidence,
        system.user_gradient,
        gradient,
        [r.tolerance for r in records],
        leaves,
        paths,
        options.eps,
        group_small=options.incremental is not True,
    )
    if more:
        _, _, evals = evaluator(more, with_gradient=False)
        collect(more, evals, value, system.user_gradient, gradient, evidence)
    _probe_codes(records)
    if _kink_leaves_in_full(system, records, options, evaluator, value, gradient):
        _probe_codes(records)
    findings = joint_kink_test(
        lambda g: evaluator(g, with_gradient=False)[2], records, value, options.seed
    )
    for i, found in findings.items():
        records[i].joint = found
    return records


def _probe_codes(records: Sequence[LeafRecord]) -> None:
    """Each leaf's per-entry and per-direction status codes, from its evidence."""
    for r in records:
        r.classes, r.direction_classes = classes_of(
            r.evidence, r.backprop64, r.autodiff, r.tolerance
        )


def _kink_leaves_in_full(
    system: System,
    records: Sequence[LeafRecord],
    options: Options,
    evaluator: Evaluator,
    value: float,
    gradient: list[np.ndarray] | None,
) -> bool:
    """Probes every entry of a leaf where a subgradient was accepted at a kink (at h and 2h).

    The entries that share the kink must be tested jointly, also those where backprop happens
    to agree with autodiff and that a partial method did not probe; so sample and directional
    never pass what full fails. Returns whether anything was evaluated.
    """
    chosen = {}
    for i, r in enumerate(records):
        e, classes = r.evidence, r.classes
        if classes is None or classes.size < 2:
            continue
        kink = classes == vd.KINK
        if r.autodiff is not None:  # only where a subgradient other than autodiff's was accepted
            kink &= r.backprop64 != r.autodiff
        if not np.any(kink):
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
    collect(groups, evals, value, system.user_gradient, gradient, [r.evidence for r in records])
    return True


def _judged_dtype(system: System, i: int) -> np.dtype:
    """The precision a leaf is judged at: its gradient's, its parameter's or the cost's own."""
    dtypes = [np.dtype(system.user_gradient[i].dtype), np.dtype(system.leaves.values[i].dtype)]
    if system.cost_precision is not None:
        dtypes.append(system.cost_precision)
    return max(dtypes, key=vd.epsilon)


class _Wider:
    """The fourth opinion: the user's backprop re-run in a wider dtype, per leaf, on demand.

    float64 for a narrower system (run by ``prepare``), ``np.longdouble`` for a float64 one
    (run here once, the first time a leaf fails, and kept in the run record): a correct
    backprop that loses digits to rounding agrees with autodiff when the same code runs wider.
    """

    def __init__(self, system: System, record: RunRecord) -> None:
        self.system, self.record = system, record

    def __call__(self, i: int) -> np.ndarray | None:
        wide = self.system.backprop64
        if wide is None:
            wide = self._longdouble()
        return None if wide is None else wide[i]

    def _longdouble(self) -> list[np.ndarray] | None:
        system, record = self.system, self.record
        if not record.longdouble_tried:
            record.longdouble_tried = True
            wide = np.dtype(np.longdouble)
            if system.grad_fn is not None and vd.epsilon(wide) < vd.epsilon(np.dtype(np.float64)):
                values = [v.astype(wide) for v in system.leaves.values]
                record.longdouble = rerun(system.grad_fn, system.pair, system.leaves, values)
        return record.longdouble


def _report(
    system: System,
    record: RunRecord,
    options: Options,
    reports: dict,
    leaves: Sequence[LeafRecord],
    start: float,
) -> Report:
    def probed(field: str) -> np.ndarray:
        parts = []
        for r in leaves:
            for op in (r.evidence.op, r.evidence.directions):
                if op is not None:
                    parts.append(getattr(op, field))
        return np.concatenate(parts) if parts else np.empty(0)

    bp_probe, fd_probe = probed("backprop"), probed("finite")
    bp_all = np.concatenate([r.backprop64 for r in leaves])
    autodiff = leaves[0].autodiff is not None if leaves else False
    if not autodiff:
        diff_ad = diff_fd_ad = float("nan")
    else:
        ad_all = np.concatenate([r.autodiff for r in leaves])
        diff_ad = vd.relative_difference(bp_all, ad_all)
        diff_fd_ad = vd.relative_difference(fd_probe, probed("autodiff"))
    ok = all(leaf.status.passes for leaf in reports.values())
    return Report(
        ok=ok,
        leaves=reports,
        difference_fd=vd.relative_difference(bp_probe, fd_probe),
        difference_autodiff=diff_ad,
        difference_fd_autodiff=diff_fd_ad,
        cost_mismatch=record.cost_mismatch,
        cost=system.cost,
        method=options.method,
        dtype=str(system.dtype),
        twin=record.twin_kind,
        seconds=time.perf_counter() - start,
        twin_error=None if record.twin_error is None else str(record.twin_error),
        autodiff=autodiff,
        precision=_precision_note(system, leaves),
    )


def _precision_note(system: System, leaves: Sequence[LeafRecord]) -> str | None:
    """Why the check was judged below float64 when the cost computes there, and how closely."""
    if system.computes_in is None or system.cost_precision is None:
        return None
    rtols = sorted({r.tolerance.rtol for r in leaves})
    return (
        f"Your cost computes in {system.cost_precision} ({system.computes_in[0]}), so "
        f"its gradient is only defined to {system.cost_precision} precision: every leaf was "
        f"judged at rtol {', '.join(f'{t:.0e}' for t in rtols)} against the same formula run "
        f"in float64. For a float64 check, remove the cast (cast the data before the cost)."
    )
