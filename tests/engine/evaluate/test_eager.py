"""Small checks evaluated with NumPy: the interpreter against JAX, verdicts against compiling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck import models
from jaxcheck._engine.evaluate import eager
from jaxcheck._engine.evaluate.finite_differences import Probe, evaluate
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.twin import trace

try:
    from tests.compiled import jit
except ImportError:  # pytest run without the repository root on sys.path: tests/ is on it
    from compiled import jit

RNG = np.random.default_rng(7)
A = RNG.normal(size=(3, 4))
B = RNG.normal(size=(4, 5))
V = RNG.normal(size=(5,))
LABELS = np.array([0, 2, 1, 1, 0])


def _softmax_loss(a: jax.Array, b: jax.Array) -> jax.Array:
    scores = (a @ b).T
    shifted = scores - jnp.max(scores, axis=1, keepdims=True)
    log_probs = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))
    return -jnp.sum(log_probs * jax.nn.one_hot(LABELS, 3)) / 5


#: Functions of (a, b) as users' twins and ports write them; each returns a scalar.
FUNCTIONS = {
    "tanh_mlp": lambda a, b: jnp.sum(jnp.tanh(a @ b) ** 2),
    "relu_where": lambda a, b: jnp.sum(jnp.where(a @ b > 0, a @ b, 0.1 * (a @ b))),
    "relu_nn": lambda a, b: jnp.mean(jax.nn.relu(a @ b) ** 3),
    "sigmoid_log": lambda a, b: -jnp.mean(jnp.log(jax.nn.sigmoid(a @ b) + 1e-12)),
    "softmax": _softmax_loss,
    "logsumexp": lambda a, b: jax.nn.logsumexp(a @ b),
    "max_reduce": lambda a, b: jnp.max(a @ b) + jnp.min(a) * jnp.prod(b[0, :3]),
    "broadcast": lambda a, b: jnp.sum((a[:, :, None] * b[None, :, :]) ** 2),
    "transpose": lambda a, b: jnp.sum((a.T @ a) * (b @ b.T)),
    "batched_dot": lambda a, b: jnp.sum(jnp.einsum("ij,jk,k->i", a, b, V) ** 2),
    "concatenate": lambda a, b: jnp.sum(jnp.concatenate([a, b.T[:2]], axis=0) ** 2),
    "stack": lambda a, b: jnp.sum(jnp.stack([a[0], b[:, 1]]) ** 3),
    "slices": lambda a, b: jnp.sum(a[1:, ::2] @ b[::2, 1:4]),
    "reshape": lambda a, b: jnp.sum(jnp.reshape(a, (2, 6)) @ jnp.reshape(b[:, :3], (6, 2))),
    "clip_abs": lambda a, b: jnp.sum(jnp.abs(jnp.clip(a @ b, -0.5, 0.5))),
    "powers": lambda a, b: jnp.sum(jnp.sqrt(a**2 + 1.0) * jnp.exp(-(b**2)).sum()),
    "cumsum": lambda a, b: jnp.sum(jnp.cumsum(a @ b, axis=1) ** 2),
    "squared_norm": lambda a, b: jnp.linalg.norm(a) ** 2 + jnp.linalg.norm(b @ V),
    "var": lambda a, b: jnp.var(a @ b, axis=1).sum() + jnp.std(b),
    "sin_cos": lambda a, b: jnp.sum(jnp.sin(a) @ jnp.cos(b)),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS), ids=str)
def test_interpreter_matches_jax(name: str) -> None:
    fn = FUNCTIONS[name]
    with jax.enable_x64(True):
        closed = jax.make_jaxpr(fn)(A, B)
        assert eager.supports(closed.jaxpr)
        (value,) = eager.interpret(closed.jaxpr, closed.consts, [A, B])
        # JAX's answers from one compiled program each: op by op, JAX would compile every
        # primitive of the gradient on its own (seconds per function).
        np.testing.assert_allclose(value, jit(fn)(A, B), rtol=1e-12, atol=1e-14)
        grad = jax.make_jaxpr(jax.grad(fn, argnums=(0, 1)))(A, B)
        assert eager.supports(grad.jaxpr)
        got = eager.interpret(grad.jaxpr, grad.consts, [A, B])
        for g, want in zip(got, jit(jax.grad(fn, argnums=(0, 1)))(A, B)):
            np.testing.assert_allclose(g, want, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", sorted(FUNCTIONS), ids=str)
def test_batched_interpreter_matches_vmap(name: str) -> None:
    fn = FUNCTIONS[name]
    batch = RNG.normal(size=(6, *A.shape))
    with jax.enable_x64(True):
        closed = jax.make_jaxpr(fn)(A, B)
        (values,) = eager.interpret(closed.jaxpr, closed.consts, [batch, B], [True, False], 6)
        want = jit(jax.vmap(fn, in_axes=(0, None)))(batch, B)
    np.testing.assert_allclose(values, want, rtol=1e-12, atol=1e-14)


def test_unsupported_primitives_are_reported_not_guessed() -> None:
    def sorted_cost(a: jax.Array) -> jax.Array:
        return jnp.sum(jnp.sort(a, axis=1)[:, -1])

    with jax.enable_x64(True):
        closed = jax.make_jaxpr(sorted_cost)(A)
    assert not eager.supports(closed.jaxpr)
    with pytest.raises(eager.Unsupported, match="sort"):
        eager.interpret(closed.jaxpr, closed.consts, [A])


def _probes(leaves: list[np.ndarray]) -> list[Probe]:
    probes = []
    for i, leaf in enumerate(leaves):
        n = leaf.size
        h = np.full(n, 1e-5)
        probes.append(Probe((i,), "coordinate", n, np.arange(n), h, h, double=True))
    vectors = RNG.normal(size=(3, leaves[0].size)) * 1e-5
    probes.append(Probe((0,), "vector", 3, vectors=vectors))
    return probes


@pytest.mark.parametrize("name", ["tanh_mlp", "softmax_regression", "batchnorm"], ids=str)
def test_evaluation_matches_the_compiled_program(name: str) -> None:
    model = models.make(name, seed=3)
    leaves, treedef = jax.tree_util.tree_flatten(model.params)
    leaves = [np.asarray(v, np.float64) for v in leaves]
    with jax.enable_x64(True):
        twin = trace(model.jax_cost, treedef, leaves, "given")
        probes = _probes(leaves)
        numpy_run = evaluate(twin, leaves, probes, options=Options(cache=False))
        xla_run = evaluate(twin, leaves, probes, options=Options(compile=True, cache=False))
    np.testing.assert_allclose(numpy_run[0], xla_run[0], rtol=1e-13)
    np.testing.assert_allclose(numpy_run[1], xla_run[1], rtol=1e-12)
    for g, want in zip(numpy_run[2], xla_run[2]):
        np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-14)
    for got, want in zip(numpy_run[3], xla_run[3]):
        for field in ("up", "down", "up2", "down2"):
            a, b = getattr(got, field), getattr(want, field)
            if b is not None:
                np.testing.assert_allclose(a, b, rtol=1e-13)


@pytest.mark.parametrize("name", ["tanh_mlp", "relu_mlp", "l2_mlp", "logistic_regression"])
def test_verdicts_do_not_depend_on_compiling(name: str) -> None:
    model = models.make(name, seed=1)
    for grad in [model.grad, *(bug.grad for bug in model.bugs.values())]:
        interpreted = jc.check(model.cost, grad, model.params, compile=None)
        compiled = jc.check(model.cost, grad, model.params, compile=True, cache=False)
        assert interpreted.ok == compiled.ok
        assert interpreted.failing == compiled.failing
        for path, leaf in compiled.leaves.items():
            assert interpreted.leaves[path].status == leaf.status, path


def test_a_wrong_gradient_is_localised_without_compiling() -> None:
    model = models.make("tanh_mlp", seed=2)
    bug = next(iter(model.bugs.values()))
    report = jc.check(model.cost, bug.grad, model.params, compile=False)
    assert not report.ok
    assert set(report.failing) == set(bug.leaves)


def test_compile_option_is_validated() -> None:
    model = models.make("tanh_mlp")
    with pytest.raises(jc.InputError, match="compile='yes'"):
        jc.check(model.cost, model.grad, model.params, compile="yes")
