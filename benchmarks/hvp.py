"""Benchmarks jc.check_hvp against the classic loop of finite differences of the gradient.

``python benchmarks/hvp.py`` prints one Markdown table: on a ReLU MLP of the zoo with a
hand-written NumPy Hessian-vector product, the seconds of ``jc.check_hvp`` along random
directions and along every basis vector (the full Hessian), and of the classic loop that takes
``(∇J(θ + hv) − ∇J(θ − hv)) / 2h`` one direction at a time with the NumPy gradient — the ratio
is loop / check_hvp (above 1: check_hvp is faster). check_hvp forms three opinions with error
estimates per entry; the loop forms one and judges nothing. "hvp calls alone" is the time of the
user's own product for as many calls as check_hvp makes: no check of it can be faster.

``python benchmarks/hvp.py --quick`` is a smoke run on small models.
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable, Iterator

import numpy as np

import jaxcheck as jc
from jaxcheck import models


def relu_mlp_with_hvp(layers: tuple[int, ...], m: int) -> tuple:
    """The zoo's ReLU MLP (sigmoid cross-entropy output) and its hand-written R-operator hvp."""
    model = models.make("relu_mlp", layers=list(layers), m=m, seed=0)
    data = inspect.getclosurevars(model.cost).nonlocals
    x, y = data["x"], data["y"]

    def hvp(p, v):
        ws, vs = p["layers"], v["layers"]
        zs, rzs, acts, racts = [], [], [x], [np.zeros_like(x)]
        for i, (layer, dv) in enumerate(zip(ws, vs)):
            z = layer["W"] @ acts[-1] + layer["b"]
            rz = dv["W"] @ acts[-1] + layer["W"] @ racts[-1] + dv["b"]
            zs.append(z)
            rzs.append(rz)
            if i < len(ws) - 1:
                on = z > 0
                acts.append(np.where(on, z, 0.0))
                racts.append(np.where(on, rz, 0.0))
        s = 1 / (1 + np.exp(-zs[-1]))
        dz, rdz = (s - y) / x.shape[1], s * (1 - s) * rzs[-1] / x.shape[1]
        out = [None] * len(ws)
        for i in range(len(ws) - 1, -1, -1):
            out[i] = {"W": rdz @ acts[i].T + dz @ racts[i].T, "b": rdz.sum(axis=1, keepdims=True)}
            if i:
                on = zs[i - 1] > 0
                da = ws[i]["W"].T @ dz
                rda = vs[i]["W"].T @ dz + ws[i]["W"].T @ rdz
                dz, rdz = np.where(on, da, 0.0), np.where(on, rda, 0.0)
        return {"layers": out}

    return model, hvp


def _flat(tree) -> np.ndarray:
    import jax

    return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def classic_loop(model, directions: Iterator[np.ndarray]) -> float:
    """Seconds of the loop of central differences of the NumPy gradient, one direction at a time."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(model.params)
    sizes = np.cumsum([0] + [a.size for a in leaves])

    def grad_at(theta: np.ndarray) -> np.ndarray:
        parts = [theta[a:b].reshape(leaf.shape) for a, b, leaf in zip(sizes, sizes[1:], leaves)]
        return _flat(model.grad(jax.tree_util.tree_unflatten(treedef, parts)))

    theta = _flat(model.params)
    start = time.perf_counter()
    for v in directions:
        h = np.cbrt(np.finfo(float).eps) * max(1.0, float(np.linalg.norm(theta * v)))
        (grad_at(theta + h * v) - grad_at(theta - h * v)) / (2 * h)
    return time.perf_counter() - start


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def user_calls(model, hvp: Callable, count: int) -> float:
    """Seconds of the user's product alone along ``count + 2`` directions: what check_hvp calls
    it for (the directions, the purity re-call, the probe w), the floor of any check of it."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(model.params)
    rng = np.random.default_rng(1)
    vs = [
        jax.tree_util.tree_unflatten(treedef, [rng.standard_normal(a.shape) for a in leaves])
        for _ in range(min(count + 2, 64))
    ]
    start = time.perf_counter()
    for v in vs:
        hvp(model.params, v)
    return (time.perf_counter() - start) * (count + 2) / len(vs)


def measure(label: str, layers: str, directions: int | str, m: int) -> tuple:
    """One row: check_hvp (steady, first call), the user's product calls and the classic loop."""
    model, hvp = relu_mlp_with_hvp(tuple(int(w) for w in layers.split(",")), m)
    n = _flat(model.params).size

    def run(product: Callable) -> jc.HvpReport:
        return jc.check_hvp(
            model.cost, product, model.params, jax_cost=model.jax_cost, directions=directions
        )

    def doubled_bias(p, v):
        return {"layers": [dict(d, b=2 * d["b"]) for d in hvp(p, v)["layers"]]}

    first, report = _timed(lambda: run(hvp))
    steady = min(_timed(lambda: run(hvp))[0] for _ in range(3))
    caught = run(doubled_bias).failing
    count = n if directions == "all" else int(directions)
    if directions == "all":
        vectors = (np.eye(1, n, k)[0] for k in range(n))
    else:
        rng = np.random.default_rng(0)
        vectors = (v / np.linalg.norm(v) for v in rng.standard_normal((count, n)))
    loop = classic_loop(model, vectors)
    floor = user_calls(model, hvp, count)
    return label, n, count, steady, first, floor, loop, report.ok, caught


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table; returns 0 when every verdict was right."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="100,200,100,1", help="widths (default: 40,401)")
    parser.add_argument("--m", type=int, default=128, help="examples (default 128)")
    parser.add_argument("--directions", type=int, default=16, help="random directions")
    parser.add_argument("--full-layers", default="10,20,10,1", help="widths for the full Hessian")
    parser.add_argument(
        "--quick", action="store_true", help="small models (a smoke run: 2,611 and 63 params)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.full_layers, args.m = "20,50,30,1", "4,6,4,1", 32
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # the backend starts here, not in the first check
    rows = [
        measure("random directions", args.layers, args.directions, args.m),
        measure("full Hessian", args.full_layers, "all", args.m),
    ]
    print(
        "| product | params N | directions | check_hvp s (steady) | check_hvp s (first call) "
        "| hvp calls alone s | classic loop s | loop / check_hvp (steady, goal ≥ 1) "
        "| first call / loop (goal ≤ 3) | correct hvp passes | 2× bias bug in |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, n, count, steady, first, floor, loop, passed, caught in rows:
        print(
            f"| {label} | {n:,} | {count:,} | {steady:.3g} | {first:.3g} | {floor:.3g} | "
            f"{loop:.3g} | {loop / steady:.2g}× | {first / loop:.2g}× | {passed} | "
            f"{', '.join(caught) or '—'} |"
        )
    return 0 if all(r[7] and r[8] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
