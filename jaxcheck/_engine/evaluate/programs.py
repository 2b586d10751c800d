"""The compiled programs of a check: cost, ``jax.grad`` and every perturbed point, in one.

One program per probe layout, built over the traced twin and cached on its structural key (a
new closure of the same code and shapes compiles nothing) and on disk
(:mod:`jaxcheck._engine.evaluate.compile_cache`). Each probe group is vmapped over its
perturbations and walked
in batches with ``lax.map``; with several devices, or processes, each batch is split across them
with ``shard_map`` (:mod:`jaxcheck._engine.evaluate.processes`).
"""

from __future__ import annotations

import collections
import contextlib
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck._engine.evaluate import processes as distributed
from jaxcheck._engine.evaluate.compile_cache import load_or_compile
from jaxcheck._engine.evaluate.incremental import perturbed_cost
from jaxcheck._engine.system.twin import Twin, cost_and_terms

__all__ = [
    "FAST_COMPILE_OPTIONS",
    "FAST_COMPILE_PROBES",
    "PROGRAM_CACHE_SIZE",
    "fast",
    "group_cost",
    "program",
    "progress_bar",
    "terminal_bar",
]

#: Compiled programs kept, most recently used first.
PROGRAM_CACHE_SIZE = 64


def group_cost(twin: Twin, consts: Any, leaves: Sequence[Any], group: tuple[int, ...]) -> Callable:
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


def terminal_bar(progress: bool | None, total: int, *, worth: bool, desc: str, unit: str) -> Any:
    """The one progress-bar policy of every door: a tqdm bar on stderr, or None.

    Args:
        progress: the user's ``progress=``: True shows the bar, False never; None shows it only
            on a terminal, and only where the work is long enough to be ``worth`` one.
        total: the units of work.
        worth: whether the work is long enough for a bar (the caller's measure).
        desc: the bar's label.
        unit: the name of a unit of work.
    """
    if not (progress or (progress is None and worth and sys.stderr.isatty())):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


class _Progress:
    """A tqdm bar over batches, fed from inside the compiled program by a debug callback."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        self.bar = terminal_bar(enabled, total, worth=total > 1, desc="jaxcheck", unit="batch")

    def tick(self, *_: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_ACTIVE_PROGRESS: list[_Progress] = []


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool | None) -> Iterator[bool]:
    """A bar over ``total`` batches for the program run inside; yields whether it is shown."""
    bar = _Progress(total, enabled)
    _ACTIVE_PROGRESS.append(bar)
    try:
        yield bar.bar is not None
    finally:
        _ACTIVE_PROGRESS.pop()
        bar.close()


def _tick(*_: Any) -> None:
    if _ACTIVE_PROGRESS:
        _ACTIVE_PROGRESS[-1].tick()


class _Program:
    """A jitted program and its compiled executables, one per set of input shapes.

    Executables come from the disk cache (:mod:`jaxcheck._engine.evaluate.compile_cache`) when it
    has them; a
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
        # A name of the program across processes (no object identities in it): part of the
        # disk cache's key, with the lowered program text.
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


def program(
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

    def jaxcheck_program(consts, leaves, backprop, probe_args):  # the name XLA logs show
        leaves = list(leaves)
        value, terms = cost_and_terms(twin, consts, leaves)
        gradient = jax.grad(lambda ls: twin.cost(consts, ls))(leaves) if with_gradient else None
        outs = []
        for (group, kind, double, incremental), args in zip(layout, probe_args):
            cost = group_cost(twin, consts, leaves, group)
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
    built = _Program(jaxcheck_program, options, devices, progress, key)
    if key is not None:
        _PROGRAMS[key] = built
        while len(_PROGRAMS) > PROGRAM_CACHE_SIZE:
            _PROGRAMS.popitem(last=False)
    return built


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


#: Programs with at most this many probes are compiled with less optimisation: they run in
#: milliseconds, and compiling them fully would take longer than running them many times.
FAST_COMPILE_PROBES = 4096


#: XLA options for small programs on a CPU: about a quarter of the default compile time.
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _fast_compile_options(platform: str) -> dict[str, Any] | None:
    return dict(FAST_COMPILE_OPTIONS) if platform == "cpu" else None


def fast(counts: Sequence[int]) -> bool:
    """Whether a program with these probe counts is small enough to compile fast."""
    return sum(counts) <= FAST_COMPILE_PROBES
