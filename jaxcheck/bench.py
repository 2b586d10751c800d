"""Benchmarks jaxcheck against the classic one-coordinate-at-a-time loop, on this machine.

``main(argv)`` (the ``jaxcheck bench`` subcommand) measures the float64 matmul rate, times the loop
and jaxcheck's three methods on ReLU MLPs of growing size, checks every verdict, and prints
Markdown tables; ``--json PATH`` also writes every row.
"""

from __future__ import annotations

import argparse
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
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import finite_differences as fdiff
from . import models
from .check import check
from .report import Report

__all__ = [
    "COLUMNS",
    "LOOP_METHOD",
    "SIZES",
    "LoopResult",
    "Size",
    "classic_loop",
    "fd_equivalent_flops",
    "lesson_cold_start",
    "machine_info",
    "main",
    "matmul_rate",
]

#: The seed's step and threshold, kept by the classic loop.
SEED_EPSILON = 1e-7
SEED_THRESHOLD = 1e-7
#: The bug the sanity runs plant: a 1% error in one leaf.
SANITY_BUG = "bias_grad_1_percent"
#: The method column of the classic loop's rows.
LOOP_METHOD = "classic loop (NumPy)"
#: The columns of the main table, in order.
COLUMNS = (
    "model",
    "params N",
    "method",
    "seconds (steady)",
    "first call s (incl. compile)",
    "compile s (≈ first − steady)",
    "speed-up vs loop (steady)",
    "speed-up vs loop (first call)",
    "FD-equiv. GFLOP/s",
    "FD-equiv. rate / matmul rate",
    "XLA-counted GFLOP/s",
    "verdict",
)


@dataclasses.dataclass(frozen=True)
class Size:
    """A ReLU MLP of the zoo (``models.make("relu_mlp", layers=..., m=...)``) to benchmark.

    Attributes:
        name: Short name used by ``--sizes``, e.g. ``"mlp-40k"``.
        layers: Widths ``[n_x, n_h1, ..., n_y]``.
        m: Number of examples.
    """

    name: str
    layers: tuple[int, ...]
    m: int

    @property
    def params(self) -> int:
        """Number of parameters N (weights and biases).

        Examples:
            >>> SIZES["mlp-40k"].params
            40401
        """
        return sum(n_in * n_out + n_out for n_in, n_out in zip(self.layers, self.layers[1:]))


SIZES = {
    size.name: size
    for size in (
        Size("mlp-tiny", (20, 16, 8, 1), 16),
        Size("mlp-40k", (100, 200, 100, 1), 128),
        Size("mlp-234k", (784, 256, 128, 1), 64),
        Size("mlp-1.85M", (784, 1024, 1024, 1), 32),
    )
}
_SMALL = ("mlp-40k", "mlp-234k")
_LARGE = ("mlp-1.85M",)


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
    from jaxcheck import seed
    imported = time.perf_counter()
    X, Y, parameters = seed.gradient_check_n_test_case()
    cost = lambda p: seed.forward_propagation_n(X, Y, p)
    grad = lambda p: seed.backward_propagation_n(X, Y, seed.forward_propagation_n(X, Y, p)[1])
    buggy = lambda p: seed.backward_propagation_n_buggy(
        X, Y, seed.forward_propagation_n(X, Y, p)[1]
    )
    twin = lambda p: seed.forward_propagation_n_jax(X, Y, p)
    t0 = time.perf_counter()
    report = jc.check(cost, grad, parameters, jax_cost=twin, progress=False)
    t1 = time.perf_counter()
    bug = jc.check(cost, buggy, parameters, jax_cost=twin, progress=False)
    t2 = time.perf_counter()
    difference = seed.gradient_check_n(parameters, grad(parameters), X, Y, print_msg=False)
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


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def _parse_sizes(text: str, large: bool) -> list[Size]:
    if text == "small":
        names: list[str] = list(_SMALL)
    elif text == "all":
        names = list(_SMALL + _LARGE)
    else:
        names = [part.strip() for part in text.split(",") if part.strip()]
    if large:
        names += [n for n in _LARGE if n not in names]
    sizes = []
    for name in names:
        if name in SIZES:
            sizes.append(SIZES[name])
            continue
        try:
            widths, m = name.split("@")
            sizes.append(Size(name, tuple(int(w) for w in widths.split("-")), int(m)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"unknown size {name!r}: expected small, all, or a comma-separated list of "
                f"{', '.join(SIZES)} or WIDTHS@M such as 100-200-100-1@128"
            ) from None
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxcheck bench",
        description=(
            "Times the classic one-coordinate-at-a-time gradient-check loop and jaxcheck's full, "
            "sample and directional modes on ReLU MLPs of growing size, against this machine's "
            "float64 matmul rate, and checks every verdict. Prints Markdown tables."
        ),
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help=(
            "small (mlp-40k, mlp-234k), all (adds mlp-1.85M), or a comma-separated list of "
            f"{', '.join(SIZES)} or WIDTHS@M (default: small on a CPU, all on an accelerator)"
        ),
    )
    parser.add_argument("--large", action="store_true", help="add mlp-1.85M to the sizes")
    parser.add_argument(
        "--quick", action="store_true", help="only mlp-tiny with tiny settings (for tests)"
    )
    parser.add_argument(
        "--methods",
        default="loop,full,sample,directional",
        help="comma-separated subset of loop,full,sample,directional (default: all)",
    )
    parser.add_argument("--samples", type=int, default=64, help="samples per leaf (default 64)")
    parser.add_argument("--directions", type=int, default=8, help="directions per leaf (default 8)")
    parser.add_argument(
        "--loop-coords",
        type=int,
        default=2000,
        help=(
            "time the classic loop on this many random coordinates and extrapolate to all N "
            "when N is larger (default 2000)"
        ),
    )
    parser.add_argument(
        "--full-max-seconds",
        type=float,
        default=None,
        help=(
            "skip brute-force full mode where it would take longer than this at the measured "
            "matmul rate (FD-equivalent FLOPs / matmul rate; default: 30 on a CPU, 120 on an "
            "accelerator); the incremental full mode always runs"
        ),
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=(
            "steady-state calls per jaxcheck method; the fastest is reported (default: 2 on a "
            "CPU, 1 on an accelerator)"
        ),
    )
    parser.add_argument(
        "--matmul-n", type=int, default=None, help="matmul size (default 1024 CPU, 8192 GPU)"
    )
    parser.add_argument(
        "--no-lesson", action="store_true", help="skip the lesson's cold-start subprocess"
    )
    parser.add_argument("--no-bugs", action="store_true", help="skip the planted-bug sanity runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of models and coordinates")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    return parser


def _seconds(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def _times(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.2f}×" if x < 10 else f"{x:,.0f}×"


def _number(x: float | None, digits: int = 1) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:,.{digits}f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    return "\n".join(lines)


def _main_table(rows: Sequence[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        seconds = _seconds(r["seconds"])
        if r.get("extrapolated_from"):
            seconds += f" (extrapolated from {r['extrapolated_from']:,})"
        if r.get("skipped"):
            seconds = f"skipped: {r['skipped']}"
        compile_s = None
        if r["first_seconds"] is not None and r["seconds"] is not None:
            compile_s = r["first_seconds"] - r["seconds"]
        cells.append(
            [
                r["model"],
                f"{r['params']:,}",
                r["method"],
                seconds,
                _seconds(r["first_seconds"]),
                _seconds(compile_s) if compile_s is None or compile_s >= 0 else "< 0 (noise)",
                _times(r["speedup_steady"]),
                _times(r["speedup_first"]),
                _number(r["fd_gflops"]),
                _number(r["fd_fraction"], 2),
                _number(r["xla_gflops"]),
                r["verdict"],
            ]
        )
    return _markdown(COLUMNS, cells)


def _row(size: Size, method: str, **fields: Any) -> dict[str, Any]:
    row = {
        "model": size.name,
        "layers": list(size.layers),
        "m": size.m,
        "params": size.params,
        "method": method,
        "seconds": None,
        "first_seconds": None,
        "extrapolated_from": None,
        "skipped": None,
        "speedup_steady": None,
        "speedup_first": None,
        "fd_flops": None,
        "fd_gflops": None,
        "fd_fraction": None,
        "xla_flops": None,
        "xla_gflops": None,
        "ok": None,
        "verdict": "",
        "failing": [],
        "batch_sizes": {},
    }
    row.update(fields)
    return row


def _bug_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ("model", "params N", "method", "planted bug", "report.ok", "failing", "caught", "s")
    cells = [
        [
            r["model"],
            f"{r['params']:,}",
            r["method"],
            r["bug"],
            str(r["ok"]),
            ", ".join(r["failing"]) or "—",
            "yes" if r["caught"] else "NO",
            _seconds(r["seconds"]),
        ]
        for r in rows
    ]
    return _markdown(header, cells)


class _Run:
    """One run of the benchmark: its options, the results so far and what went wrong."""

    def __init__(self, args: argparse.Namespace, methods: list[str]) -> None:
        self.args = args
        self.methods = methods
        self.matmul_gflops: float | None = None
        self.full_max_seconds = 0.0
        self.repeats = 1
        self.started = time.perf_counter()
        self.out: dict[str, Any] = {
            "argv": list(args.argv),
            "complete": False,
            "lesson": None,
            "machine": None,
            "matmul": None,
            "rows": [],
            "bugs": [],
            "problems": [],
        }

    def say(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def problem(self, text: str) -> None:
        self.out["problems"].append(text)
        self.say(f"PROBLEM: {text}")

    def save(self) -> None:
        """Writes the JSON so far, so that a run cut short still leaves its finished rows."""
        self.out["seconds"] = time.perf_counter() - self.started
        if self.args.json is not None:
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            self.args.json.write_text(json.dumps(self.out, indent=2, default=str) + "\n")

    def guarded(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs ``fn(*args)``; a crash becomes a reported problem and ``None``; the run goes on."""
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - reported, and the run goes on
            traceback.print_exc()
            self.problem(f"{what}: {type(err).__name__}: {err}")
            return None

    def model(self, size: Size) -> None:
        """Benchmarks one model: the loop, jaxcheck's methods, then the planted bug."""
        args = self.args
        model = models.make("relu_mlp", layers=list(size.layers), m=size.m, seed=args.seed)
        full_flops = fd_equivalent_flops(size.layers, size.m, _full_probes(model.params))
        loop = None
        if "loop" in self.methods:
            loop = self.guarded(f"{size.name} loop", self._loop, size, model, full_flops)
            if loop is not None:
                self._add(loop, loop)
        plans: list[tuple[str, bool | None, dict[str, Any]]] = []
        if "full" in self.methods:
            plans += [(label, inc, {"method": "full"}) for label, inc in _incremental_modes()]
        if "sample" in self.methods:
            plans.append(
                (f"sample ({args.samples})", None, {"method": "sample", "samples": args.samples})
            )
        if "directional" in self.methods:
            options = {"method": "directional", "directions": args.directions}
            plans.append((f"directional ({args.directions})", None, options))
        for label, incremental, options in plans:
            row = self.guarded(
                f"{size.name} {label}",
                self._jaxcheck,
                size,
                model,
                label,
                incremental,
                options,
                full_flops,
            )
            if row is not None:
                self._add(row, loop)
                if row["ok"] is False:
                    self.problem(f"{size.name} {label}: the correct backprop judged wrong")
        if not args.no_bugs:
            for method in ("sample", "directional"):
                if method in self.methods:
                    what = f"{size.name} planted bug, {method}"
                    bug = self.guarded(what, self._bug, size, model, method)
                    if bug is not None:
                        self.out["bugs"].append(bug)
            self.save()

    def _add(self, row: dict[str, Any], loop: dict[str, Any] | None) -> None:
        """Adds a row with its rates and speed-ups, and saves the JSON so far."""
        seconds = row["seconds"]
        if seconds:
            row["fd_gflops"] = row["fd_flops"] / seconds / 1e9
            if self.matmul_gflops:
                row["fd_fraction"] = row["fd_gflops"] / self.matmul_gflops
            if row["xla_flops"] is not None:
                row["xla_gflops"] = row["xla_flops"] / seconds / 1e9
        if loop is not None and seconds:
            row["speedup_steady"] = loop["seconds"] / seconds
        if loop is not None and row["first_seconds"]:
            row["speedup_first"] = loop["seconds"] / row["first_seconds"]
        self.out["rows"].append(row)
        self.save()

    def _loop(self, size: Size, model: models.Model, full_flops: int) -> dict[str, Any]:
        n = size.params
        k = min(n, self.args.loop_coords)
        rng = np.random.default_rng(self.args.seed)
        coords = None if k >= n else np.sort(rng.choice(n, size=k, replace=False))
        self.say(f"{size.name}: classic loop over {k:,} of {n:,} coordinates")
        loop = classic_loop(model.cost, model.grad, model.params, coords)
        passed = loop.difference <= SEED_THRESHOLD
        row = _row(
            size,
            LOOP_METHOD,
            seconds=loop.extrapolated_seconds,
            measured_seconds=loop.seconds,
            chunk_seconds=loop.chunk_seconds,
            extrapolated_from=loop.checked if loop.checked < n else None,
            fd_flops=full_flops,
            ok=passed,
            difference=loop.difference,
            verdict=f"difference {loop.difference:.1e} {'≤' if passed else '>'} 1e-7",
        )
        self.say(f"{size.name}: classic loop {row['seconds']:.2f} s (all N)")
        return row

    def _jaxcheck(
        self,
        size: Size,
        model: models.Model,
        label: str,
        incremental: bool | None,
        options: dict[str, Any],
        full_flops: int,
    ) -> dict[str, Any]:
        # The estimate is the brute force's; an incremental engine does far less, so it runs.
        if options["method"] == "full" and not incremental and self.matmul_gflops:
            estimate = full_flops / (self.matmul_gflops * 1e9)
            if estimate > self.full_max_seconds:
                self.say(f"{size.name}: {label} skipped (brute force ≈ {estimate:,.0f} s)")
                return _row(
                    size,
                    label,
                    fd_flops=full_flops,
                    skipped=(
                        f"brute force ≈ {estimate:,.0f} s > --full-max-seconds "
                        f"{self.full_max_seconds:g}"
                    ),
                    estimated_seconds=estimate,
                    verdict="—",
                )
        self.say(f"{size.name}: jaxcheck {label}")
        with _incremental(incremental):
            timed = _time_check(
                model,
                model.grad,
                self.repeats,
                progress=False,
                seed=self.args.seed,
                **options,
            )
        report = timed.report
        probes = {path: leaf.checked for path, leaf in report.leaves.items()}
        self.say(
            f"{size.name}: jaxcheck {label}: first {timed.first:.2f} s, steady "
            f"{timed.steady:.2f} s, ok={report.ok}"
        )
        return _row(
            size,
            label,
            seconds=timed.steady,
            first_seconds=timed.first,
            fd_flops=fd_equivalent_flops(size.layers, size.m, probes),
            xla_flops=timed.xla_flops,
            ok=report.ok,
            failing=list(report.failing),
            verdict="ok" if report.ok else f"WRONG: failing {report.failing}",
            batch_sizes={path: leaf.batch_size for path, leaf in report.leaves.items()},
            report_seconds=report.seconds,
            difference_fd=report.difference_fd,
            difference_autodiff=report.difference_autodiff,
        )

    def _bug(self, size: Size, model: models.Model, method: str) -> dict[str, Any]:
        name = SANITY_BUG if SANITY_BUG in model.bugs else next(iter(model.bugs))
        bug = model.bugs[name]
        self.say(f"{size.name}: planted bug {name}, {method}")
        option = {"samples": self.args.samples} if method == "sample" else {}
        if method == "directional":
            option = {"directions": self.args.directions}
        start = time.perf_counter()
        report = check(
            model.cost,
            bug.grad,
            model.params,
            jax_cost=model.jax_cost,
            method=method,
            progress=False,
            seed=self.args.seed,
            **option,
        )
        seconds = time.perf_counter() - start
        caught = not report.ok and sorted(report.failing) == sorted(bug.leaves)
        self.say(f"{size.name}: planted bug, {method}: failing {report.failing}")
        if not caught:
            self.problem(
                f"{size.name} {method}: planted bug {name} not caught and localised "
                f"(failing {report.failing}, expected {sorted(bug.leaves)})"
            )
        return {
            "model": size.name,
            "params": size.params,
            "method": method,
            "bug": name,
            "expected": sorted(bug.leaves),
            "failing": list(report.failing),
            "ok": report.ok,
            "caught": caught,
            "seconds": seconds,
            "messages": [leaf.message for leaf in report.leaves.values() if not leaf.ok],
        }


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints its tables.

    Args:
        argv: Command-line arguments (without the program name); ``None``: ``sys.argv[1:]``.

    Returns:
        0 when every verdict is right (the correct backprop ok, the planted bugs caught and
        localised) and nothing crashed, else 1.
    """
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - {"loop", "full", "sample", "directional"})
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from loop,full,sample,directional")
    positive = ("samples", "directions", "loop_coords", "repeats", "matmul_n", "full_max_seconds")
    for name in positive:
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    sizes = None
    if args.quick:
        sizes = [SIZES["mlp-tiny"]]
        args.samples, args.directions = min(args.samples, 16), min(args.directions, 4)
    elif args.sizes is not None:
        try:
            sizes = _parse_sizes(args.sizes, args.large)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))

    run = _Run(args, methods)
    # The cold start first, before this process claims the accelerator.
    if not args.no_lesson:
        run.say("the lesson's network, cold, in a fresh subprocess")
        run.out["lesson"] = run.guarded("lesson", lesson_cold_start)
        lesson = run.out["lesson"]
        if lesson is not None and not lesson["ok"]:
            run.problem("lesson: the correct backprop judged wrong")
    run.out["machine"] = machine_info()
    accelerator = run.out["machine"]["platform"] != "cpu"
    if sizes is None:
        sizes = _parse_sizes("all" if accelerator else "small", args.large)
    matmul_n = args.matmul_n
    if matmul_n is None:
        matmul_n = 256 if args.quick else 8192 if accelerator else 1024
    run.repeats = args.repeats if args.repeats is not None else (1 if accelerator else 2)
    run.full_max_seconds = args.full_max_seconds
    if run.full_max_seconds is None:
        run.full_max_seconds = 120.0 if accelerator else 30.0
    run.say(f"float64 matmul rate, n={matmul_n}")
    run.out["matmul"] = run.guarded("matmul", matmul_rate, matmul_n, 3 if args.quick else 7)
    if run.out["matmul"] is not None:
        run.matmul_gflops = run.out["matmul"]["gflops_median"]
    run.save()
    for size in sizes:
        run.guarded(size.name, run.model, size)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    run.out["machine"]["load_average_end"] = None if load is None else list(load)
    run.out["sanity_ok"] = not run.out["problems"]
    run.out["complete"] = True
    run.save()
    print(_report_text(run.out))
    return 0 if run.out["sanity_ok"] else 1


def _report_text(out: dict[str, Any]) -> str:
    machine, matmul = out["machine"], out["matmul"]
    load = machine.get("load_average") or [float("nan")]
    load_end = machine.get("load_average_end") or [float("nan")]
    lines = [
        "### Machine",
        "",
        f"- device: {machine['device_kind']} ({machine['platform']}) × {machine['device_count']}",
        f"- CPU: {machine['cpu_model']}, {machine['cpu_count']} cores "
        f"({machine['cpus_usable']} usable); load average {load[0]:.2f} at start, "
        f"{load_end[0]:.2f} at end",
        f"- jax {machine['jax']}, jaxlib {machine['jaxlib']}, NumPy {machine['numpy']}, "
        f"Python {machine['python']}",
        (
            f"- float64 matmul ({matmul['n']}×{matmul['n']}, jit, median of {matmul['reps']}): "
            f"{matmul['gflops_median']:,.1f} GFLOP/s (best {matmul['gflops_best']:,.1f})"
            if matmul
            else "- float64 matmul: not measured (see PROBLEMS)"
        ),
        "",
        "### Gradient checks of the correct backprop",
        "",
        _main_table(out["rows"]) if out["rows"] else "(no rows)",
        "",
        "FD-equiv. FLOPs: the matmuls brute-force central differences execute — per probe of "
        "layer l, 2 forwards through layers l..L. FD-equiv. rate / matmul rate can exceed 1 "
        "when the engine skips work. XLA-counted: XLA's cost analysis of the programs run "
        "(batches merged; includes the cost and jax.grad at θ). Speed-ups use the loop's "
        "seconds over all N.",
    ]
    for r in out["rows"]:
        if r["method"].startswith("full") and r["batch_sizes"]:
            sizes = ", ".join(f"{p} {b}" for p, b in r["batch_sizes"].items())
            lines.append(f"- batch sizes, {r['model']} {r['method']}: {sizes}")
    if out["bugs"]:
        lines += ["", "### Planted 1% bugs: caught and localised?", "", _bug_table(out["bugs"])]
    lesson = out.get("lesson")
    if lesson:
        lines += [
            "",
            "### The lesson's network, cold start in a fresh process",
            "",
            f"- {lesson['params']} parameters; import jaxcheck (and jax): "
            f"{lesson['import_seconds']:.2f} s",
            f"- first jc.check (tracing and compilation included): "
            f"{lesson['check_seconds']:.2f} s, ok={lesson['ok']}",
            f"- second jc.check (buggy backprop, warm): {lesson['second_check_seconds']:.3f} s, "
            f"failing {lesson['buggy_failing']}",
            f"- the seed's gradient_check_n loop: {lesson['seed_loop_seconds'] * 1e3:.1f} ms, "
            f"difference {lesson['seed_loop_difference']:.3g}",
            f"- whole subprocess: {lesson['wall_seconds']:.2f} s",
        ]
    lines += ["", f"Benchmark wall time: {out['seconds']:.1f} s."]
    if out["problems"]:
        lines += ["", "### PROBLEMS", ""] + [f"- {p}" for p in out["problems"]]
    else:
        lines += ["", "Sanity: ok (every verdict as expected)."]
    return "\n".join(lines)
