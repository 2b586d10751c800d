"""The benchmark's measuring primitives: the machine, the matmul rate, FD-equivalent FLOPs.

Also the classic NumPy loop, jaxcheck's checks timed with their compilations counted (through
``jax.monitoring``, nothing patched), and the lesson's cold start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck import Report, check, models

__all__ = [
    "SEED_EPSILON",
    "SEED_THRESHOLD",
    "Compilations",
    "cache_directory",
    "LoopResult",
    "Timed",
    "check_accepts",
    "child_environment",
    "classic_loop",
    "counting_compilations",
    "fd_equivalent_flops",
    "full_probes",
    "full_variants",
    "lesson_cold_start",
    "machine_info",
    "matmul_rate",
    "time_check",
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


def full_probes(params: Any) -> dict[str, int]:
    """Every coordinate of every leaf: the probes of a full check, per leaf path."""
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
# Compilations, counted through jax.monitoring
# --------------------------------------------------------------------------------------------

#: The duration events jax (0.10) records for every jitted program it builds: tracing to a jaxpr,
#: lowering to MLIR, and the backend compile, which includes reading the persistent compilation
#: cache (a hit also records ``CACHE_RETRIEVAL_EVENT``).
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_RETRIEVAL_EVENT = "/jax/compilation_cache/cache_retrieval_time_sec"


@dataclasses.dataclass
class Compilations:
    """What JAX compiled while :func:`counting_compilations` was active.

    Attributes:
        compiles: Programs the XLA compiler built (persistent-cache hits excluded).
        cache_hits: Programs read back from JAX's persistent compilation cache.
        compile_seconds: Seconds in backend compiles, cache reads included.
        traces: Functions traced to a jaxpr.
        trace_seconds: Seconds tracing.
        lower_seconds: Seconds lowering jaxprs to MLIR.
        names: The name of each backend compile, in order.
        disk_loads: Programs jaxcheck loaded from its own disk cache (``JAXCHECK_CACHE_DIR``),
            which JAX's compile events do not see; ``None`` where this jaxcheck has no such
            cache.
        disk_stores: Programs jaxcheck wrote to its disk cache; ``None`` likewise.
    """

    compiles: int = 0
    cache_hits: int = 0
    compile_seconds: float = 0.0
    traces: int = 0
    trace_seconds: float = 0.0
    lower_seconds: float = 0.0
    names: list[str] = dataclasses.field(default_factory=list)
    disk_loads: int | None = None
    disk_stores: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The counts as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


@contextlib.contextmanager
def counting_compilations() -> Iterator[Compilations]:
    """Counts JAX's traces and compilations inside the ``with`` block, by ``jax.monitoring``.

    Nothing of jaxcheck is patched: a listener of JAX's own duration events sees every program
    any code in the process builds while the block runs.

    Yields:
        A :class:`Compilations`, filled in as the block runs.
    """
    counts = Compilations()

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event == BACKEND_COMPILE_EVENT:
            counts.compiles += 1
            counts.compile_seconds += duration
            counts.names.append(str(kwargs.get("fun_name", "?")))
        elif event == CACHE_RETRIEVAL_EVENT:
            counts.cache_hits += 1
        elif event == TRACE_EVENT:
            counts.traces += 1
            counts.trace_seconds += duration
        elif event == LOWER_EVENT:
            counts.lower_seconds += duration

    disk = _disk_cache_stats()
    before = dict(disk) if disk is not None else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        # A cache hit goes through the backend-compile event too; it compiled nothing.
        counts.compiles -= counts.cache_hits
        if disk is not None and before is not None:
            counts.disk_loads = disk.get("loaded", 0) - before.get("loaded", 0)
            counts.disk_stores = disk.get("stored", 0) - before.get("stored", 0)


def _disk_cache_stats() -> Mapping[str, int] | None:
    """jaxcheck's own count of programs loaded from and stored to its disk cache, if it keeps one.

    Read only; a jaxcheck without ``jaxcheck.compile_cache.stats`` gives ``None``.
    """
    try:
        from jaxcheck._engine.evaluate import compile_cache
    except ImportError:
        return None
    stats = getattr(compile_cache, "stats", None)
    return stats if isinstance(stats, Mapping) else None


@contextlib.contextmanager
def cache_directory(path: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Points jaxcheck's persistent cache (``JAXCHECK_CACHE_DIR``) at ``path`` inside the block.

    Args:
        path: The directory; ``None``: a new empty temporary one, deleted afterwards, so that
            first calls compile instead of loading what an earlier run stored.

    Yields:
        The directory.
    """
    before = os.environ.get("JAXCHECK_CACHE_DIR")
    with contextlib.ExitStack() as stack:
        if path is None:
            path = stack.enter_context(tempfile.TemporaryDirectory(prefix="jaxcheck-bench-"))
        os.environ["JAXCHECK_CACHE_DIR"] = str(path)
        try:
            yield str(path)
        finally:
            if before is None:
                os.environ.pop("JAXCHECK_CACHE_DIR", None)
            else:
                os.environ["JAXCHECK_CACHE_DIR"] = before


# --------------------------------------------------------------------------------------------
# jaxcheck, timed
# --------------------------------------------------------------------------------------------


def check_accepts(keyword: str) -> bool:
    """Whether this jaxcheck's ``check`` takes ``keyword`` (the engine gains options over time).

    Examples:
        >>> check_accepts("method")
        True
    """
    return keyword in inspect.signature(check).parameters


def full_variants() -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """The full-mode variants to time, and why the brute-force one is left out (``None``: it isn't).

    ``full`` is the engine's automatic choice; ``full (brute force)`` passes
    ``incremental=False``, which evaluates every perturbed point from scratch.

    Returns:
        ``[(label, options), ...]`` and the reason brute force cannot be timed, if any.
    """
    variants = [("full", {"method": "full"})]
    if not check_accepts("incremental"):
        return variants, "this jaxcheck's check() has no incremental= keyword"
    variants.append(("full (brute force)", {"method": "full", "incremental": False}))
    return variants, None


@dataclasses.dataclass
class Timed:
    """A first call of ``check`` and its steady state.

    Attributes:
        first: Seconds of the first call (tracing and compilation included).
        steady: Seconds of the fastest further call with the same model.
        report: The last call's report.
        first_compilations: What the first call compiled.
        steady_compilations: What the steady calls compiled (nothing, when the engine's
            in-process cache works).
    """

    first: float
    steady: float
    report: Report
    first_compilations: Compilations
    steady_compilations: Compilations


def time_check(model: models.Model, grad: Callable, repeats: int = 1, **options: Any) -> Timed:
    """Times a first call of ``check`` (compile included) and then the steady state.

    The steady state is the fastest of ``repeats`` further calls with the same model.

    Args:
        model: The zoo model; its ``jax_cost`` is passed as the twin.
        grad: The backprop to check.
        repeats: Steady-state calls.
        **options: Passed to ``check``.

    Returns:
        The :class:`Timed` calls.
    """

    def run() -> tuple[float, Report]:
        start = time.perf_counter()
        report = check(model.cost, grad, model.params, jax_cost=model.jax_cost, **options)
        return time.perf_counter() - start, report

    gc.collect()  # a full collection due now would otherwise land in the first call
    with counting_compilations() as first_compilations:
        first, _ = run()
    steady = math.inf
    with counting_compilations() as steady_compilations:
        for _ in range(repeats):
            seconds, report = run()
            steady = min(steady, seconds)
    return Timed(first, steady, report, first_compilations, steady_compilations)


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


def child_environment(cache_dir: str | None) -> dict[str, str]:
    """The environment of a benchmark's child process.

    The checkout's package and ``benchmarks/`` go first on ``PYTHONPATH``, the accelerator is
    not preallocated (the parent may hold it), and jaxcheck's persistent cache is ``cache_dir``
    (a fresh directory makes a cold start; ``JAXCHECK_NO_CACHE``, when the caller set it, is
    passed on).

    Args:
        cache_dir: The ``JAXCHECK_CACHE_DIR`` of the child; ``None``: as in this process.

    Returns:
        A copy of ``os.environ`` with those changes.
    """
    here = Path(__file__).resolve().parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(here.parent), str(here), env.get("PYTHONPATH")])
    )
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if cache_dir is not None:
        env["JAXCHECK_CACHE_DIR"] = cache_dir
    return env


def lesson_cold_start(timeout: float = 600.0) -> dict[str, Any]:
    """Runs one ``jc.check`` of the lesson's network in a fresh Python process (cold start).

    The subprocess imports jaxcheck (timed apart), checks the correct backprop (the timed call:
    tracing and compilation included), then the buggy one (warm) and the seed's own loop. Its
    persistent cache directory is new and empty.

    Args:
        timeout: Seconds before the subprocess is abandoned.

    Returns:
        The subprocess's measurements, plus ``wall_seconds`` of the whole process.
    """
    with tempfile.TemporaryDirectory(prefix="jaxcheck-bench-cache-") as cache:
        command = [sys.executable, "-c", _LESSON_SCRIPT]
        return run_child(command, cache, timeout, "the lesson's subprocess")


def run_child(command: list[str], cache_dir: str, timeout: float, what: str) -> dict[str, Any]:
    """Runs a child process that prints one JSON object last; returns it with its wall time.

    Args:
        command: the child's command line.
        cache_dir: the child's jaxcheck disk-cache directory.
        timeout: seconds before the child is abandoned.
        what: how to name the child in an error.

    Returns:
        The child's JSON object, plus ``wall_seconds`` of the whole process.
    """
    start = time.perf_counter()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=child_environment(cache_dir),
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{what} exited with {done.returncode}: {done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    result["wall_seconds"] = wall
    return result
