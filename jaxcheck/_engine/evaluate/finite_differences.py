"""Finite differences of the JAX twin, for many perturbed parameter vectors at once.

Each probe group is one leaf (vmapped over that leaf's coordinates or directions only, so
everything upstream of it is computed once) or several small leaves together (one vmapped
program for all of them, so a model with hundreds of small leaves compiles one program, not
hundreds). Here: what to perturb (:class:`Probe`), batch sizes from a memory budget, and the
values that come back (:class:`Evaluation`); the programs themselves are in
:mod:`jaxcheck._engine.evaluate.programs`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck._engine.evaluate import eager
from jaxcheck._engine.evaluate import processes as distributed
from jaxcheck._engine.evaluate.compile_cache import enabled
from jaxcheck._engine.evaluate.incremental import perturbed_cost
from jaxcheck._engine.evaluate.programs import fast, group_cost, program, progress_bar
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.twin import Twin
from jaxcheck._engine.verdict.classify import U64

__all__ = [
    "DEFAULTS",
    "DEFAULT_CPU_BUDGET",
    "Evaluation",
    "INCREMENTAL_MIN_SIZE",
    "Probe",
    "default_memory_budget",
    "evaluate",
    "evaluation_bytes",
    "lower",
    "uses_incremental",
]

#: The options of a check given none.
DEFAULTS = Options()

_LOG = logging.getLogger("jaxcheck")

#: Leaves smaller than this are evaluated from scratch, together in one group: for them the
#: incremental saving would not pay for the larger program to compile. Larger ones are
#: evaluated incrementally: a from-scratch batch of a mid-sized bias makes large batched
#: products that a GPU compiler spends tens of seconds autotuning.
INCREMENTAL_MIN_SIZE = 64
#: Memory budget for one batch of perturbed evaluations on a CPU: 64 MiB. Evaluations there are
#: bound by memory traffic, and batches that stay near the caches run faster than larger ones
#: (the 40,401-parameter MLP: 0.48 s at 64 MiB, 0.62 s at 512 MiB, 2-core CPU).
DEFAULT_CPU_BUDGET = 64 * 2**20
#: Fraction of an accelerator's memory given to one batch of perturbed evaluations.
ACCELERATOR_BUDGET_FRACTION = 0.25


@dataclasses.dataclass(frozen=True)
class Probe:
    """What to perturb in one group of leaves.

    Attributes:
        leaves: indices of the perturbed leaves; coordinates index their flattened
            concatenation. A direction probe has exactly one leaf.
        kind: ``"coordinate"`` (perturb single entries), ``"direction"`` (random unit vectors)
            or ``"vector"`` (the given displacements, one leaf).
        count: number of probes (coordinates or directions).
        coords: flat indices of the perturbed entries (coordinate kind).
        step_up: the exact step up per probe, ``(θ + h) − θ`` as represented in float64.
        step_down: the exact step down per probe, ``θ − (θ − h)``.
        double: also evaluate at twice the step (θ ± 2h), for error estimates and kinks.
        step: the nominal step along a direction (direction kind).
        seed: seed of the random directions (direction kind).
        ids: which directions of that seed (direction kind).
        vectors: the displacements, one row per probe (vector kind).
    """

    leaves: tuple[int, ...]
    kind: str
    count: int
    coords: np.ndarray | None = None
    step_up: np.ndarray | None = None
    step_down: np.ndarray | None = None
    double: bool = False
    step: float = 0.0
    seed: int = 0
    ids: np.ndarray | None = None
    vectors: np.ndarray | None = None

    def steps(self) -> tuple[np.ndarray, np.ndarray]:
        """The exact steps up and down of a coordinate probe."""
        if self.step_up is None or self.step_down is None:
            raise ValueError(f"a {self.kind} probe has no coordinate steps")
        return self.step_up, self.step_down


@dataclasses.dataclass
class Evaluation:
    """Cost values at the perturbed points of one probe group.

    Attributes:
        up: J(θ + step) per probe.
        down: J(θ − step) per probe.
        step_up, step_down: the exact steps per probe.
        up2, down2: J(θ ± 2·step) per probe when the probe asked for ``double``, else None.
        projected_autodiff: direction kind only, ``∇J·d / h`` for the actual displacement d.
        projected_backprop: direction kind only, ``backprop·d / h``.
        batch_size: perturbations per vmapped batch and device.
        unit: the rounding unit of the cost values (float64's epsilon for the twin).
    """

    up: np.ndarray
    down: np.ndarray
    step_up: np.ndarray
    step_down: np.ndarray
    up2: np.ndarray | None
    down2: np.ndarray | None
    projected_autodiff: np.ndarray | None
    projected_backprop: np.ndarray | None
    batch_size: int
    unit: float = U64


def default_memory_budget(devices: Sequence[Any] | None = None) -> int:
    """Bytes one batch of perturbed evaluations may use, per device.

    A quarter of an accelerator's memory when the device reports it, else 64 MiB.
    """
    device = distributed.own_device(devices or jax.devices())
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPUs and some plugins report nothing
        stats = {}
    limit = stats.get("bytes_limit")
    if limit and device.platform != "cpu":
        return int(limit * ACCELERATOR_BUDGET_FRACTION)
    return DEFAULT_CPU_BUDGET


def uses_incremental(probe: Probe, leaves: Sequence[Any], incremental: bool | None) -> bool:
    """Whether a probe group is evaluated incrementally (see
    :mod:`jaxcheck._engine.evaluate.incremental`)."""
    if incremental is False or probe.kind != "coordinate" or len(probe.leaves) != 1:
        return False
    return incremental is True or int(np.size(leaves[probe.leaves[0]])) >= INCREMENTAL_MIN_SIZE


def evaluation_bytes(
    twin: Twin, leaves: Sequence[np.ndarray], probe: Probe, incremental: bool
) -> int:
    """Bytes one perturbed evaluation needs beyond what is shared by the whole batch.

    Traces one perturbed evaluation of the twin exactly as the batch will run it, and adds up
    the sizes of every intermediate that depends on the perturbation (an upper bound on what
    vmap batches). No code of the user's runs: the twin is already a jaxpr.
    """
    key = (twin.key, tuple(np.shape(v) for v in leaves), probe.leaves, probe.kind, incremental)
    if twin.key is not None and key in _BYTES:
        return _BYTES[key]
    abstract = [jax.ShapeDtypeStruct(np.shape(v), np.float64) for v in leaves]
    consts = [jax.ShapeDtypeStruct(np.shape(c), np.result_type(c)) for c in twin.consts]
    n_consts = len(consts)
    if incremental:
        index = probe.leaves[0]

        def inc(i: Any, s: Any, *args: Any) -> Any:
            cs, ls = args[:n_consts], args[n_consts:]
            return perturbed_cost(lambda xs: twin.cost(cs, xs), ls, index)(i, s)

        scalars = (jax.ShapeDtypeStruct((), np.int32), jax.ShapeDtypeStruct((), np.float64))
        try:
            jaxpr = jax.make_jaxpr(inc)(*scalars, *consts, *abstract).jaxpr
        except Exception:  # noqa: BLE001 - the program falls back to brute force too
            jaxpr = None
        if jaxpr is not None:
            # The shared product is broadcast before one slice is added to each copy, and
            # XLA keeps both buffers alive: count half as much again.
            result = int(1.5 * _dependent_bytes(jaxpr, set(map(id, jaxpr.invars[:2]))))
            _BYTES[key] = result
            return result
    n = sum(math.prod(np.shape(leaves[i])) for i in probe.leaves)

    def brute(x: Any, *args: Any) -> Any:
        cs, ls = args[:n_consts], args[n_consts:]
        return group_cost(twin, cs, ls, probe.leaves)(x)

    flat = jax.ShapeDtypeStruct((n,), np.float64)
    jaxpr = jax.make_jaxpr(brute)(flat, *consts, *abstract).jaxpr
    result = n * 8 + _dependent_bytes(jaxpr, {id(jaxpr.invars[0])})
    _BYTES[key] = result
    return result


_BYTES: dict[Any, int] = {}


def _dependent_bytes(jaxpr: Any, dependent: set[int]) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if any(id(v) in dependent for v in eqn.invars):
            for out in eqn.outvars:
                dependent.add(id(out))
                aval = out.aval
                size = math.prod(getattr(aval, "shape", ())) or 1
                total += size * np.dtype(getattr(aval, "dtype", np.float64)).itemsize
    return int(total)


def _batch_size(count: int, per_eval: int, budget: int, n_devices: int, evals: int) -> int:
    fit = max(1, budget // max(1, evals * per_eval))
    per_device = math.ceil(count / n_devices)
    size = max(1, min(fit, per_device))
    batches = math.ceil(per_device / size)
    return math.ceil(per_device / batches)  # same number of batches, least padding


def _pad_rows(values: np.ndarray, batches: int, width: int) -> np.ndarray:
    total = batches * width
    pad = total - values.shape[0]
    if pad:
        fill = np.repeat(values[:1], pad, axis=0)
        values = np.concatenate([values, fill])
    return values.reshape((batches, width) + values.shape[1:])


def _direction_keys(probe: Probe) -> np.ndarray:
    base = jax.random.key_data(jax.random.key(probe.seed))
    return np.asarray(
        jax.vmap(
            lambda i: jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(base), i))
        )(jnp.asarray(probe.ids, dtype=jnp.uint32))
    )


@dataclasses.dataclass
class _Batches:
    layout: tuple[tuple[tuple[int, ...], str, bool, bool], ...]
    batches: list[int]
    args: list[tuple[np.ndarray, ...]]
    sizes: list[int]
    devices: tuple[Any, ...]


def _batches(
    twin: Twin,
    leaves: Sequence[np.ndarray],
    probes: Sequence[Probe],
    options: Options,
) -> _Batches:
    devices = tuple(options.devices or jax.devices())
    n_dev = len(devices)
    budget = options.memory_budget
    budget = budget if budget is not None else default_memory_budget(devices)
    batch_size, incremental = options.batch_size, options.incremental
    layout, counts, args, sizes = [], [], [], []
    for probe in probes:
        inc = uses_incremental(probe, leaves, incremental)
        evals = 4 if probe.kind == "coordinate" and probe.double else 2
        if batch_size is not None:
            size = max(1, min(int(batch_size), math.ceil(probe.count / n_dev)))
        else:
            per_eval = evaluation_bytes(twin, leaves, probe, inc)
            size = _batch_size(probe.count, per_eval, budget, n_dev, evals)
        width = size * n_dev
        batches = math.ceil(probe.count / width)
        if probe.kind == "coordinate":
            up, down = probe.steps()
            arrays = tuple(
                _pad_rows(a, batches, width)
                for a in (
                    np.asarray(probe.coords, np.int32),
                    np.asarray(up, np.float64),
                    np.asarray(down, np.float64),
                )
            )
        elif probe.kind == "vector":
            arrays = (_pad_rows(np.asarray(probe.vectors, np.float64), batches, width),)
        else:
            steps = np.full(probe.count, probe.step, dtype=np.float64)
            arrays = (
                _pad_rows(_direction_keys(probe), batches, width),
                _pad_rows(steps, batches, width),
            )
        layout.append((probe.leaves, probe.kind, probe.double, inc))
        counts.append(batches)
        args.append(arrays)
        sizes.append(size)
    return _Batches(tuple(layout), counts, args, sizes, devices)


def _inputs(
    twin: Twin, leaves: Sequence[np.ndarray], backprop: Sequence[np.ndarray] | None, b: _Batches
) -> tuple[list[Any], list[np.ndarray], list[np.ndarray], list[tuple[np.ndarray, ...]]]:
    bp = backprop if backprop is not None else [np.zeros_like(v) for v in leaves]
    return (
        list(twin.consts),
        [np.asarray(v) for v in leaves],
        [np.asarray(g, np.float64) for g in bp],
        b.args,
    )


def lower(
    twin: Twin,
    leaves: Sequence[np.ndarray],
    probes: Sequence[Probe],
    *,
    with_gradient: bool = True,
    options: Options = DEFAULTS,
) -> jax.stages.Lowered:
    """The program :func:`evaluate` runs for these probes, lowered (for cost and memory analysis).

    Call with x64 enabled; ``options`` as for :func:`evaluate`.
    """
    probes = [p for p in probes if p.count > 0]
    b = _batches(twin, leaves, probes, options)
    small = fast([p.count for p in probes])
    built = program(twin, b.layout, with_gradient, False, b.devices, small)
    return built.lower(*_inputs(twin, leaves, None, b))


def evaluate(
    twin: Twin,
    leaves: Sequence[np.ndarray],
    probes: Sequence[Probe],
    *,
    backprop: Sequence[np.ndarray] | None = None,
    with_gradient: bool = True,
    options: Options = DEFAULTS,
    progress: bool | None = None,
) -> tuple[float, float, list[np.ndarray] | None, list[Evaluation]]:
    """Evaluates the twin at θ and at every perturbed point the probes ask for.

    Must be called with x64 enabled; ``leaves`` are float64.

    Args:
        twin: the traced JAX twin.
        leaves: the params leaves (float64).
        probes: the probe groups (groups with no probes are skipped).
        backprop: the user's gradient leaves (needed by direction probes).
        with_gradient: also return ``jax.grad`` of the twin at θ.
        options: what the check's options say of evaluation: ``batch_size`` (perturbations
            per batch and device; ``None`` picks it from ``memory_budget``, bytes a batch may
            use per device, by default :func:`default_memory_budget`), ``devices`` (to split
            each batch over; ``None``: all of ``jax.devices()``), ``incremental`` (``None``:
            large leaves from 64 entries up are evaluated incrementally, ``False``: every
            perturbed point from scratch), ``cache`` (compiled programs kept on disk,
            :mod:`jaxcheck._engine.evaluate.compile_cache`; ``None``: unless
            ``JAXCHECK_NO_CACHE=1``) and ``compile`` (``True`` always compiles; ``None``
            evaluates small checks with NumPy, :mod:`jaxcheck._engine.evaluate.eager`, which
            is faster than compiling them; ``False`` does so whenever the twin allows).
        progress: show a progress bar; ``None``: only on a terminal.

    Returns:
        ``(cost at θ, the largest sum of magnitudes among the twin's intermediates at θ (see
        :func:`jaxcheck._engine.system.twin.cost_and_terms`), gradient leaves or None, one
        Evaluation per
        probe)``.
    """
    probes = [p for p in probes if p.count > 0]
    if _interpretable(twin, leaves, probes, options):
        try:
            return _evaluate_eager(twin, leaves, probes, with_gradient)
        except Exception as err:  # noqa: BLE001 - the compiled program is the reference
            _LOG.debug(
                "jaxcheck: compiling instead of interpreting (%s: %s)", type(err).__name__, err
            )
    b = _batches(twin, leaves, probes, options)
    devices, sizes = b.devices, b.sizes
    modes = [inc for *_, inc in b.layout]
    inputs = _inputs(twin, leaves, backprop, b)
    consts, values, bp, args = inputs
    distributed.verify_same_everywhere(consts, values, bp, (b.layout, b.batches, b.sizes), devices)
    inputs = distributed.global_inputs(consts, values, bp, args, devices)
    shape = b.layout
    persistent = enabled(options.cache)
    small = fast([p.count for p in probes])
    with progress_bar(sum(b.batches), progress) as bar, jax.disable_jit(False):
        try:
            built = program(twin, shape, with_gradient, bar, devices, small)
            value, gradient, outs = built(*inputs, persistent=persistent)
        except jax.errors.JaxRuntimeError:
            raise  # out of memory and the like: running more would not help
        except Exception as err:
            if not any(modes):
                raise
            # A twin the incremental evaluator cannot follow is evaluated from scratch.
            _LOG.warning(
                "jaxcheck: incremental evaluation failed (%s: %s); evaluating every "
                "perturbed point from scratch instead, which is slower.",
                type(err).__name__,
                err,
            )
            shape = tuple((g, k, d, False) for g, k, d, _ in shape)
            built = program(twin, shape, with_gradient, bar, devices, small)
            value, gradient, outs = built(*inputs, persistent=persistent)
    totals = np.asarray(value)
    value, terms = float(totals[0]), float(totals[1])
    gradient = None if gradient is None else [np.asarray(g) for g in gradient]
    outs = jax.tree_util.tree_map(np.asarray, outs)
    evaluations = []
    for probe, out, size in zip(probes, outs, sizes):
        n = probe.count
        flat = [o.reshape(-1)[:n] for o in out]
        if probe.kind == "vector":
            ones = np.ones(n)
            evaluations.append(
                Evaluation(flat[0], flat[1], ones, ones, None, None, None, None, size)
            )
        elif probe.kind == "coordinate":
            up2, down2 = (flat[2], flat[3]) if probe.double else (None, None)
            evaluations.append(
                Evaluation(flat[0], flat[1], *probe.steps(), up2, down2, None, None, size)
            )
        else:
            up, down, proj_ad, proj_bp, s_up, s_down = flat
            evaluations.append(
                Evaluation(up, down, s_up, s_down, None, None, proj_ad, proj_bp, size)
            )
    return value, terms, gradient, evaluations


def _evals(probe: Probe) -> int:
    return 4 if probe.kind == "coordinate" and probe.double else 2


def _interpretable(
    twin: Twin,
    leaves: Sequence[np.ndarray],
    probes: Sequence[Probe],
    options: Options,
) -> bool:
    """Whether the check is evaluated with NumPy (:mod:`jaxcheck._engine.evaluate.eager`).

    Not when compiling is asked for, when batches, memory, devices or the incremental evaluator
    were chosen by hand (they describe a compiled program), across processes, for random
    directions (drawn by JAX inside the program), or, unless ``compile=False``, past
    :data:`~jaxcheck._engine.evaluate.eager.MAX_WORK`.
    """
    o = options
    explicit = (o.batch_size, o.memory_budget, o.devices, o.incremental)
    if o.compile is True or any(e is not None for e in explicit) or jax.process_count() > 1:
        return False
    if any(p.kind == "direction" for p in probes) or not eager.supports(twin.jaxpr):
        return False
    if o.compile is False:
        return True
    points = sum(p.count * _evals(p) for p in probes) + 3  # + cost, gradient, terms
    return points * eager.work(twin.jaxpr) <= eager.MAX_WORK


def _evaluate_eager(
    twin: Twin, leaves: Sequence[np.ndarray], probes: Sequence[Probe], with_gradient: bool
) -> tuple[float, float, list[np.ndarray] | None, list[Evaluation]]:
    """:func:`evaluate`, with NumPy: the same values, up to each operation's last bits."""
    gradient = eager.gradient(twin, leaves) if with_gradient else None
    value, terms = eager.cost_and_terms(twin, leaves)
    evaluations = []
    for probe in probes:
        if probe.kind == "vector":
            vectors = np.asarray(probe.vectors, np.float64)
            values = eager.perturbed(
                twin, leaves, probe.leaves, np.concatenate([vectors, -vectors])
            )
            up, down = np.split(values, 2)
            ones = np.ones(probe.count)
            evaluations.append(
                Evaluation(up, down, ones, ones, None, None, None, None, probe.count)
            )
            continue
        coords = np.asarray(probe.coords, np.int64)
        both, steps = (
            np.concatenate([coords, coords]),
            np.concatenate([probe.steps()[0], -probe.steps()[1]]),
        )
        if probe.double:
            both, steps = np.concatenate([both, both]), np.concatenate([steps, 2 * steps])
        values = eager.perturbed(twin, leaves, probe.leaves, (both, steps))
        parts = np.split(values, _evals(probe))
        up2, down2 = (parts[2], parts[3]) if probe.double else (None, None)
        evaluations.append(
            Evaluation(
                parts[0],
                parts[1],
                *probe.steps(),
                up2,
                down2,
                None,
                None,
                probe.count,
            )
        )
    return value, terms, gradient, evaluations
