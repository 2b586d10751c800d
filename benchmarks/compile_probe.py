"""Where the first call of a full check goes: tracing, compiling and running, per leaf.

Usage: ``python benchmarks/compile_probe.py [WIDTHS@M] [--batch N ...]``, e.g.
``python benchmarks/compile_probe.py 784,1024,1024,1@32 --batch 0 16384 2048`` (0: the
memory-budget default). Prints one row per leaf and batch size.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax
import numpy as np

import jaxcheck  # noqa: F401 - registers the modules below
from jaxcheck import finite_differences as fd
from jaxcheck import models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="100,200,100,1@128")
    parser.add_argument("--batch", type=int, nargs="*", default=[0])
    args = parser.parse_args(argv)
    widths, m = args.model.split("@")
    model = models.make("relu_mlp", layers=[int(w) for w in widths.split(",")], m=int(m))
    check = sys.modules["jaxcheck.check"]
    prep = check.prepare(model.cost, model.grad, model.params, jax_cost=model.jax_cost)
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, N={prep.leaves.size}")
    print("| leaf | batch | batches | trace+lower s | compile s | run 1 s | run 2 s |")
    print("|---|---|---|---|---|---|---|")
    budget = fd.default_memory_budget()
    with jax.enable_x64(True):
        works = check._probes(prep, "full", None, None, None, 0)
        for cap in args.batch:
            for work in works:
                p = work.probe
                if cap:
                    size = min(cap, p.count)
                else:
                    per = fd.evaluation_bytes(prep.twin, prep.leaves.treedef, prep.leaves64, p.leaf)
                    size = fd._batch_size(p.count, per, budget, 1)
                batches = math.ceil(p.count / size)
                arrays = tuple(
                    fd._pad_rows(a, batches, size)
                    for a in (p.coords.astype(np.int32), p.step_up, p.step_down)
                )
                layout = ((p.leaf, "coordinate", batches, size),)
                program = fd._program(
                    prep.twin, prep.leaves.treedef, layout, False, False, (0,), fd.INCREMENTAL
                )
                inputs = (prep.leaves64, prep.leaves64, [arrays])
                t0 = time.perf_counter()
                lowered = program.lower(*inputs)
                t1 = time.perf_counter()
                compiled = lowered.compile()
                t2 = time.perf_counter()
                jax.block_until_ready(compiled(*inputs))
                t3 = time.perf_counter()
                jax.block_until_ready(compiled(*inputs))
                t4 = time.perf_counter()
                print(
                    f"| {prep.leaves.paths[p.leaf]} | {size} | {batches} | {t1 - t0:.2f} | "
                    f"{t2 - t1:.2f} | {t3 - t2:.2f} | {t4 - t3:.3f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
