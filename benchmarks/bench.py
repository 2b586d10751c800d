"""Benchmarks jaxcheck against the classic one-coordinate-at-a-time loop and other checkers.

Run from anywhere: ``python benchmarks/bench.py [--quick | --small | ...]``. It measures the float64
matmul rate, times the loop and jaxcheck's three methods on ReLU MLPs of growing size, checks every
verdict, times small models against ``torch.autograd.gradcheck`` and
``jax.test_util.check_grads`` (see ``small.py``), and prints Markdown tables; ``--json PATH``
also writes every row. See ``README.md`` beside this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# This directory holds the harness's modules; the checkout above it holds the package, which goes
# before an installed jaxcheck so that the benchmark measures the code beside it.
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [path for path in (str(_HERE), str(_HERE.parent)) if path not in sys.path]

import numpy as np  # noqa: E402

from jaxcheck import check, models  # noqa: E402

import small  # noqa: E402
from measure import (  # noqa: E402
    SEED_THRESHOLD,
    cache_directory,
    classic_loop,
    fd_equivalent_flops,
    full_probes,
    full_variants,
    lesson_cold_start,
    machine_info,
    matmul_rate,
    time_check,
)
from tables import markdown, number, seconds, times  # noqa: E402

__all__ = ["COLUMNS", "LOOP_METHOD", "SIZES", "Size", "main"]

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
    "XLA compiles (first / steady)",
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
_CPU = ("mlp-40k", "mlp-234k")
_LARGE = ("mlp-1.85M",)


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def _parse_sizes(text: str, large: bool) -> list[Size]:
    if text == "cpu":
        names: list[str] = list(_CPU)
    elif text == "all":
        names = list(_CPU + _LARGE)
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
                f"unknown size {name!r}: expected cpu, all, or a comma-separated list of "
                f"{', '.join(SIZES)} or WIDTHS@M such as 100-200-100-1@128"
            ) from None
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description=(
            "Times the classic one-coordinate-at-a-time gradient-check loop and jaxcheck's full, "
            "sample and directional modes on ReLU MLPs of growing size, against this machine's "
            "float64 matmul rate, and checks every verdict; then times small models with "
            "jaxcheck, torch.autograd.gradcheck, jax.test_util.check_grads and the classic loop. "
            "Prints Markdown tables."
        ),
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help=(
            "cpu (mlp-40k, mlp-234k), all (adds mlp-1.85M), or a comma-separated list of "
            f"{', '.join(SIZES)} or WIDTHS@M (default: cpu on a CPU, all on an accelerator)"
        ),
    )
    parser.add_argument("--large", action="store_true", help="add mlp-1.85M to the sizes")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="mlp-tiny and one small model with tiny settings (for tests)",
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
            "accelerator); the default full mode always runs"
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
    small_models = parser.add_mutually_exclusive_group()
    small_models.add_argument("--small", action="store_true", help="run only the small-model table")
    small_models.add_argument("--no-small", action="store_true", help="skip the small-model table")
    parser.add_argument(
        "--small-models",
        default=None,
        help=(
            f"comma-separated subset of {', '.join(small.SMALL_MODELS)}; the first is the goals' "
            "model (default: all; tanh-49 with --quick)"
        ),
    )
    parser.add_argument(
        "--small-repeats",
        type=int,
        default=None,
        help="new closures per small model and round (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--small-rounds",
        type=int,
        default=None,
        help=(
            "rounds of the small-model table's child processes, tools interleaved; each cell is "
            "the median over them (default 3; 1 with --quick)"
        ),
    )
    parser.add_argument(
        "--pytest-checks",
        type=int,
        default=None,
        help="tests in each generated pytest file; 0 skips those rows (default 30; 3 with --quick)",
    )
    parser.add_argument(
        "--twin",
        choices=("port", "given"),
        default="port",
        help=(
            "jaxcheck's JAX twin in the small-model table: port (jc.check ports the NumPy cost, "
            "as users call it; default) or given (the zoo's hand-written twin)"
        ),
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=(
            "jaxcheck's persistent cache directory for this process's checks (default: a new "
            "empty one, so that first calls compile; child processes always get new ones)"
        ),
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of models and coordinates")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    return parser


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _compiles(r: dict[str, Any]) -> str:
    if r["compiles_first"] is None:
        return "—"
    text = f"{r['compiles_first']} / {r['compiles_steady']}"
    loads = (r.get("compilations_first") or {}).get("disk_loads")
    return f"{text} ({loads} loaded)" if loads else text


def _main_table(rows: Sequence[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        steady = seconds(r["seconds"])
        if r.get("extrapolated_from"):
            steady += f" (extrapolated from {r['extrapolated_from']:,})"
        if r.get("skipped"):
            steady = f"skipped: {r['skipped']}"
        compile_s = None
        if r["first_seconds"] is not None and r["seconds"] is not None:
            compile_s = r["first_seconds"] - r["seconds"]
        cells.append(
            [
                r["model"],
                f"{r['params']:,}",
                r["method"],
                steady,
                seconds(r["first_seconds"]),
                seconds(compile_s) if compile_s is None or compile_s >= 0 else "< 0 (noise)",
                times(r["speedup_steady"]),
                times(r["speedup_first"]),
                number(r["fd_gflops"]),
                number(r["fd_fraction"], 2),
                _compiles(r),
                r["verdict"],
            ]
        )
    return markdown(COLUMNS, cells)


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
        "compiles_first": None,
        "compiles_steady": None,
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
            seconds(r["seconds"]),
        ]
        for r in rows
    ]
    return markdown(header, cells)


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


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
            "brute_force_skipped": None,
            "small": None,
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

    def small_table(self, names: list[str], counts: tuple[int, int], pytest_checks: int) -> None:
        """Measures the small-model table in child processes; ``counts``: repeats, rounds."""
        repeats, rounds = counts
        self.out["small"] = small.run_table(
            names,
            twin=self.args.twin,
            repeats=repeats,
            rounds=rounds,
            pytest_checks=pytest_checks,
            seed=self.args.seed,
            say=self.say,
            problem=self.problem,
        )
        self.out["small"]["goals"] = small.goals(self.out["small"])
        self.save()

    def model(self, size: Size) -> None:
        """Benchmarks one model: the loop, jaxcheck's methods, then the planted bug."""
        args = self.args
        model = models.make("relu_mlp", layers=list(size.layers), m=size.m, seed=args.seed)
        full_flops = fd_equivalent_flops(size.layers, size.m, full_probes(model.params))
        loop = None
        if "loop" in self.methods:
            loop = self.guarded(f"{size.name} loop", self._loop, size, model, full_flops)
            if loop is not None:
                self._add(loop, loop)
        plans: list[tuple[str, dict[str, Any]]] = []
        why_not = None
        if "full" in self.methods:
            variants, why_not = full_variants()
            plans += variants
        if "sample" in self.methods:
            options = {"method": "sample", "samples": args.samples}
            plans.append((f"sample ({args.samples})", options))
        if "directional" in self.methods:
            options = {"method": "directional", "directions": args.directions}
            plans.append((f"directional ({args.directions})", options))
        for label, options in plans:
            row = self.guarded(
                f"{size.name} {label}", self._jaxcheck, size, model, label, options, full_flops
            )
            if row is not None:
                self._add(row, loop)
                if row["ok"] is False:
                    self.problem(f"{size.name} {label}: the correct backprop judged wrong")
            if label == "full" and why_not is not None:
                self.out["brute_force_skipped"] = why_not
                self.say(f"{size.name}: full (brute force) skipped: {why_not}")
                self._add(_row(size, "full (brute force)", skipped=why_not, verdict="—"), None)
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
        steady = row["seconds"]
        if steady:
            row["fd_gflops"] = row["fd_flops"] / steady / 1e9
            if self.matmul_gflops:
                row["fd_fraction"] = row["fd_gflops"] / self.matmul_gflops
        if loop is not None and steady:
            row["speedup_steady"] = loop["seconds"] / steady
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
        options: dict[str, Any],
        full_flops: int,
    ) -> dict[str, Any]:
        # The estimate is the brute force's; the default full mode does far less, so it runs.
        brute_force = options["method"] == "full" and options.get("incremental") is False
        if brute_force and self.matmul_gflops:
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
        timed = time_check(
            model, model.grad, self.repeats, progress=False, seed=self.args.seed, **options
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
            compiles_first=timed.first_compilations.compiles,
            compiles_steady=timed.steady_compilations.compiles,
            compilations_first=timed.first_compilations.to_dict(),
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
        elapsed = time.perf_counter() - start
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
            "seconds": elapsed,
            "messages": [leaf.message for leaf in report.leaves.values() if not leaf.ok],
        }


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints its tables.

    Args:
        argv: Command-line arguments (without the program name); ``None``: ``sys.argv[1:]``.

    Returns:
        0 when every verdict is right (the correct backprop ok, the planted bugs caught and
        localised) and nothing crashed, else 1. The small-model goals are reported, not
        enforced.
    """
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - {"loop", "full", "sample", "directional"})
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from loop,full,sample,directional")
    positive = (
        "samples",
        "directions",
        "loop_coords",
        "repeats",
        "matmul_n",
        "full_max_seconds",
        "small_repeats",
        "small_rounds",
    )
    for name in positive:
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.pytest_checks is not None and args.pytest_checks < 0:
        parser.error(f"--pytest-checks must be 0 or more, got {args.pytest_checks}")
    small_names = list(small.SMALL_MODELS)[:1] if args.quick else list(small.SMALL_MODELS)
    if args.small_models is not None:
        small_names = [n.strip() for n in args.small_models.split(",") if n.strip()]
        unknown = sorted(set(small_names) - set(small.SMALL_MODELS))
        if unknown or not small_names:
            parser.error(
                f"--small-models: unknown {unknown}; choose from {', '.join(small.SMALL_MODELS)}"
            )
    small_repeats = args.small_repeats or (1 if args.quick else 3)
    small_rounds = args.small_rounds or (1 if args.quick else 3)
    pytest_checks = args.pytest_checks
    if pytest_checks is None:
        pytest_checks = 3 if args.quick else 30
    sizes = None
    if args.quick:
        sizes = [SIZES["mlp-tiny"]]
        args.samples, args.directions = min(args.samples, 16), min(args.directions, 4)
    elif args.sizes is not None:
        try:
            sizes = _parse_sizes(args.sizes, args.large)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))

    with cache_directory(args.cache_dir) as cache:
        run = _Run(args, methods)
        run.out["cache_dir"] = str(args.cache_dir) if args.cache_dir else "new, empty"
        run.say(f"jaxcheck's cache directory: {cache}")
        _run_all(run, sizes, small_names, (small_repeats, small_rounds), pytest_checks)
    print(_report_text(run.out))
    return 0 if run.out["sanity_ok"] else 1


def _run_all(
    run: _Run,
    sizes: list[Size] | None,
    small_names: list[str],
    small_counts: tuple[int, int],
    pytest_checks: int,
) -> None:
    """The child processes, then this process's tables; the results go into ``run.out``."""
    args = run.args
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    # The child processes first, before this process claims the accelerator.
    if not args.small and not args.no_lesson:
        run.say("the lesson's network, cold, in a fresh subprocess")
        run.out["lesson"] = run.guarded("lesson", lesson_cold_start)
        lesson = run.out["lesson"]
        if lesson is not None and not lesson["ok"]:
            run.problem("lesson: the correct backprop judged wrong")
    if not args.no_small:
        run.guarded("small-model table", run.small_table, small_names, small_counts, pytest_checks)
    run.out["machine"] = machine_info()
    run.out["machine"]["load_average"] = None if load is None else list(load)
    if not args.small:
        _large_tables(run, sizes)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    run.out["machine"]["load_average_end"] = None if load is None else list(load)
    run.out["sanity_ok"] = not run.out["problems"]
    run.out["complete"] = True
    run.save()


def _large_tables(run: _Run, sizes: list[Size] | None) -> None:
    """The matmul rate, then the loop and jaxcheck's methods on each size."""
    args = run.args
    accelerator = run.out["machine"]["platform"] != "cpu"
    if sizes is None:
        sizes = _parse_sizes("all" if accelerator else "cpu", args.large)
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
        f"- jaxcheck's persistent cache directory: {out.get('cache_dir', '—')} (child "
        "processes: a new one each)",
    ]
    if matmul:
        lines.append(
            f"- float64 matmul ({matmul['n']}×{matmul['n']}, jit, median of {matmul['reps']}): "
            f"{matmul['gflops_median']:,.1f} GFLOP/s (best {matmul['gflops_best']:,.1f})"
        )
    if out["rows"]:
        lines += [
            "",
            "### Gradient checks of the correct backprop",
            "",
            _main_table(out["rows"]),
            "",
            "FD-equiv. FLOPs: the matmuls brute-force central differences execute — per probe of "
            "layer l, 2 forwards through layers l..L. FD-equiv. rate / matmul rate can exceed 1 "
            "when the engine skips work. XLA compiles: programs XLA compiled during the first "
            "call and during the steady calls (counted through jax.monitoring). Speed-ups use "
            "the loop's seconds over all N.",
        ]
        if out.get("brute_force_skipped"):
            lines.append(f"- full (brute force) not timed: {out['brute_force_skipped']}")
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
    if out.get("small"):
        lines += [
            "",
            "### Small models: jaxcheck, torch.autograd.gradcheck, jax.test_util.check_grads "
            "and the classic loop",
            "",
            small.table_text(out["small"]),
        ]
    lines += ["", f"Benchmark wall time: {out['seconds']:.1f} s."]
    if out["problems"]:
        lines += ["", "### PROBLEMS", ""] + [f"- {p}" for p in out["problems"]]
    else:
        lines += ["", "Sanity: ok (every verdict as expected)."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
