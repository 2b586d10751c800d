"""Finite differences of the JAX twin, for many perturbed parameter vectors at once.

Per leaf, the cost is vmapped over the perturbed coordinates (or directions) of that leaf only,
so everything upstream of the leaf is computed once; ``lax.map`` walks the batches so memory
stays bounded, and with several devices each batch is split across them with ``shard_map``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._incremental import perturbed_cost

__all__ = [
    "DEFAULT_CPU_BUDGET",
    "INCREMENTAL",
    "Evaluation",
    "LeafProbe",
    "default_memory_budget",
    "evaluate",
    "evaluation_bytes",
    "scalar_of",
]

_LOG = logging.getLogger("jaxcheck")

#: Evaluate coordinate perturbations incrementally (see :mod:`jaxcheck._incremental`): a
#: perturbed weight's first matrix product is updated by one slice instead of recomputed.
#: False evaluates the twin from scratch at every perturbed point (brute force).
INCREMENTAL = True
#: Leaves smaller than this are evaluated from scratch: for them the saving would not pay for
#: the larger program to compile. Larger ones are not: a from-scratch batch of a mid-sized
#: bias makes large batched products that a GPU compiler spends tens of seconds autotuning.
INCREMENTAL_MIN_SIZE = 64
#: Memory budget for one batch of perturbed evaluations on a CPU: 512 MiB.
DEFAULT_CPU_BUDGET = 512 * 2**20
#: Fraction of an accelerator's memory given to one batch of perturbed evaluations.
ACCELERATOR_BUDGET_FRACTION = 0.25


def scalar_of(value: Any) -> jax.Array:
    """The scalar cost out of what a JAX twin returned (a scalar or a tuple led by one)."""
    if isinstance(value, (tuple, list)):
        value = value[0]
    value = jnp.asarray(value)
    return value.reshape(())


@dataclasses.dataclass(frozen=True)
class LeafProbe:
    """What to perturb in one leaf.

    Attributes:
        leaf: index of the leaf in the flattened params.
        kind: ``"coordinate"`` (perturb single entries) or ``"direction"`` (random unit vectors).
        coords: flat indices of the perturbed entries (coordinate kind).
        step_up: the exact step up per probe, ``(θ + h) − θ`` as represented in float64.
        step_down: the exact step down per probe, ``θ − (θ − h)``.
        count: number of probes (coordinates or directions).
        step: the nominal step along a direction (direction kind).
        seed: seed of the random directions (direction kind).
        ids: which directions of that seed (direction kind).
    """

    leaf: int
    kind: str
    count: int
    coords: np.ndarray | None = None
    step_up: np.ndarray | None = None
    step_down: np.ndarray | None = None
    step: float = 0.0
    seed: int = 0
    ids: np.ndarray | None = None


@dataclasses.dataclass
class Evaluation:
    """Cost values at the perturbed points of one leaf.

    Attributes:
        up: J(θ + step) per probe.
        down: J(θ − step) per probe.
        step_up, step_down: the exact steps per probe (direction kind: the norm of the
            actual displacement over the nominal step is folded into the projections).
        projected_autodiff: direction kind only, ``∇J·d / h`` for the actual displacement d.
        projected_backprop: direction kind only, ``backprop·d / h``.
        batch_size: perturbations per vmapped batch and device.
    """

    up: np.ndarray
    down: np.ndarray
    step_up: np.ndarray
    step_down: np.ndarray
    projected_autodiff: np.ndarray | None
    projected_backprop: np.ndarray | None
    batch_size: int


def default_memory_budget(devices: Sequence[Any] | None = None) -> int:
    """Bytes one batch of perturbed evaluations may use, per device.

    A quarter of an accelerator's memory when the device reports it, else 512 MiB.
    """
    devices = devices or jax.devices()
    try:
        stats = devices[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPUs and some plugins report nothing
        stats = {}
    limit = stats.get("bytes_limit")
    if limit and devices[0].platform != "cpu":
        return int(limit * ACCELERATOR_BUDGET_FRACTION)
    return DEFAULT_CPU_BUDGET


def _replace(leaves: Sequence[Any], index: int, value: Any) -> list[Any]:
    out = list(leaves)
    out[index] = value
    return out


def _cost_of_leaf(jax_cost: Callable, treedef: Any, leaves: Sequence[Any], index: int) -> Callable:
    shape = leaves[index].shape

    def cost(flat: jax.Array) -> jax.Array:
        params = jax.tree_util.tree_unflatten(treedef, _replace(leaves, index, flat.reshape(shape)))
        return scalar_of(jax_cost(params))

    return cost


def evaluation_bytes(
    jax_cost: Callable, treedef: Any, leaves: Sequence[np.ndarray], index: int
) -> int:
    """Bytes one perturbed evaluation needs beyond what is shared by the whole batch.

    Traces one perturbed evaluation of the cost, exactly as the batch will run it, and adds up
    the sizes of every intermediate that depends on the perturbation (an upper bound on what
    vmap batches). Cached by the twin, the shapes and the leaf.
    """
    shapes = tuple((tuple(np.shape(v)), np.dtype(np.result_type(v)).name) for v in leaves)
    incremental = _incremental_for(leaves[index])
    return _evaluation_bytes(jax_cost, treedef, shapes, index, incremental)


@functools.lru_cache(maxsize=1024)
def _evaluation_bytes(
    jax_cost: Callable,
    treedef: Any,
    shapes: tuple[tuple[tuple[int, ...], str], ...],
    index: int,
    incremental: bool,
) -> int:
    abstract = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
    n = len(abstract)

    def total(ls: Sequence[Any]) -> jax.Array:
        return scalar_of(jax_cost(jax.tree_util.tree_unflatten(treedef, list(ls))))

    with jax.enable_x64(True):
        if incremental:
            probe = (jax.ShapeDtypeStruct((), np.int32), jax.ShapeDtypeStruct((), np.float64))
            try:
                jaxpr = jax.make_jaxpr(lambda i, s, *ls: perturbed_cost(total, ls, index)(i, s))(
                    *probe, *abstract
                ).jaxpr
            except Exception:  # noqa: BLE001 - the program falls back to brute force too
                jaxpr = None
            if jaxpr is not None:
                # The shared product is broadcast before one slice is added to each copy, and
                # XLA keeps both buffers alive: count half as much again.
                start = set(map(id, jaxpr.invars[:2]))
                return int(1.5 * _dependent_bytes(jaxpr, start))
        leaf = abstract[index]
        flat = jax.ShapeDtypeStruct((math.prod(leaf.shape),), leaf.dtype)

        def perturbed(x: jax.Array, *ls: Any) -> jax.Array:
            moved = list(ls)
            moved[index] = x.reshape(leaf.shape)
            return total(moved)

        jaxpr = jax.make_jaxpr(perturbed)(flat, *abstract).jaxpr
    nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    assert len(jaxpr.invars) == n + 1
    return nbytes + _dependent_bytes(jaxpr, {id(jaxpr.invars[0])})


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


def _incremental_for(leaf: Any) -> bool:
    return INCREMENTAL and int(np.size(leaf)) >= INCREMENTAL_MIN_SIZE


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


def _shard_map(fn: Callable, mesh: Any, in_specs: Any, out_specs: Any) -> Callable:
    shard_map = getattr(jax, "shard_map", None)
    if shard_map is not None:
        return shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map as legacy  # jax < 0.7

    return legacy(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


@functools.lru_cache(maxsize=128)
def _program(
    jax_cost: Callable,
    treedef: Any,
    layout: tuple[tuple[int, str, int, int], ...],
    with_gradient: bool,
    progress: bool,
    device_ids: tuple[int, ...],
    incremental: bool = True,
) -> Callable:
    """Compiles one program: cost and gradient at θ and the perturbed costs of every leaf.

    ``layout`` holds, per probed leaf, (leaf index, kind, number of batches, batch per device).
    The result is cached, so checking the same twin again with the same shapes recompiles
    nothing.
    """
    devices = [d for d in jax.devices() if d.id in device_ids]
    mesh = None
    if len(devices) > 1:
        mesh = jax.sharding.Mesh(np.array(devices), ("probes",))
    P = jax.sharding.PartitionSpec

    def run(leaves, backprop, probe_args):
        leaves = list(leaves)
        total = lambda ls: scalar_of(  # noqa: E731
            jax_cost(jax.tree_util.tree_unflatten(treedef, list(ls)))
        )
        value = total(leaves)
        gradient = jax.grad(total)(leaves) if with_gradient else None
        outs = []
        for (index, kind, _, _), args in zip(layout, probe_args):
            cost = _cost_of_leaf(jax_cost, treedef, leaves, index)
            x = leaves[index].reshape(-1)
            if kind == "coordinate":
                use = incremental and x.size >= INCREMENTAL_MIN_SIZE
                update = perturbed_cost(total, leaves, index) if use else None
                row = _coordinate_row(cost, x, progress, update)
            else:
                g = gradient[index].reshape(-1) if with_gradient else jnp.zeros_like(x)
                row = _direction_row(cost, x, g, backprop[index].reshape(-1), progress)

            def local(*arrays, row=row):
                if arrays[0].shape[0] == 1:  # one batch: no loop to compile
                    return jax.tree_util.tree_map(lambda o: o[None], row(*(a[0] for a in arrays)))
                return jax.lax.map(lambda a: row(*a), arrays)

            if mesh is not None:
                spec = P(None, "probes")
                n_args = len(args)
                n_out = 2 if kind == "coordinate" else 6
                local = _shard_map(local, mesh, (spec,) * n_args, (spec,) * n_out)
            outs.append(local(*args))
        return value, gradient, outs

    return jax.jit(run)


def _coordinate_row(
    cost: Callable, x: jax.Array, progress: bool, incremental: Callable | None = None
) -> Callable:
    def row(coords, up, down):
        if progress:
            jax.debug.callback(_tick)
        both = jnp.concatenate([coords, coords])
        steps = jnp.concatenate([up, -down])
        if incremental is not None:
            values = jax.vmap(incremental)(both, steps)
        else:
            points = jax.vmap(lambda i, s: x.at[i].add(s))(both, steps)
            values = jax.vmap(cost)(points)
        half = coords.shape[0]
        return values[:half], values[half:]

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


def _batch_size(count: int, per_eval: int, budget: int, n_devices: int) -> int:
    # Each probe costs two evaluations (up and down).
    fit = max(1, budget // max(1, 2 * per_eval))
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


def evaluate(
    jax_cost: Callable,
    treedef: Any,
    leaves: Sequence[np.ndarray],
    probes: Sequence[LeafProbe],
    *,
    backprop: Sequence[np.ndarray] | None = None,
    with_gradient: bool = True,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool | None = None,
    devices: Sequence[Any] | None = None,
) -> tuple[float, list[np.ndarray] | None, list[Evaluation]]:
    """Evaluates the twin at θ and at every perturbed point the probes ask for.

    Must be called with x64 enabled; ``leaves`` are float64.

    Args:
        jax_cost: the JAX twin, ``params -> scalar``.
        treedef: the params structure.
        leaves: the params leaves (float64).
        probes: one :class:`LeafProbe` per leaf to perturb (leaves with no probes are skipped).
        backprop: the user's gradient leaves (needed by direction probes).
        with_gradient: also return ``jax.grad`` of the twin at θ.
        batch_size: perturbations per batch and device; ``None`` picks it from the budget.
        memory_budget: bytes a batch may use per device; ``None``: :func:`default_memory_budget`.
        progress: show a progress bar; ``None``: only on a terminal.
        devices: devices to split each batch over; ``None``: all of ``jax.devices()``.

    Returns:
        ``(cost at θ, gradient leaves or None, one Evaluation per probe)``.
    """
    devices = list(devices or jax.devices())
    n_dev = len(devices)
    budget = memory_budget if memory_budget is not None else default_memory_budget(devices)
    probes = [p for p in probes if p.count > 0]
    layout, args, sizes = [], [], []
    for probe in probes:
        if batch_size is not None:
            per_device = math.ceil(probe.count / n_dev)
            size = max(1, min(int(batch_size), per_device))
        else:
            per_eval = evaluation_bytes(jax_cost, treedef, leaves, probe.leaf)
            size = _batch_size(probe.count, per_eval, budget, n_dev)
        width = size * n_dev
        batches = math.ceil(probe.count / width)
        if probe.kind == "coordinate":
            arrays = (
                _pad_rows(probe.coords.astype(np.int32), batches, width),
                _pad_rows(probe.step_up.astype(np.float64), batches, width),
                _pad_rows(probe.step_down.astype(np.float64), batches, width),
            )
        else:
            base = jax.random.key_data(jax.random.key(probe.seed))
            keys = np.asarray(
                jax.vmap(
                    lambda i, b=base: jax.random.key_data(
                        jax.random.fold_in(jax.random.wrap_key_data(b), i)
                    )
                )(jnp.asarray(probe.ids, dtype=jnp.uint32))
            )
            steps = np.full(probe.count, probe.step, dtype=np.float64)
            arrays = (_pad_rows(keys, batches, width), _pad_rows(steps, batches, width))
        layout.append((probe.leaf, probe.kind, batches, size))
        args.append(arrays)
        sizes.append(size)
    total_batches = sum(b for _, _, b, _ in layout)
    bar = _Progress(total_batches, progress)
    key = (jax_cost, treedef, tuple(layout), with_gradient, bar.bar is not None)
    device_ids = tuple(d.id for d in devices)
    bp = backprop if backprop is not None else [np.zeros_like(v) for v in leaves]
    inputs = ([np.asarray(v) for v in leaves], [np.asarray(b, np.float64) for b in bp], args)
    _ACTIVE_PROGRESS.append(bar)
    try:
        try:
            value, gradient, outs = _program(*key, device_ids, INCREMENTAL)(*inputs)
        except jax.errors.JaxRuntimeError:
            raise  # out of memory and the like: running more would not help
        except Exception as err:
            if not INCREMENTAL:
                raise
            # A twin the incremental evaluator cannot follow is evaluated from scratch.
            _LOG.warning(
                "jaxcheck: incremental evaluation failed (%s: %s); evaluating every perturbed "
                "point from scratch instead, which is slower.",
                type(err).__name__,
                err,
            )
            value, gradient, outs = _program(*key, device_ids, False)(*inputs)
        value = float(value)
        gradient = None if gradient is None else [np.asarray(g) for g in gradient]
        outs = jax.tree_util.tree_map(np.asarray, outs)
    finally:
        _ACTIVE_PROGRESS.pop()
        bar.close()
    evaluations = []
    for probe, out, size in zip(probes, outs, sizes):
        n = probe.count
        if probe.kind == "coordinate":
            up, down = (o.reshape(-1)[:n] for o in out)
            evaluations.append(
                Evaluation(up, down, probe.step_up, probe.step_down, None, None, size)
            )
        else:
            up, down, proj_ad, proj_bp, s_up, s_down = (o.reshape(-1)[:n] for o in out)
            evaluations.append(Evaluation(up, down, s_up, s_down, proj_ad, proj_bp, size))
    return value, gradient, evaluations
