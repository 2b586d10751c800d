"""The benchmark's measuring primitives: the machine, the matmul rate, FD-equivalent FLOPs.

The classic NumPy loop, jaxcheck's checks timed (with XLA's FLOP count) and the lesson's cold start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck import finite_differences as fdiff
from jaxcheck import models
from jaxcheck import check
from jaxcheck import Report

__all__ = [
    "SEED_EPSILON",
    "SEED_THRESHOLD",
    "LoopResult",
    "classic_loop",
    "fd_equivalent_flops",
    "lesson_cold_start",
    "machine_info",
    "matmul_rate",
]

#: The seed's step and threshold, kept by the classic loop.
SEED_EPSILON = 1e-7
SEED_THRESHOLD = 1e-7


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Describes the machine: devices, CPU, library versions and the load average.

    Returns:
        A JSON-serialisable dict.
    """
    devices = jax.devices()
    try:
        import jaxlib

        jaxlib_version = str(jaxlib.__version__)
    except (ImportError, AttributeError):
        jaxlib_version = "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "device_count": len(devices),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "jax": jax.__version__,
        "jaxlib": jaxlib_version,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def matmul_rate(n: int, reps: int = 7) -> dict[str, Any]:
    """Measures the float64 matmul rate of the default device: jitted ``a @ b``, ``n × n``.

    Args:
        n: Matrix size.
        reps: Timed repetitions after one warm-up call.

    Returns:
        ``{"n", "reps", "seconds_median", "gflops_median", "gflops_best"}``; the median is the
        rate the other rates are compared with.
    """
    with jax.enable_x64(True):
        key_a, key_b = jax.random.split(jax.random.key(0))
        a = jax.random.normal(key_a, (n, n), dtype=jnp.float64)
        b = jax.random.normal(key_b, (n, n), dtype=jnp.float64)
        product = jax.jit(jnp.matmul)
        product(a, b).block_until_ready()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            product(a, b).block_until_ready()
            times.append(time.perf_counter() - start)
        del a, b
    flops = 2.0 * n**3
    median = statistics.median(times)
    return {
        "n": n,
        "reps": reps,
        "seconds_median": median,
        "gflops_median": flops / median / 1e9,
        "gflops_best": flops / min(times) / 1e9,
    }


# --------------------------------------------------------------------------------------------
# What the work is
# --------------------------------------------------------------------------------------------


def _suffix_flops(layers: Sequence[int], m: int, layer: int) -> int:
    """Matmul FLOPs of layers ``layer..L`` for one forward pass of ``m`` examples."""
    pairs = list(zip(layers, layers[1:]))
    return sum(2 * m * n_in * n_out for n_in, n_out in pairs[layer:])


def fd_equivalent_flops(layers: Sequence[int], m: int, probes: Mapping[str, int]) -> int:
    """FLOPs that brute-force central differences execute for the given probes of a ReLU MLP.

    A probe of layer ``l`` (of ``W`` or ``b``) costs two forward passes through the matmuls of
    layers ``l..L``; the layers upstream of the perturbed leaf are computed once and shared.

    Args:
        layers: Widths ``[n_x, n_h1, ..., n_y]``.
        m: Number of examples.
        probes: Probes per leaf path (``"layers/<l>/W"`` or ``"layers/<l>/b"``).

    Returns:
        The FD-equivalent FLOP count.

    Examples:
        >>> fd_equivalent_flops([2, 3, 1], 4, {"layers/1/W": 3, "layers/1/b": 1})
        192
    """
    total = 0
    for path, count in probes.items():
        layer = int(path.split("/")[1])
        total += 2 * int(count) * _suffix_flops(layers, m, layer)
    return total


def _full_probes(params: Any) -> dict[str, int]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): int(np.size(leaf))
        for path, leaf in leaves
    }


# --------------------------------------------------------------------------------------------
# The classic loop
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoopResult:
    """The classic loop's run over some coordinates.

    Attributes:
        seconds: Wall time of the loop over ``checked`` coordinates.
        checked: Coordinates perturbed.
        total: All coordinates N.
        difference: The seed's relative difference over the checked coordinates.
        chunk_seconds: Wall time of each consecutive chunk of the coordinates.
        chunk_sizes: Coordinates in each chunk.
    """

    seconds: float
    checked: int
    total: int
    difference: float
    chunk_seconds: list[float]
    chunk_sizes: list[int]

    @property
    def extrapolated_seconds(self) -> float:
        """Seconds the loop would take over all N coordinates.

        Every coordinate costs the same (a copy of θ and two forward passes), so the time is
        linear in the coordinates; the median chunk's time per coordinate is used, so that a
        burst of load from other processes does not skew it.
        """
        per_coordinate = statistics.median(
            t / n for t, n in zip(self.chunk_seconds, self.chunk_sizes)
        )
        return per_coordinate * self.total


def classic_loop(
    cost: Callable[[Any], Any],
    grad: Callable[[Any], Any],
    params: Any,
    coords: np.ndarray | None = None,
    epsilon: float = SEED_EPSILON,
    chunks: int = 10,
) -> LoopResult:
    """The seed's ``gradient_check_n`` loop, generic over the flattened params.

    Copies the parameter vector θ, nudges one coordinate by ``+epsilon`` and then ``-epsilon``,
    calls the NumPy cost on each, and forms the central difference; then compares with the
    backprop by ``‖grad − gradapprox‖ / (‖grad‖ + ‖gradapprox‖)``. Only the loop is timed.

    Args:
        cost: NumPy ``params -> float`` (or a tuple led by it).
        grad: NumPy ``params -> gradient`` shaped like ``params``.
        params: A pytree of NumPy arrays.
        coords: Flat indices into θ to perturb; ``None``: all of them.
        epsilon: The step.
        chunks: The coordinates are timed in this many consecutive chunks.

    Returns:
        The :class:`LoopResult`.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    shapes = [np.shape(leaf) for leaf in leaves]
    offsets = np.cumsum([0] + [math.prod(s) for s in shapes]).tolist()
    theta = np.concatenate([np.ravel(leaf) for leaf in leaves])
    backprop = np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(grad(params))])
    coords = np.arange(theta.size) if coords is None else np.asarray(coords)

    def unflatten(vector: np.ndarray) -> Any:
        parts = [vector[a:b].reshape(s) for a, b, s in zip(offsets, offsets[1:], shapes)]
        return jax.tree_util.tree_unflatten(treedef, parts)

    def value(vector: np.ndarray) -> float:
        out = cost(unflatten(vector))
        return float(out[0] if isinstance(out, tuple) else out)

    gradapprox = np.empty(coords.size)
    chunk_seconds, chunk_sizes = [], []
    done = 0
    for chunk in np.array_split(coords, min(chunks, coords.size)):
        start = time.perf_counter()
        for k, i in enumerate(chunk, start=done):
            thetaplus = np.copy(theta)
            thetaplus[i] = thetaplus[i] + epsilon
            j_plus = value(thetaplus)
            thetaminus = np.copy(theta)
            thetaminus[i] = thetaminus[i] - epsilon
            j_minus = value(thetaminus)
            gradapprox[k] = (j_plus - j_minus) / (2 * epsilon)
        chunk_seconds.append(time.perf_counter() - start)
        chunk_sizes.append(int(chunk.size))
        done += chunk.size
    g = backprop[coords]
    denominator = np.linalg.norm(g) + np.linalg.norm(gradapprox)
    difference = float(np.linalg.norm(g - gradapprox) / denominator) if denominator else 0.0
    return LoopResult(
        sum(chunk_seconds),
        int(coords.size),
        int(theta.size),
        difference,
        chunk_seconds,
        chunk_sizes,
    )


# --------------------------------------------------------------------------------------------
# jaxcheck, timed
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _recording_programs() -> Iterator[list[tuple[Callable, tuple]]]:
    """Records every compiled finite-difference program the engine runs, with its arguments."""
    calls: list[tuple[Callable, tuple]] = []
    original = getattr(fdiff, "_program", None)
    if original is None:
        yield calls
        return

    def recording(*args: Any, **kwargs: Any) -> Callable:
        program = original(*args, **kwargs)

        def run(*call_args: Any) -> Any:
            calls.append((program, call_args))
            return program(*call_args)

        return run

    fdiff._program = recording
    try:
        yield calls
    finally:
        fdiff._program = original


def _xla_flops(calls: Sequence[tuple[Callable, tuple]]) -> float | None:
    """XLA's own FLOP count of the recorded programs, or ``None`` where it is not available.

    XLA's cost analysis counts the body of a while loop once, whatever its trip count, so each
    program is lowered again (not compiled, nothing is allocated) with every leaf's batches
    merged into one, which the engine runs without a loop. With several devices the engine
    shards the probes and XLA counts one device's share, so the count is scaled by the devices.
    """
    if not calls:
        return None
    total = 0.0
    try:
        with jax.enable_x64(True):
            for program, (leaves, backprop, probe_args) in calls:
                merged = jax.tree_util.tree_map(
                    lambda a: np.reshape(a, (1, a.shape[0] * a.shape[1]) + a.shape[2:]),
                    probe_args,
                )
                cost = program.lower(leaves, backprop, merged).cost_analysis()
                if isinstance(cost, (list, tuple)):
                    cost = cost[0] if cost else None
                if not cost or "flops" not in cost:
                    return None
                total += float(cost["flops"])
    except Exception:  # noqa: BLE001 - an optional figure; the engine's internals may change
        return None
    return total * jax.device_count()


def _incremental_modes() -> list[tuple[str, bool | None]]:
    if isinstance(getattr(fdiff, "INCREMENTAL", None), bool):
        return [("full", True), ("full (brute force)", False)]
    return [("full", None)]


@contextlib.contextmanager
def _incremental(value: bool | None) -> Iterator[None]:
    if value is None:
        yield
        return
    before = fdiff.INCREMENTAL
    fdiff.INCREMENTAL = value
    try:
        yield
    finally:
        fdiff.INCREMENTAL = before


@dataclasses.dataclass
class _Timed:
    first: float
    steady: float
    report: Report
    xla_flops: float | None


def _time_check(model: models.Model, grad: Callable, repeats: int = 1, **options: Any) -> _Timed:
    """Times a first call of ``check`` (compile included) and then the steady state.

    The steady state is the fastest of ``repeats`` further calls with the same shapes, which
    recompile nothing.
    """

    def run() -> tuple[float, Report]:
        start = time.perf_counter()
        report = check(model.cost, grad, model.params, jax_cost=model.jax_cost, **options)
        return time.perf_counter() - start, report

    first, _ = run()
    with _recording_programs() as calls:
        steady, report = run()
    for _ in range(repeats - 1):
        steady = min(steady, run()[0])
    return _Timed(first, steady, report, _xla_flops(calls))


# --------------------------------------------------------------------------------------------
# The lesson's network, cold
# --------------------------------------------------------------------------------------------

_LESSON_SCRIPT = textwrap.dedent(
    """
    import json, time
    start = time.perf_counter()
    import jaxcheck as jc
    from jaxcheck import lesson
    imported = time.perf_counter()
    X, Y, parameters = lesson.gradient_check_n_test_case()
    cost = lambda p: lesson.forward_propagation_n(X, Y, p)
    grad = lambda p: lesson.backward_propagation_n(X, Y, lesson.forward_propagation_n(X, Y, p)[1])
    buggy = lambda p: lesson.backward_propagation_n_buggy(
        X, Y, lesson.forward_propagation_n(X, Y, p)[1]
    )
    twin = lambda p: lesson.forward_propagation_n_jax(X, Y, p)
    t0 = time.perf_counter()
    report = jc.check(cost, grad, parameters, jax_cost=twin, progress=False)
    t1 = time.perf_counter()
    bug = jc.check(cost, buggy, parameters, jax_cost=twin, progress=False)
    t2 = time.perf_counter()
    difference = lesson.gradient_check_n(parameters, grad(parameters), X, Y, print_msg=False)
    t3 = time.perf_counter()
    print(json.dumps({
        "import_seconds": imported - start,
        "check_seconds": t1 - t0,
        "ok": report.ok,
        "params": int(sum(v.size for v in parameters.values())),
        "second_check_seconds": t2 - t1,
        "buggy_failing": bug.failing,
        "seed_loop_seconds": t3 - t2,
        "seed_loop_difference": float(difference),
    }))
    """
)


def lesson_cold_start(timeout: float = 600.0) -> dict[str, Any]:
    """Runs one ``jc.check`` of the lesson's network in a fresh Python process (cold start).

    The subprocess imports jaxcheck (timed apart), checks the correct backprop (the timed call:
    tracing and compilation included), then the buggy one (warm) and the seed's own loop.

    Args:
        timeout: Seconds before the subprocess is abandoned.

    Returns:
        The subprocess's measurements, plus ``wall_seconds`` of the whole process.
    """
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    # The parent may already hold most of an accelerator's memory.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _LESSON_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"the lesson's subprocess exited with {done.returncode}: {done.stderr[-2000:]}"
        )
    result = json.loads(lines[-1])
    result["wall_seconds"] = wall
    return result
