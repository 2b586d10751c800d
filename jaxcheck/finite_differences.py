"""Finite differences of the JAX twin, for many perturbed parameter vectors at once.

Each probe group is one leaf (vmapped over that leaf's coordinates or directions only, so
everything upstream of it is computed once) or several small leaves together (one vmapped
program for all of them, so a model with hundreds of small leaves compiles one program, not
hundreds). ``lax.map`` walks the batches so memory stays bounded; with several devices each
batch is split across them with ``shard_map``. Programs are cached on the twin's structural key
(:mod:`jaxcheck.twin`); the data are arguments.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import distributed
from ._incremental import perturbed_cost
from .compile_cache import enabled, load_or_compile
from .twin import Twin, cost_and_terms

__all__ = [
    "DEFAULT_CPU_BUDGET",
    "INCREMENTAL_MIN_SIZE",
    "Evaluation",
    "Probe",
    "default_memory_budget",
    "evaluate",
]

_LOG = logging.getLogger("jaxcheck")

#: Leaves smaller than this are evaluated from scratch, together in one group: for them the
#: incremental saving would not pay for the larger program to compile. Larger ones are
#: evaluated incrementally: a from-scratch batch of a mid-sized bias makes large batched
#: products that a GPU compiler spends tens of seconds autotuning.
INCREMENTAL_MIN_SIZE = 64
#: Memory budget for one batch of perturbed evaluations on a CPU: 512 MiB.
DEFAULT_CPU_BUDGET = 512 * 2**20
#: Fraction of an accelerator's memory given to one batch of perturbed evaluations.
ACCELERATOR_BUDGET_FRACTION = 0.25
#: Compiled programs kept, most recently used first.
PROGRAM_CACHE_SIZE = 64


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
    unit: float = float(np.finfo(np.float64).eps)


def default_memory_budget(devices: Sequence[Any] | None = None) -> int:
    """Bytes one batch of perturbed evaluations may use, per device.

    A quarter of an accelerator's memory when the device reports it, else 512 MiB.
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
    """Whether a probe group is evaluated incrementally (see :mod:`jaxcheck._incremental`)."""
    if incremental is False or probe.kind != "coordinate" or len(probe.leaves) != 1:
        return False
    return incremental is True or int(np.size(leaves[probe.leaves[0]])) >= INCREMENTAL_MIN_SIZE


def _group_cost(twin: Twin, consts: Any, leaves: Sequence[Any], group: tuple[int, ...]) -> Callable:
    """The cost as a function of the flattened concatenation of the group's leaves."""
    shapes = [np.shape(leaves[i]) for i in group]
    sizes = [math.prod(s) for s in shapes]
    edges = np.cumsum([0, *sizes])

    def cost(flat: jax.Array) -> jax.Array:
        moved = list(leaves)
        for i, shape, a, b in zip(group, shapes, edges[:-1], edges[1:]):
            moved[i] = flat[int(a) : int(b)].reshape(shape)
        return twin.cost(consts, moved)

    return cost


def _flat(leaves: Sequence[Any], group: tuple[int, ...]) -> jax.Array:
    return jnp.concatenate([jnp.reshape(leaves[i], (-1,)) for i in group])


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
        return _group_cost(twin, cs, ls, probe.leaves)(x)

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


class _Progress:
    """A tqdm bar over batches, fed from inside the compiled program by a debug callback."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        if enabled is None:
            enabled = total > 1 and sys.stderr.isatty()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="jaxcheck", unit="batch", file=sys.stderr)

    def tick(self, *_: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_ACTIVE_PROGRESS: list[_Progress] = []


def _tick(*_: Any) -> None:
    if _ACTIVE_PROGRESS:
        _ACTIVE_PROGRESS[-1].tick()


class _Program:
    """A jitted program and its compiled executables, one per set of input shapes.

    Executables come from the disk cache (:mod:`jaxcheck.compile_cache`) when it has them; a
    program that calls back to the host (the progress bar) is compiled in memory only.
    """

    def __init__(
        self,
        fun: Callable,
        options: dict[str, Any] | None,
        devices: Sequence[Any],
        host: bool,
        key: Any,
    ) -> None:
        self.fun, self.options, self.devices, self.host = fun, options, devices, host
        self.jitted = jax.jit(fun, compiler_options=options)
        self.compiled: dict[Any, Callable] = {}
        # A key that names the program across processes (no object identities in it) spares
        # even the lowering when the disk has the program.
        self.portable = None if key is None or _has_identity(key) else repr(key)

    def __call__(self, *inputs: Any, persistent: bool = False) -> Any:
        flat, tree = jax.tree_util.tree_flatten(inputs)
        signature = (tree, tuple((np.shape(x), np.result_type(x).name) for x in flat))
        program = self.compiled.get(signature)
        if program is None:
            name = None if self.portable is None else f"{self.portable}|{signature!r}"
            try:
                program = load_or_compile(
                    lambda: self.jitted.lower(*inputs),
                    name=name,
                    options=self.options,
                    devices=self.devices,
                    persistent=persistent and not self.host,
                )
            except Exception as err:  # noqa: BLE001
                if self.options is None or "compile option" not in str(err):
                    raise
                # An XLA that does not know a fast-compile option: compile as usual.
                self.options, self.jitted = None, jax.jit(self.fun)
                return self(*inputs, persistent=persistent)
            self.compiled[signature] = program
        return program(*inputs)

    def lower(self, *inputs: Any) -> Any:
        return self.jitted.lower(*inputs)


def _has_identity(key: Any) -> bool:
    if isinstance(key, tuple):
        if len(key) == 2 and key[0] == "object":
            return True
        return any(_has_identity(k) for k in key)
    return False


_PROGRAMS: collections.OrderedDict[Any, _Program] = collections.OrderedDict()


def _program(
    twin: Twin,
    layout: tuple[tuple[tuple[int, ...], str, bool, bool], ...],
    with_gradient: bool,
    progress: bool,
    devices: tuple[Any, ...],
    fast_compile: bool = False,
) -> _Program:
    """The compiled program: cost and gradient at θ and the perturbed costs of every group.

    ``layout`` holds, per probe group, (leaves, kind, double, incremental). Cached on the
    twin's structural key, so a new closure of the same code and shapes compiles nothing.
    """
    key = None
    if twin.key is not None:
        key = (
            twin.key,
            layout,
            with_gradient,
            progress,
            tuple(d.id for d in devices),
            fast_compile,
        )
        hit = _PROGRAMS.get(key)
        if hit is not None:
            _PROGRAMS.move_to_end(key)
            return hit
    mesh = distributed.probe_mesh(devices)
    P = jax.sharding.PartitionSpec

    def run(consts, leaves, backprop, probe_args):
        leaves = list(leaves)
        value, terms = cost_and_terms(twin, consts, leaves)
        gradient = jax.grad(lambda ls: twin.cost(consts, ls))(leaves) if with_gradient else None
        outs = []
        for (group, kind, double, incremental), args in zip(layout, probe_args):
            cost = _group_cost(twin, consts, leaves, group)
            x = _flat(leaves, group)
            if kind == "coordinate":
                update = None
                if incremental:
                    update = perturbed_cost(lambda ls: twin.cost(consts, ls), leaves, group[0])
                row = _coordinate_row(cost, x, progress, double, update)
                n_out = 4 if double else 2
            elif kind == "vector":
                row = _vector_row(cost, x, progress)
                n_out = 2
            else:
                g = _flat(gradient, group) if with_gradient else jnp.zeros_like(x)
                row = _direction_row(cost, x, g, _flat(backprop, group), progress)
                n_out = 6

            def local(*arrays, row=row):
                if arrays[0].shape[0] == 1:  # one batch: no loop to compile
                    return jax.tree_util.tree_map(lambda o: o[None], row(*(a[0] for a in arrays)))
                return jax.lax.map(lambda a: row(*a), arrays)

            if mesh is not None:
                spec = P(None, distributed.AXIS)
                local = jax.shard_map(
                    local,
                    mesh=mesh,
                    in_specs=(spec,) * len(args),
                    out_specs=(spec,) * n_out,
                    check_vma=False,
                )
            outs.append(local(*args))
        # Across processes: every process reads every result.
        return distributed.replicated(((value, terms), gradient, outs), mesh)

    options = _fast_compile_options(devices[0].platform) if fast_compile else None
    program = _Program(run, options, devices, progress, key)
    if key is not None:
        _PROGRAMS[key] = program
        while len(_PROGRAMS) > PROGRAM_CACHE_SIZE:
            _PROGRAMS.popitem(last=False)
    return program


def _coordinate_row(
    cost: Callable, x: jax.Array, progress: bool, double: bool, incremental: Callable | None
) -> Callable:
    def row(coords, up, down):
        if progress:
            jax.debug.callback(_tick)
        both = jnp.concatenate([coords, coords])
        steps = jnp.concatenate([up, -down])
        if double:
            both = jnp.concatenate([both, both])
            steps = jnp.concatenate([steps, 2 * steps])
        if incremental is not None:
            values = jax.vmap(incremental)(both, steps)
        else:
            points = jax.vmap(lambda i, s: x.at[i].add(s))(both, steps)
            values = jax.vmap(cost)(points)
        return tuple(jnp.split(values, 4 if double else 2))

    return row


def _vector_row(cost: Callable, x: jax.Array, progress: bool) -> Callable:
    def row(vectors):
        if progress:
            jax.debug.callback(_tick)
        values = jax.vmap(cost)(jnp.concatenate([x + vectors, x - vectors]))
        return tuple(jnp.split(values, 2))

    return row


def _direction_row(
    cost: Callable, x: jax.Array, gradient: jax.Array, backprop: jax.Array, progress: bool
) -> Callable:
    def one(key_data, step):
        key = jax.random.wrap_key_data(key_data)
        v = jax.random.normal(key, x.shape, dtype=x.dtype)
        v = v / jnp.linalg.norm(v)
        up, down = x + step * v, x - step * v
        # The displacement actually applied, after rounding, divided by the nominal step.
        mean_step = ((up - x) + (x - down)) / (2 * step)
        return up, down, mean_step @ gradient, mean_step @ backprop

    def row(key_data, step):
        if progress:
            jax.debug.callback(_tick)
        up, down, proj_ad, proj_bp = jax.vmap(one)(key_data, step)
        values = jax.vmap(cost)(jnp.concatenate([up, down]))
        half = step.shape[0]
        return values[:half], values[half:], proj_ad, proj_bp, step, step

    return row


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
    batch_size: int | None,
    memory_budget: int | None,
    devices: Sequence[Any] | None,
    incremental: bool | None,
) -> _Batches:
    devices = tuple(devices or jax.devices())
    n_dev = len(devices)
    budget = memory_budget if memory_budget is not None else default_memory_budget(devices)
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
            arrays = tuple(
                _pad_rows(a, batches, width)
                for a in (
                    probe.coords.astype(np.int32),
                    probe.step_up.astype(np.float64),
                    probe.step_down.astype(np.float64),
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
) -> tuple[Any, ...]:
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
    batch_size: int | None = None,
    memory_budget: int | None = None,
    devices: Sequence[Any] | None = None,
    incremental: bool | None = None,
) -> jax.stages.Lowered:
    """The program :func:`evaluate` runs for these probes, lowered (for cost and memory analysis).

    Call with x64 enabled.
    """
    probes = [p for p in probes if p.count > 0]
    b = _batches(twin, leaves, probes, batch_size, memory_budget, devices, incremental)
    program = _program(twin, b.layout, with_gradient, False, b.devices, _fast(probes))
    return program.lower(*_inputs(twin, leaves, None, b))


def evaluate(
    twin: Twin,
    leaves: Sequence[np.ndarray],
    probes: Sequence[Probe],
    *,
    backprop: Sequence[np.ndarray] | None = None,
    with_gradient: bool = True,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool | None = None,
    devices: Sequence[Any] | None = None,
    incremental: bool | None = None,
    cache: bool | None = None,
) -> tuple[float, float, list[np.ndarray] | None, list[Evaluation]]:
    """Evaluates the twin at θ and at every perturbed point the probes ask for.

    Must be called with x64 enabled; ``leaves`` are float64.

    Args:
        twin: the traced JAX twin.
        leaves: the params leaves (float64).
        probes: the probe groups (groups with no probes are skipped).
        backprop: the user's gradient leaves (needed by direction probes).
        with_gradient: also return ``jax.grad`` of the twin at θ.
        batch_size: perturbations per batch and device; ``None`` picks it from the budget.
        memory_budget: bytes a batch may use per device; ``None``: :func:`default_memory_budget`.
        progress: show a progress bar; ``None``: only on a terminal.
        devices: devices to split each batch over; ``None``: all of ``jax.devices()``.
        incremental: evaluate large leaves incrementally; ``None``: from 64 entries up, False:
            every perturbed point from scratch.
        cache: keep compiled programs on disk (:mod:`jaxcheck.compile_cache`); ``None``: unless
            ``JAXCHECK_NO_CACHE=1``.

    Returns:
        ``(cost at θ, the largest sum of magnitudes among the twin's intermediates at θ (see
        :func:`jaxcheck.twin.cost_and_terms`), gradient leaves or None, one Evaluation per
        probe)``.
    """
    probes = [p for p in probes if p.count > 0]
    b = _batches(twin, leaves, probes, batch_size, memory_budget, devices, incremental)
    devices, sizes = b.devices, b.sizes
    modes = [inc for *_, inc in b.layout]
    inputs = _inputs(twin, leaves, backprop, b)
    distributed.verify_same_everywhere(*inputs[:3], (b.layout, b.batches, b.sizes), devices)
    inputs = distributed.global_inputs(*inputs, devices)
    shape = b.layout
    persistent = enabled(cache)
    bar = _Progress(sum(b.batches), progress)
    _ACTIVE_PROGRESS.append(bar)
    try:
        with jax.disable_jit(False):
            try:
                program = _program(
                    twin, shape, with_gradient, bar.bar is not None, devices, _fast(probes)
                )
                value, gradient, outs = program(*inputs, persistent=persistent)
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
                program = _program(
                    twin, shape, with_gradient, bar.bar is not None, devices, _fast(probes)
                )
                value, gradient, outs = program(*inputs, persistent=persistent)
        value, terms = float(value[0]), float(value[1])
        gradient = None if gradient is None else [np.asarray(g) for g in gradient]
        outs = jax.tree_util.tree_map(np.asarray, outs)
    finally:
        _ACTIVE_PROGRESS.pop()
        bar.close()
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
                Evaluation(
                    flat[0], flat[1], probe.step_up, probe.step_down, up2, down2, None, None, size
                )
            )
        else:
            up, down, proj_ad, proj_bp, s_up, s_down = flat
            evaluations.append(
                Evaluation(up, down, s_up, s_down, None, None, proj_ad, proj_bp, size)
            )
    return value, terms, gradient, evaluations


#: Programs with at most this many probes are compiled with less optimisation: they run in
#: milliseconds, and compiling them fully would take longer than running them many times.
FAST_COMPILE_PROBES = 4096


#: XLA options for small programs on a CPU: about a quarter of the default compile time.
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _fast_compile_options(platform: str) -> dict[str, Any] | None:
    return dict(FAST_COMPILE_OPTIONS) if platform == "cpu" else None


def _fast(probes: Sequence[Probe]) -> bool:
    return sum(p.count for p in probes) <= FAST_COMPILE_PROBES
