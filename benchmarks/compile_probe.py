"""Where the first call of a full check goes: each program JAX traces, lowers and compiles.

Usage: ``python benchmarks/compile_probe.py [WIDTHS@M] [--batch N ...] [--brute-force]``, e.g.
``python benchmarks/compile_probe.py 784,1024,1024,1@32 --batch 0 16384 2048`` (0: the
memory-budget default). For each batch size, a new model (new closures) is checked twice; every
compilation of the first call is listed in order, with its lowering and XLA compile seconds, as
JAX's own ``jax.monitoring`` events report them: nothing of jaxcheck is patched or called but
``jaxcheck.check``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [
    path
    for path in (str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1]))
    if path not in sys.path
]

import jax  # noqa: E402

import jaxcheck as jc  # noqa: E402
from jaxcheck import models  # noqa: E402

from measure import (  # noqa: E402
    BACKEND_COMPILE_EVENT,
    CACHE_RETRIEVAL_EVENT,
    LOWER_EVENT,
    TRACE_EVENT,
    check_accepts,
)


class _Spans:
    """Collects JAX's compile-time event spans, in order, while active."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float, str]] = []
        self.hits = 0

    def __call__(self, event: str, start: float, end: float, **kwargs: Any) -> None:
        if event in (TRACE_EVENT, LOWER_EVENT, BACKEND_COMPILE_EVENT):
            self.spans.append((event, start, end, str(kwargs.get("fun_name", "?"))))

    def hit(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == CACHE_RETRIEVAL_EVENT:
            self.hits += 1

    def __enter__(self) -> _Spans:
        jax.monitoring.register_event_time_span_listener(self)
        jax.monitoring.register_event_duration_secs_listener(self.hit)
        return self

    def __exit__(self, *exc: object) -> None:
        jax.monitoring.unregister_event_time_span_listener(self)
        jax.monitoring.unregister_event_duration_listener(self.hit)

    def compiles(self) -> list[tuple[str, float, float]]:
        """``(name, lower s, compile s)`` per backend compile; lowering paired by order."""
        lowers = [(s, e) for ev, s, e, _ in self.spans if ev == LOWER_EVENT]
        out = []
        for event, start, end, name in self.spans:
            if event != BACKEND_COMPILE_EVENT:
                continue
            before = [e - s for s, e in lowers if e <= start]
            out.append((name, before[-1] if before else float("nan"), end - start))
            lowers = [(s, e) for s, e in lowers if e > start]
        return out

    def trace_seconds(self) -> float:
        """Seconds tracing, outermost spans only (traces nest)."""
        total, reach = 0.0, float("-inf")
        for event, start, end, _ in sorted(self.spans, key=lambda span: span[1]):
            if event == TRACE_EVENT and start >= reach:
                total += end - start
                reach = end
        return total


def main(argv: list[str] | None = None) -> int:
    """Prints, per batch size, each compilation of a full check's first call.

    Args:
        argv: Command-line arguments; ``None``: ``sys.argv[1:]``.

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="100,200,100,1@128")
    parser.add_argument("--batch", type=int, nargs="*", default=[0])
    parser.add_argument(
        "--brute-force",
        action="store_true",
        help="check with incremental=False (every perturbed point from scratch)",
    )
    args = parser.parse_args(argv)
    widths, m = args.model.split("@")
    layers = [int(w) for w in widths.split(",")]
    options: dict[str, Any] = {"method": "full", "progress": False}
    if args.brute_force:
        if not check_accepts("incremental"):
            print("--brute-force: this jaxcheck's check() has no incremental= keyword")
            return 2
        options["incremental"] = False
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, layers {layers}, m={m}")
    print(
        "| batch | call | seconds | compiles | cache hits | trace s | compiled program | "
        "lower s | compile s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for seed, cap in enumerate(args.batch):
        model = models.make("relu_mlp", layers=layers, m=int(m), seed=seed)
        batch = {"batch_size": cap} if cap else {}
        for call in ("first", "second"):
            with _Spans() as spans:
                start = time.perf_counter()
                jc.check(
                    model.cost,
                    model.grad,
                    model.params,
                    jax_cost=model.jax_cost,
                    **batch,
                    **options,
                )
                seconds = time.perf_counter() - start
            compiles = spans.compiles()
            head = (
                f"| {cap or 'default'} | {call} | {seconds:.2f} | {len(compiles) - spans.hits} | "
                f"{spans.hits} | {spans.trace_seconds():.2f} |"
            )
            if not compiles:
                print(f"{head} — | — | — |")
            for i, (name, lower, compile_s) in enumerate(compiles):
                prefix = head if i == 0 else "| | | | | | |"
                print(f"{prefix} {name} | {lower:.2f} | {compile_s:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
