"""The small-model table: jaxcheck beside torch's and JAX's gradient checkers and the classic loop.

The same NumPy system under test (small models of ``jaxcheck.models``) is checked by each tool as
its users would wrap it, and every measurement runs in a child process of this script, so that
each tool starts from a clean interpreter and jaxcheck from a persistent cache directory of its
own. ``run_table`` drives the children; ``python small.py child ...`` is a child.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tables import markdown, short_seconds, times

__all__ = [
    "GOALS",
    "SCENARIOS",
    "SMALL_MODELS",
    "TOOLS",
    "Flat",
    "SmallModel",
    "check_classic",
    "check_grads_jax",
    "check_jaxcheck",
    "check_torch",
    "goals",
    "run_table",
    "table_text",
    "tool_missing",
]

_HERE = Path(__file__).resolve().parent

#: The tools compared, in the table's column order.
TOOLS = ("jaxcheck", "torch", "check_grads", "classic")
#: Column headers of the tools.
_TOOL_HEADERS = {
    "jaxcheck": "jaxcheck s",
    "torch": "torch gradcheck s",
    "check_grads": "jax check_grads s",
    "classic": "classic loop s",
}
#: What each tool imports before its first check (timed as its import).
_TOOL_MODULES = {
    "jaxcheck": "jaxcheck",
    "torch": "torch",
    "check_grads": "jax.test_util",
    "classic": None,
}

#: The table's rows, in order: key and what it measures.
SCENARIOS = {
    "first": "first check of a new model (in-process)",
    "closure": "new closure: same code and shapes, new data",
    "again": "same closure again",
    "fresh_cold": "fresh process, cache cold: first check",
    "fresh_warm": "fresh process, cache warm: first check",
    "fresh_warm_import": "fresh process, cache warm: import + first check",
    "suite": "{suite} different small checks in one process (total)",
    "pytest_cold": "pytest file of {n}, cache cold (wall)",
    "pytest_warm": "pytest file of {n}, cache warm (wall)",
}

#: Targets for jaxcheck against torch (issue 21): scenario, the most jaxcheck / torch may be.
GOALS = (
    ("closure", 2.0, "new closure ≤ 2× torch"),
    ("first", 10.0, "first check of a new small model ≤ 10× torch"),
    ("fresh_cold", 10.0, "fresh process, cache cold ≤ 10× torch"),
    ("fresh_warm", 5.0, "fresh process with cache warm ≤ 5× torch"),
    ("suite", 2.0, "many different small checks in one process ≤ 2× torch"),
)


# --------------------------------------------------------------------------------------------
# The systems under test
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SmallModel:
    """A small model of the zoo, built fresh (new closures, new data) for every seed.

    Attributes:
        name: Row label, e.g. ``"tanh-49"`` (family and parameter count).
        family: ``jaxcheck.models`` name.
        options: Sizes passed to ``models.make``.
        bug: A bug of the model, checked once by every tool as a sanity check.
    """

    name: str
    family: str
    options: tuple[tuple[str, int], ...]
    bug: str

    def make(self, seed: int) -> Any:
        """Builds the model with data and parameters drawn from ``seed``."""
        from jaxcheck import models

        return models.make(self.family, seed=seed, **dict(self.options))


SMALL_MODELS = {
    model.name: model
    for model in (
        # Two tanh layers of 4 on 5 inputs, one output: 20+4+16+4+4+1 = 49 parameters.
        SmallModel("tanh-49", "tanh_mlp", (("n_x", 5), ("n_h", 4), ("n_y", 1)), "sign_flip"),
        SmallModel("relu-47", "relu_mlp", (), "missing_relu_mask"),
        SmallModel("softmax-15", "softmax_regression", (), "missing_1_over_m"),
        SmallModel("conv1d-59", "conv1d", (), "flipped_kernel_grad"),
    )
}
#: Checked first by every child, so that the rows measure a new model, not a new process.
_WARM_UP = SmallModel("logistic-5", "logistic_regression", (), "sign_flip")

#: A course's test suite: small models of every family at several sizes (so that no two checks
#: share code and shapes), each checked with its correct backprop and with every planted bug.
SUITE = tuple(
    (family, dict(sizes))
    for family, sizes in (
        ("tanh_mlp", (("n_x", 3), ("n_h", 4), ("n_y", 2))),
        ("tanh_mlp", (("n_x", 5), ("n_h", 3), ("n_y", 1))),
        ("tanh_mlp", (("n_x", 2), ("n_h", 6), ("n_y", 3))),
        ("relu_mlp", ()),
        ("l2_mlp", (("n_x", 3), ("n_h1", 4), ("n_h2", 3))),
        ("l2_mlp", (("n_x", 4), ("n_h1", 3), ("n_h2", 2))),
        ("logistic_regression", (("n_x", 4),)),
        ("logistic_regression", (("n_x", 7),)),
        ("softmax_regression", (("n_x", 4), ("n_classes", 3))),
        ("softmax_regression", (("n_x", 3), ("n_classes", 5))),
        ("batchnorm", ()),
        ("dropout_lesson", ()),
        ("conv1d", ()),
    )
)


def suite_checks(seed: int) -> list[tuple[str, Any, Callable]]:
    """Every check of :data:`SUITE`: (label, model, gradient), correct and buggy ones."""
    from jaxcheck import models

    checks = []
    for k, (family, sizes) in enumerate(SUITE):
        model = models.make(family, seed=seed + k, **sizes)
        checks.append((f"{family}{sizes} correct", model, model.grad))
        checks += [(f"{family}{sizes} {b}", model, bug.grad) for b, bug in model.bugs.items()]
    return checks


def _scalar(out: Any) -> float:
    return float(out[0] if isinstance(out, tuple) else out)


def _leaves(tree: Any) -> Iterator[np.ndarray]:
    if isinstance(tree, dict):
        for key in sorted(tree):
            yield from _leaves(tree[key])
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _leaves(item)
    else:
        yield np.asarray(tree)


def _rebuild(template: Any, parts: Iterator[np.ndarray]) -> Any:
    if isinstance(template, dict):
        return {key: _rebuild(template[key], parts) for key in sorted(template)}
    if isinstance(template, (list, tuple)):
        return type(template)(_rebuild(item, parts) for item in template)
    return next(parts)


def _like(template: Any, tree: Any) -> Any:
    """``tree`` cut to the structure of ``template`` (dict keys ``k`` or ``"d" + k``)."""
    if isinstance(template, dict) and isinstance(tree, dict):
        return {k: _like(v, tree[k] if k in tree else tree["d" + k]) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return type(template)(_like(t, x) for t, x in zip(template, tree))
    return tree


class Flat:
    """A pytree of NumPy arrays as one float64 vector θ, the way users wrap it for other tools.

    Args:
        params: Dicts, lists and tuples of arrays.

    Examples:
        >>> flat = Flat({"b": np.zeros(2), "a": [np.ones((1, 2))]})
        >>> flat.theta
        array([1., 1., 0., 0.])
        >>> flat.unflatten(np.arange(4.0))["b"]
        array([2., 3.])
    """

    def __init__(self, params: Any) -> None:
        self.params = params
        self.shapes = [leaf.shape for leaf in _leaves(params)]
        self.theta = self.vector(params)

    def vector(self, tree: Any) -> np.ndarray:
        """Concatenates a pytree shaped like ``params`` into one float64 vector.

        A gradient keyed ``"d" + name`` with other entries besides (the lesson's
        ``backward_propagation_n`` returns ``dZ1``, ``dA1``, ...) gives the entries of params.
        """
        tree = _like(self.params, tree)
        return np.concatenate([np.ravel(leaf) for leaf in _leaves(tree)]).astype(np.float64)

    def unflatten(self, theta: np.ndarray) -> Any:
        """The pytree of ``params``' structure holding the entries of ``theta``."""
        sizes = [int(np.prod(shape)) for shape in self.shapes]
        offsets = np.cumsum([0] + sizes)
        parts = (
            theta[a:b].reshape(shape) for a, b, shape in zip(offsets, offsets[1:], self.shapes)
        )
        return _rebuild(self.params, parts)


# --------------------------------------------------------------------------------------------
# The tools, each wrapping the same NumPy cost and backprop
# --------------------------------------------------------------------------------------------


def check_jaxcheck(model: Any, grad: Callable, twin: str = "port") -> bool:
    """``jc.check`` of the NumPy cost and backprop; ``twin``: ``"port"`` or ``"given"``.

    Returns:
        ``report.ok``.
    """
    import jaxcheck as jc

    jax_cost = model.jax_cost if twin == "given" else None
    return bool(jc.check(model.cost, grad, model.params, jax_cost=jax_cost, progress=False).ok)


def check_torch(model: Any, grad: Callable) -> bool:
    """``torch.autograd.gradcheck`` of a ``torch.autograd.Function`` calling the NumPy code.

    The forward calls the NumPy cost and the backward the NumPy backprop, on θ as one float64
    tensor; gradcheck's defaults (eps 1e-6, atol 1e-5, rtol 1e-3, every coordinate).

    Returns:
        Whether gradcheck passes.
    """
    import torch

    flat = Flat(model.params)

    class NumpyCost(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, theta: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(theta)
            return theta.new_tensor(_scalar(model.cost(flat.unflatten(theta.detach().numpy()))))

        @staticmethod
        def backward(ctx: Any, upstream: torch.Tensor) -> torch.Tensor:
            (theta,) = ctx.saved_tensors
            gradient = flat.vector(grad(flat.unflatten(theta.detach().numpy())))
            return upstream * torch.from_numpy(gradient)

    theta = torch.from_numpy(flat.theta.copy()).requires_grad_()
    return bool(torch.autograd.gradcheck(NumpyCost.apply, (theta,), raise_exception=False))


def check_grads_jax(model: Any, grad: Callable) -> bool:
    """``jax.test_util.check_grads`` of a ``custom_vjp`` function calling the NumPy code.

    The primal is a ``jax.pure_callback`` to the NumPy cost and the backward rule a
    ``pure_callback`` to the NumPy backprop; ``order=1, modes=["rev"]`` in float64 (one random
    direction, JAX's default step and tolerances).

    Returns:
        Whether check_grads passes.
    """
    import jax
    import jax.numpy as jnp
    from jax.test_util import check_grads

    flat = Flat(model.params)

    def cost_on_host(theta: np.ndarray) -> np.ndarray:
        return np.float64(_scalar(model.cost(flat.unflatten(np.asarray(theta)))))

    def grad_on_host(theta: np.ndarray) -> np.ndarray:
        return flat.vector(grad(flat.unflatten(np.asarray(theta))))

    with jax.enable_x64(True):

        @jax.custom_vjp
        def cost(theta: jax.Array) -> jax.Array:
            return jax.pure_callback(cost_on_host, jax.ShapeDtypeStruct((), jnp.float64), theta)

        def forward(theta: jax.Array) -> tuple[jax.Array, jax.Array]:
            return cost(theta), theta

        def backward(theta: jax.Array, upstream: jax.Array) -> tuple[jax.Array]:
            shape = jax.ShapeDtypeStruct(theta.shape, jnp.float64)
            return (upstream * jax.pure_callback(grad_on_host, shape, theta),)

        cost.defvjp(forward, backward)
        try:
            check_grads(cost, (jnp.asarray(flat.theta),), order=1, modes=["rev"])
        except AssertionError:
            return False
    return True


def check_classic(model: Any, grad: Callable, epsilon: float = 1e-7) -> bool:
    """The seed's loop: one coordinate at a time, central differences, ε = 1e-7.

    Returns:
        Whether ``‖grad − gradapprox‖ / (‖grad‖ + ‖gradapprox‖) ≤ 1e-7`` (the seed's test; it
        can cry wolf on a correct backprop from rounding alone).
    """
    flat = Flat(model.params)
    theta = flat.theta
    backprop = flat.vector(grad(model.params))
    gradapprox = np.empty_like(theta)
    for i in range(theta.size):
        thetaplus = np.copy(theta)
        thetaplus[i] += epsilon
        thetaminus = np.copy(theta)
        thetaminus[i] -= epsilon
        j_plus = _scalar(model.cost(flat.unflatten(thetaplus)))
        j_minus = _scalar(model.cost(flat.unflatten(thetaminus)))
        gradapprox[i] = (j_plus - j_minus) / (2 * epsilon)
    numerator = np.linalg.norm(backprop - gradapprox)
    denominator = np.linalg.norm(backprop) + np.linalg.norm(gradapprox)
    return bool(numerator <= 1e-7 * denominator)


def _checker(tool: str, twin: str) -> Callable[[Any, Callable], bool]:
    if tool == "jaxcheck":
        return lambda model, grad: check_jaxcheck(model, grad, twin)
    return {"torch": check_torch, "check_grads": check_grads_jax, "classic": check_classic}[tool]


def tool_missing(tool: str) -> str | None:
    """Why ``tool`` cannot run here (``"torch not installed"``), or ``None`` when it can."""
    module = _TOOL_MODULES[tool]
    if module is None:
        return None
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        return f"{top} not installed"
    return None


# --------------------------------------------------------------------------------------------
# A child process: one tool, timed
# --------------------------------------------------------------------------------------------


class _Timer:
    """Times checks as ``timeit`` does, and counts jaxcheck's compilations through ``measure``.

    Before each check the garbage collector runs, and it stays off while the check is timed:
    with torch or JAX imported, a full collection takes tenths of a second and would land on
    whichever check crosses its threshold.
    """

    def __init__(self, tool: str) -> None:
        self.counting = None
        if tool == "jaxcheck":
            from measure import counting_compilations

            self.counting = counting_compilations

    def timed(self, fn: Callable[[], bool]) -> tuple[float, bool, dict[str, Any] | None]:
        """Runs ``fn``: its seconds, its verdict, and what it compiled (``None``: not counted)."""
        gc.collect()
        gc.disable()
        try:
            if self.counting is None:
                start = time.perf_counter()
                ok = fn()
                return time.perf_counter() - start, ok, None
            with self.counting() as counts:
                start = time.perf_counter()
                ok = fn()
                seconds = time.perf_counter() - start
            return seconds, ok, counts.to_dict()
        finally:
            gc.enable()


def _child(args: argparse.Namespace) -> dict[str, Any]:
    """One child's measurements: the tool's import, then its checks by ``args.plan``.

    ``fresh``: the first check of the first model. ``inprocess``: a warm-up check of another
    model, then per model the first check, new closures, the last closure again, and one bug.
    """
    start = time.perf_counter()
    if _TOOL_MODULES[args.tool] is not None:
        importlib.import_module(_TOOL_MODULES[args.tool])
    out: dict[str, Any] = {"tool": args.tool, "import_seconds": time.perf_counter() - start}
    check = _checker(args.tool, args.twin)
    timer = _Timer(args.tool)
    chosen = [SMALL_MODELS[name] for name in args.models.split(",")]
    if args.plan == "suite":
        warm_up = _WARM_UP.make(seed=args.seed)
        out["warm_up_seconds"], _, _ = timer.timed(lambda: check(warm_up, warm_up.grad))
        checks = suite_checks(args.seed)
        verdicts = []

        def run_suite() -> bool:
            verdicts.extend(check(model, grad) for _, model, grad in checks)
            return True

        out["seconds"], _, out["compilations"] = timer.timed(run_suite)
        out["checks"] = len(checks)
        out["verdicts"] = {label: ok for (label, _, _), ok in zip(checks, verdicts)}
        return out
    if args.plan == "fresh":
        model = chosen[0].make(seed=args.seed)
        seconds, ok, counts = timer.timed(lambda: check(model, model.grad))
        out.update(model=chosen[0].name, seconds=seconds, ok=ok, compilations=counts)
        return out
    warm_up = _WARM_UP.make(seed=args.seed)
    out["warm_up_seconds"], _, _ = timer.timed(lambda: check(warm_up, warm_up.grad))
    out["models"] = {}
    for small in chosen:
        row: dict[str, Any] = {}
        model = small.make(seed=args.seed)
        row["first"], row["ok"], row["first_compilations"] = timer.timed(
            lambda model=model: check(model, model.grad)
        )
        closures, closure_compilations = [], []
        for k in range(1, args.repeats + 1):
            model = small.make(seed=args.seed + k)
            seconds, ok, counts = timer.timed(lambda model=model: check(model, model.grad))
            closures.append(seconds)
            closure_compilations.append(counts)
            row["ok"] = row["ok"] and ok
        again = [
            timer.timed(lambda model=model: check(model, model.grad))[0]
            for _ in range(args.repeats)
        ]
        row.update(
            closure=statistics.median(closures),
            closure_all=closures,
            closure_compilations=closure_compilations,
            again=statistics.median(again),
            again_all=again,
        )
        bug = model.bugs[small.bug]
        row["bug"] = small.bug
        row["bug_caught"] = not check(model, bug.grad)
        out["models"][small.name] = row
    return out


# --------------------------------------------------------------------------------------------
# The parent: children, pytest files, the table
# --------------------------------------------------------------------------------------------


def _run_child(
    tool: str,
    plan: str,
    names: Sequence[str],
    cache_dir: str,
    twin: str,
    repeats: int,
    seed: int,
    timeout: float,
) -> dict[str, Any]:
    from measure import run_child

    command = [
        sys.executable,
        str(_HERE / "small.py"),
        "child",
        "--tool",
        tool,
        "--plan",
        plan,
        "--models",
        ",".join(names),
        "--twin",
        twin,
        "--repeats",
        str(repeats),
        "--seed",
        str(seed),
    ]
    return run_child(command, cache_dir, timeout, f"the {tool} child ({plan})")


_PYTEST_HEADER = '''\
"""{count} gradient checks of small NumPy models with {tool}, as a test suite would hold them."""

{imports}import small

'''

_PYTEST_BODY = {
    "jaxcheck": """
def test_{index:02d}_{label}():
    model = small.SMALL_MODELS[{name!r}].make(seed={seed})
    jc.assert_gradients(model.cost, model.grad, model.params{twin})
""",
    "torch": """
def test_{index:02d}_{label}():
    model = small.SMALL_MODELS[{name!r}].make(seed={seed})
    assert small.check_torch(model, model.grad)
""",
    "check_grads": """
def test_{index:02d}_{label}():
    model = small.SMALL_MODELS[{name!r}].make(seed={seed})
    assert small.check_grads_jax(model, model.grad)
""",
    "classic": """
def test_{index:02d}_{label}():
    model = small.SMALL_MODELS[{name!r}].make(seed={seed})
    small.check_classic(model, model.grad)  # its verdict may be a false alarm; timed only
""",
    "floor": """
def test_{index:02d}_{label}():
    model = small.SMALL_MODELS[{name!r}].make(seed={seed})
    model.cost(model.params), model.grad(model.params)
""",
}


def _pytest_file(tool: str, names: Sequence[str], count: int, twin: str, seed: int) -> str:
    """A test module of ``count`` checks cycling through the models, one seed (data) each."""
    imports = "import jaxcheck as jc\n" if tool == "jaxcheck" else ""
    text = _PYTEST_HEADER.format(count=count, tool=tool, imports=imports)
    for index in range(count):
        name = names[index % len(names)]
        text += _PYTEST_BODY[tool].format(
            index=index,
            label=name.replace("-", "_"),
            name=name,
            seed=seed + index,
            twin=", jax_cost=model.jax_cost" if twin == "given" else "",
        )
    return text


def _run_pytest(directory: Path, cache_dir: str, timeout: float) -> dict[str, Any]:
    from measure import child_environment

    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"]
    start = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=directory,
        capture_output=True,
        text=True,
        env=child_environment(cache_dir),
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"pytest in {directory} exited with {done.returncode}: {done.stdout[-2000:]}"
        )
    return {"seconds": wall, "summary": done.stdout.strip().splitlines()[-1]}


def run_table(
    names: Sequence[str],
    *,
    twin: str = "port",
    repeats: int = 3,
    rounds: int = 3,
    pytest_checks: int = 30,
    seed: int = 0,
    timeout: float = 900.0,
    say: Callable[[str], None] = print,
    problem: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measures every scenario of the small-model table for every tool that is installed.

    Every measurement runs in a child process with a new, empty jaxcheck cache directory (the
    warm rows reuse the cold run's directory), in ``rounds`` that interleave the tools. A crash
    of one child becomes a problem and a missing cell; the rest goes on.

    Args:
        names: Keys of :data:`SMALL_MODELS`; the first is the headline model of the goals.
        twin: ``"port"`` (``jc.check`` ports the NumPy cost, as users call it) or ``"given"``
            (the zoo's hand-written JAX twin).
        repeats: New closures (and repeats of the last one) per model in each in-process child.
        rounds: Times every in-process child and fresh-process pair runs, the tools interleaved;
            each cell is the median of its samples over the rounds.
        pytest_checks: Tests in each generated pytest file; 0 skips the pytest rows.
        seed: Seed of the first model; later closures and tests take the following seeds.
        timeout: Seconds before a child is abandoned.
        say: Progress messages.
        problem: Reports what went wrong.

    Returns:
        A JSON-serialisable dict: ``models``, ``tools``, ``missing`` (tool → reason),
        ``cells`` (scenario → model → tool → seconds), ``details`` and ``sanity``.
    """
    missing = {tool: reason for tool in TOOLS if (reason := tool_missing(tool))}
    tools = [tool for tool in TOOLS if tool not in missing]
    cells: dict[str, dict[str, dict[str, float]]] = {key: {} for key in SCENARIOS}
    details: dict[str, Any] = {"inprocess": {}, "fresh": {}, "pytest": {}}
    sanity: list[dict[str, Any]] = []
    out = {
        "models": list(names),
        "params": {},
        "tools": list(TOOLS),
        "missing": missing,
        "twin": twin,
        "repeats": repeats,
        "rounds": rounds,
        "pytest_checks": pytest_checks,
        "cells": cells,
        "details": details,
        "sanity": sanity,
        # Children get their own JAXCHECK_CACHE_DIR; a JAXCHECK_NO_CACHE set here is passed on.
        "cache_env": {key: os.environ[key] for key in ("JAXCHECK_NO_CACHE",) if key in os.environ},
    }
    for name in names:
        params = SMALL_MODELS[name].make(seed).params
        out["params"][name] = int(sum(leaf.size for leaf in _leaves(params)))

    def child(tool: str, plan: str, chosen: Sequence[str], cache: str) -> dict[str, Any] | None:
        try:
            return _run_child(tool, plan, chosen, cache, twin, repeats, seed, timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            problem(f"small table, {tool} {plan} {','.join(chosen)}: {err}")
            return None

    samples: dict[str, dict[str, dict[str, list[float]]]] = {key: {} for key in SCENARIOS}

    def add(key: str, model: str, tool: str, *seconds: float) -> None:
        samples[key].setdefault(model, {}).setdefault(tool, []).extend(seconds)

    verdicts: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="jaxcheck-small-") as scratch:
        root = Path(scratch)
        # Rounds interleave the tools, so that a burst of load on the machine hits them alike.
        for r in range(rounds):
            for tool in tools:
                say(
                    f"small models, round {r + 1}/{rounds}, {tool}: in-process ({', '.join(names)})"
                )
                cache = str(root / f"cache-{r}-inprocess-{tool}")
                result = child(tool, "inprocess", names, cache)
                if result is None:
                    continue
                details["inprocess"].setdefault(tool, []).append(result)
                for name, row in result["models"].items():
                    add("first", name, tool, row["first"])
                    add("closure", name, tool, *row["closure_all"])
                    add("again", name, tool, *row["again_all"])
                    verdict = verdicts.setdefault(
                        (tool, name),
                        {"tool": tool, "model": name, "correct_ok": True, "bug": row["bug"]},
                    )
                    verdict["correct_ok"] = verdict["correct_ok"] and row["ok"]
                    verdict["bug_caught"] = verdict.get("bug_caught", True) and row["bug_caught"]
            for tool in tools:
                say(f"small models, round {r + 1}/{rounds}, {tool}: a suite of small checks")
                result = child(tool, "suite", names, str(root / f"cache-{r}-suite-{tool}"))
                if result is not None:
                    details.setdefault("suite", {}).setdefault(tool, []).append(result)
                    add("suite", "suite", tool, result["seconds"])
                    out["suite_checks"] = result["checks"]
            for name in names:
                for tool in tools:
                    say(f"small models, round {r + 1}/{rounds}, {tool}: fresh processes, {name}")
                    cache = str(root / f"cache-{r}-fresh-{tool}-{name}")
                    cold, warm = (child(tool, "fresh", [name], cache) for _ in range(2))
                    details["fresh"].setdefault(tool, {}).setdefault(name, []).append([cold, warm])
                    if cold is not None:
                        add("fresh_cold", name, tool, cold["seconds"])
                    if warm is not None:
                        add("fresh_warm", name, tool, warm["seconds"])
                        add(
                            "fresh_warm_import",
                            name,
                            tool,
                            warm["import_seconds"] + warm["seconds"],
                        )
        if pytest_checks > 0:
            label = "the models in turn" if len(names) > 1 else names[0]
            for tool in [*tools, "floor"]:
                directory = root / f"pytest-{tool}"
                directory.mkdir()
                (directory / "pytest.ini").write_text("[pytest]\n")
                (directory / f"test_{tool}.py").write_text(
                    _pytest_file(tool, names, pytest_checks, twin, seed)
                )
                cache = str(root / f"cache-pytest-{tool}")
                runs = []
                for key in ("pytest_cold", "pytest_warm"):
                    say(f"small models, {tool}: pytest file of {pytest_checks} checks, {key[7:]}")
                    try:
                        run = _run_pytest(directory, cache, timeout)
                    except (RuntimeError, subprocess.TimeoutExpired) as err:
                        problem(f"small table, {tool} {key}: {err}")
                        run = None
                    runs.append(run)
                    if run is not None and tool != "floor":
                        add(key, label, tool, run["seconds"])
                details["pytest"][tool] = runs
    for key, by_model in samples.items():
        for model, by_tool in by_model.items():
            for tool, values in by_tool.items():
                cells[key].setdefault(model, {})[tool] = statistics.median(values)
    sanity.extend(verdicts.values())
    for row in sanity:
        if row["tool"] in ("jaxcheck", "torch", "check_grads"):
            if not row["correct_ok"]:
                problem(f"small table, {row['tool']} {row['model']}: correct backprop failed")
            if not row["bug_caught"]:
                problem(f"small table, {row['tool']} {row['model']}: bug {row['bug']} missed")
    return out


def goals(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of :data:`GOALS` against the measurements: headline model and worst model.

    Returns:
        One dict per goal: ``goal``, ``limit``, ``ratio`` (headline model), ``worst`` and
        ``worst_model`` (over all models), ``met`` (``None`` when torch was not measured).
    """
    headline = out["models"][0] if out["models"] else None
    result = []
    for key, limit, text in GOALS:
        ratios = {}
        for model, row in out["cells"].get(key, {}).items():
            if row.get("jaxcheck") and row.get("torch"):
                ratios[model] = row["jaxcheck"] / row["torch"]
        ratio = ratios.get("suite" if key == "suite" else headline)
        worst_model = max(ratios, key=ratios.get) if ratios else None
        result.append(
            {
                "goal": text,
                "scenario": key,
                "limit": limit,
                "model": "suite" if key == "suite" else headline,
                "ratio": ratio,
                "worst": ratios.get(worst_model) if worst_model else None,
                "worst_model": worst_model,
                "met": None if ratio is None else ratio <= limit,
            }
        )
    return result


def table_text(out: dict[str, Any]) -> str:
    """The small-model table, its notes and the goals, as Markdown."""
    header = ["scenario", "model", *(_TOOL_HEADERS[tool] for tool in TOOLS), "jaxcheck / torch"]
    rows = []
    for key, label in SCENARIOS.items():
        for model, cell in out["cells"].get(key, {}).items():
            checks = out["pytest_checks"]
            plural = f"{checks} check{'s' if checks != 1 else ''}"
            row = [label.format(n=plural, suite=out.get("suite_checks", "")), model]
            for tool in TOOLS:
                if tool in out["missing"]:
                    row.append(out["missing"][tool])
                else:
                    row.append(short_seconds(cell.get(tool)))
            ratio = None
            if cell.get("jaxcheck") and cell.get("torch"):
                ratio = cell["jaxcheck"] / cell["torch"]
            row.append(times(ratio))
            rows.append(row)
    params = ", ".join(f"{name} {n} parameters" for name, n in out["params"].items())
    twin = "ported from the NumPy cost" if out["twin"] == "port" else "the zoo's JAX twin"
    lines = [
        markdown(header, rows) if rows else "(no measurements)",
        "",
        f"Models: {params}. jaxcheck's twin: {twin}. Each cell is a median over "
        f"{out['rounds']} round(s) of child processes, the tools interleaved (new closure and "
        f"same closure: {out['repeats']} per round). In-process rows: after one warm-up check "
        "of another model. Fresh process: the check alone, and with the tool's import (Python "
        "and NumPy start-up, and building the model, excluded). Pytest rows: wall time of "
        "`python -m pytest` on a generated file, everything included (one run each).",
    ]
    lines += _compile_notes(out)
    floor = out["details"]["pytest"].get("floor")
    if floor and floor[-1]:
        lines.append(
            f"- pytest floor (the same file building the models, checking nothing): "
            f"{short_seconds(floor[-1]['seconds'])} s"
        )
    if out["sanity"]:
        lines.append("- verdicts: " + _verdicts(out["sanity"]))
    lines += ["", "Goals (jaxcheck / torch, the first model; worst model in brackets):", ""]
    for goal in goals(out):
        if goal["met"] is None:
            verdict = "n/a (torch not measured)"
        else:
            verdict = (
                f"{times(goal['ratio'])} → {'PASS' if goal['met'] else 'FAIL'} "
                f"(worst {times(goal['worst'])}, {goal['worst_model']})"
            )
        lines.append(f"- {goal['goal']}: {verdict}")
    return "\n".join(lines)


def _verdicts(sanity: Sequence[dict[str, Any]]) -> str:
    """Each tool's verdicts in a few words: all as expected, or which were not."""
    parts = []
    for tool in TOOLS:
        rows = [r for r in sanity if r["tool"] == tool]
        if not rows:
            continue
        wrong = [f"{r['model']} correct backprop failed" for r in rows if not r["correct_ok"]]
        wrong += [f"{r['model']} {r['bug']} missed" for r in rows if not r["bug_caught"]]
        parts.append(f"{tool} " + (", ".join(wrong) if wrong else "all as expected"))
    return (
        "; ".join(parts) + " (each tool checks every model's correct backprop and one planted bug)"
    )


def _compile_notes(out: dict[str, Any]) -> list[str]:
    # The last round's counts: every round compiles the same programs.
    inprocess = (out["details"]["inprocess"].get("jaxcheck") or [None])[-1]
    if not inprocess:
        return []
    lines = []
    for name, row in inprocess["models"].items():
        first = row["first_compilations"]
        closures = row["closure_compilations"]
        if first is None:
            continue
        closure = closures[-1] if closures else None
        fresh = (out["details"]["fresh"].get("jaxcheck", {}).get(name) or [[None, None]])[-1]
        warm = fresh[1]["compilations"] if fresh[1] else None
        parts = [f"first {_counts(first)}", f"new closure {_counts(closure)}"]
        parts.append(f"fresh process, cache warm {_counts(warm)}")
        lines.append(f"- jaxcheck compilations, {name}: " + ", ".join(parts))
    if out["cache_env"]:
        lines.append(f"- cache environment: {out['cache_env']}")
    return lines


def _counts(counts: dict[str, Any] | None) -> str:
    if counts is None:
        return "—"
    text = f"{counts['compiles']} XLA compiles ({counts['compile_seconds']:.2f} s)"
    if counts["cache_hits"]:
        text += f", {counts['cache_hits']} JAX persistent-cache hits"
    if counts.get("disk_loads"):
        text += f", {counts['disk_loads']} loaded from jaxcheck's cache"
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="small.py",
        description=(
            "A child process of the small-model table (bench.py --small runs the table): "
            "imports one tool, then times its checks of the small models."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    child = commands.add_parser("child", help="time one tool's checks (JSON on stdout)")
    child.add_argument("--tool", choices=TOOLS, required=True)
    child.add_argument("--plan", choices=("inprocess", "fresh", "suite"), required=True)
    child.add_argument("--models", default=",".join(SMALL_MODELS))
    child.add_argument("--twin", choices=("port", "given"), default="port")
    child.add_argument("--repeats", type=int, default=3)
    child.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs a child process's measurements and prints them as one JSON line.

    Args:
        argv: Command-line arguments; ``None``: ``sys.argv[1:]``.

    Returns:
        0.
    """
    args = _parser().parse_args(argv)
    print(json.dumps(_child(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
