"""Tests of jaxcheck.port: ported NumPy costs equal the originals and trace under jit/grad/vmap."""

from __future__ import annotations

import functools
import importlib.util
import re
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck.errors import PortError
from jaxcheck.port import port

FIXTURE = Path(__file__).parent / "port_fixtures" / "numpy_model.py"


def _load_fixture() -> types.ModuleType:
    # Loaded by path, so that the test does not depend on how pytest sets up sys.path.
    spec = importlib.util.spec_from_file_location("port_fixtures_numpy_model", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nm = _load_fixture()
two_layer_cost = nm.two_layer_cost  # a module-level function of another module, by name


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((3, 5))
    Y = (rng.random((1, 5)) > 0.5).astype(np.float64)
    params = {
        "W1": rng.standard_normal((4, 3)),
        "b1": rng.standard_normal((4, 1)),
        "W2": rng.standard_normal((1, 4)),
        "b2": rng.standard_normal((1, 1)),
    }
    return X, Y, params


def _closure_cost(X, Y):
    scale = 0.5

    def act(z):
        return np.tanh(z) * scale

    def cost(params, *, offset=0.0):
        hidden = act(params["W1"] @ X + params["b1"])
        out = np.dot(params["W2"], hidden) + params["b2"]
        return float(np.mean(np.square(out - Y)) + offset)

    return cost


def _cases(X, Y):
    return {
        "lambda-closing-over-data": lambda p: nm.two_layer_cost(X, Y, p),
        "lambda-global-function": lambda p: two_layer_cost(X, Y, p),
        "partial": functools.partial(nm.two_layer_cost, X, Y),
        "item": lambda p: nm.item_cost(X, Y, p),
        "cost-cache-tuple": lambda p: nm.cost_with_cache(X, Y, p)[0],
        "nested-closure": _closure_cost(X, Y),
        "recursive-helpers": lambda p: nm.recursive_cost({"w": p["W1"]}),
        "helper-in-generator": lambda p: nm.generator_cost(p),
    }


CASES = list(_cases(None, None))


def _numerical_gradient(fn, params, eps=1e-6):
    grads = {}
    for key, value in params.items():
        grad = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[key][index] += eps
            minus[key][index] -= eps
            grad[index] = (fn(plus) - fn(minus)) / (2 * eps)
        grads[key] = grad
    return grads


@pytest.mark.parametrize("case", CASES)
def test_port_equals_numpy(case):
    X, Y, params = _data()
    cost = _cases(X, Y)[case]
    with jax.enable_x64(True):
        ported = port(cost)
        value = ported(params)
        jitted = jax.jit(ported)(params)
    expected = cost(params)
    np.testing.assert_allclose(float(value), expected, rtol=1e-12)
    np.testing.assert_allclose(float(jitted), expected, rtol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_port_gradient_matches_finite_differences(case):
    X, Y, params = _data(1)
    cost = _cases(X, Y)[case]
    with jax.enable_x64(True):
        grads = jax.jit(jax.grad(port(cost)))(params)
    numerical = _numerical_gradient(cost, params)
    for key in params:
        np.testing.assert_allclose(grads[key], numerical[key], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("case", CASES)
def test_port_vmaps(case):
    X, Y, params = _data(2)
    cost = _cases(X, Y)[case]
    shifts = np.array([-0.1, 0.0, 0.3])
    batched = {k: np.stack([v + s for s in shifts]) for k, v in params.items()}
    with jax.enable_x64(True):
        values = jax.vmap(port(cost))(batched)
    expected = [cost({k: v + s for k, v in params.items()}) for s in shifts]
    np.testing.assert_allclose(values, expected, rtol=1e-12)


def test_grad_matches_analytic_gradient():
    X, Y, params = _data(3)
    with jax.enable_x64(True):
        grads = jax.grad(port(nm.two_layer_cost), argnums=2)(X, Y, params)
    expected = nm.two_layer_gradients(X, Y, params)
    for key in params:
        np.testing.assert_allclose(grads[key], expected[key], rtol=1e-10, atol=1e-14)


def test_cost_returning_cost_and_cache():
    X, Y, params = _data()
    cost, cache = nm.cost_with_cache(X, Y, params)
    with jax.enable_x64(True):
        ported = port(nm.cost_with_cache)
        jax_cost, jax_cache = jax.jit(ported)(X, Y, params)
        grads, aux = jax.grad(lambda p: ported(X, Y, p), has_aux=True)(params)
    np.testing.assert_allclose(jax_cost, cost, rtol=1e-12)
    assert sorted(jax_cache) == sorted(cache) == sorted(aux) == ["A1", "A2"]
    np.testing.assert_allclose(jax_cache["A2"], cache["A2"], rtol=1e-12)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_float_and_item_stay_normal_on_numpy_values():
    X, Y, params = _data()
    value = port(nm.two_layer_cost)(X, Y, params)  # not traced: the result is still a number
    assert isinstance(float(value), float)
    data = np.array([2.5])
    ported_float = port(lambda x: float(x) + data.item())
    with jax.enable_x64(True):
        assert ported_float(1) == 3.5
        assert type(ported_float(1)) is float
        assert float(jax.grad(ported_float)(1.0)) == 1.0


def test_port_is_idempotent_and_never_reused():
    X, Y, _ = _data()
    cost = functools.partial(nm.two_layer_cost, X, Y)
    ported = port(cost)
    assert port(ported) is ported
    # A new function each time: a cache keyed on it (jax.jit's) never serves stale data.
    assert port(cost) is not ported
    assert port(nm.two_layer_cost) is not port(nm.two_layer_cost)
    assert jaxcheck.port.port is port


def test_port_leaves_user_code_alone():
    X, Y, params = _data()
    cost = _closure_cost(X, Y)
    before_module = dict(vars(nm))
    before_fn = (cost.__code__, cost.__globals__, cost.__defaults__, cost.__kwdefaults__)
    before_cells = [cell.cell_contents for cell in cost.__closure__]
    with jax.enable_x64(True):
        jax.grad(port(cost))(params)
        jax.grad(port(nm.two_layer_cost), argnums=2)(X, Y, params)
    after_module = dict(vars(nm))
    assert after_module.keys() == before_module.keys()
    assert all(after_module[k] is v for k, v in before_module.items())
    assert nm.np is np and nm.exp is np.exp
    assert (cost.__code__, cost.__globals__, cost.__defaults__, cost.__kwdefaults__) == before_fn
    assert all(c.cell_contents is v for c, v in zip(cost.__closure__, before_cells))
    assert globals()["np"] is np
    assert cost(params) == pytest.approx(float(port(cost)(params)), rel=1e-6)


def test_keyword_defaults_are_kept():
    X, Y, params = _data()
    cost = _closure_cost(X, Y)
    with jax.enable_x64(True):
        ported = port(cost)
        np.testing.assert_allclose(ported(params), cost(params), rtol=1e-12)
        np.testing.assert_allclose(ported(params, offset=2.0), cost(params, offset=2.0))


def test_code_without_source_is_ported_by_its_globals():
    # Built from a string: no source file, so the original code runs with numpy and the
    # user's functions translated where its globals are looked up.
    module = types.ModuleType("port_scratch")
    exec(
        "import numpy as np\n"
        "def act(z):\n"
        "    return np.tanh(z)\n"
        "def cost(w, scale=2.0):\n"
        "    return float(np.sum(act(w))) * scale\n",
        module.__dict__,
    )
    w = np.array([0.1, 0.2])
    ported = port(module.cost)
    with jax.enable_x64(True):
        np.testing.assert_allclose(jax.jit(ported)(w), 2.0 * np.sum(np.tanh(w)), rtol=1e-12)
        exec("def act(z):\n    return np.sin(z)\n", module.__dict__)
        np.testing.assert_allclose(ported(w), 2.0 * np.sum(np.sin(w)), rtol=1e-12)
        np.testing.assert_allclose(jax.grad(ported)(w), 2.0 * np.cos(w), rtol=1e-12)
        # jax.jit caches its trace by function; a new port gives a new trace.
        np.testing.assert_allclose(jax.jit(port(module.cost))(w), 2.0 * np.sum(np.sin(w)))


class _Model:
    def __init__(self, X, Y):
        self.X, self.Y = X, Y

    def cost(self, params):
        return nm.two_layer_cost(self.X, self.Y, params)

    def __call__(self, params):
        return nm.two_layer_cost(self.X, self.Y, params) * 2.0


def test_bound_methods_and_callable_objects():
    X, Y, params = _data()
    model = _Model(X, Y)
    with jax.enable_x64(True):
        method_value = jax.jit(port(model.cost))(params)
        call_grad = jax.grad(port(model))(params)
    np.testing.assert_allclose(method_value, model.cost(params), rtol=1e-12)
    expected = nm.two_layer_gradients(X, Y, params)
    np.testing.assert_allclose(call_grad["W1"], 2.0 * expected["W1"], rtol=1e-10)


def test_only_user_code_is_ported():
    import json

    from jaxcheck import lesson
    from jaxcheck.port._user import is_user_function as _is_user_function

    assert _is_user_function(nm.relu)
    assert _is_user_function(lesson.forward_propagation_n)
    assert _is_user_function(_closure_cost)
    assert not _is_user_function(json.dumps)  # the standard library
    assert not _is_user_function(pytest.approx)  # an installed package
    assert not _is_user_function(jnp.sum)  # jax


def test_wrong_arguments_are_not_port_errors():
    with pytest.raises(TypeError, match="argument"):
        port(nm.two_layer_cost)(1)


# ---- What cannot be ported -----------------------------------------------------------------


def _line_of(text: str) -> int:
    lines = FIXTURE.read_text().splitlines()
    (number,) = [i for i, line in enumerate(lines, 1) if line.strip() == text]
    return number


def _params():
    return {"w": np.array([0.5, -1.0, 2.0]), "v": np.ones((2, 2))}


def _jit(ported):
    return jax.jit(ported)(_params())


def _plain(ported):
    return ported(_params())


def _vmap(ported):
    params = _params()
    batched = {"w": np.stack([params["w"], -params["w"]]), "v": params["v"]}
    return jax.vmap(ported, in_axes=({"w": 0, "v": None},))(batched)


# (cost, how it is run, the function named, the offending source line, words of the reason)
PORT_ERRORS = [
    pytest.param(
        nm.branching_cost,
        _jit,
        "branching_cost",
        'if np.sum(params["w"]) > 0:',
        ["control flow", "`params`, an argument of `branching_cost`", "np.where"],
        id="if-under-jit",
    ),
    pytest.param(
        nm.branching_cost,
        _vmap,
        "branching_cost",
        'if np.sum(params["w"]) > 0:',
        ["control flow"],
        id="if-under-vmap",
    ),
    pytest.param(
        nm.while_cost,
        _jit,
        "while_cost",
        "while np.max(w) > 1:",
        ["control flow", "`w`, computed on line"],
        id="while",
    ),
    pytest.param(
        nm.mask_select_cost,
        _jit,
        "mask_select_cost",
        "return np.sum(w[w > 0])",
        ["boolean mask", "np.where(mask, x, 0)"],
        id="boolean-mask",
    ),
    pytest.param(
        nm.integer_cost,
        _jit,
        "integer_cost",
        'for k in range(int(np.sum(params["w"]))):',
        ["`int` needs a concrete number", "`params`"],
        id="int",
    ),
    pytest.param(
        nm.scipy_cost,
        _jit,
        "scipy_cost",
        'return np.sum(expit(params["w"]))',
        ["`scipy.special", "needs real NumPy arrays"],
        id="scipy",
    ),
]


@pytest.mark.parametrize("cost, run, function, source, reasons", PORT_ERRORS)
def test_port_error_names_the_line(cost, run, function, source, reasons):
    if cost is nm.scipy_cost:
        pytest.importorskip("scipy")
    with pytest.raises(PortError, match=re.escape(source)) as info:
        with jax.enable_x64(True):
            run(port(cost))
    message = str(info.value)
    assert f"line {_line_of(source)}" in message
    assert f"port_fixtures_numpy_model.{function}" in message
    assert str(FIXTURE) in message
    for reason in reasons:
        reason = re.sub(r"\{line:(.*?)\}", lambda m: str(_line_of(m.group(1))), reason)
        assert reason in message
    assert "jax_cost=" in message
    assert info.value.__cause__ is not None


def test_port_error_names_the_caller_of_a_failing_helper():
    ported = port(lambda p: nm.branching_cost(p) * 2)
    with pytest.raises(PortError, match="called by the port of `test_port.test_port_error_names"):
        jax.jit(ported)(_params())


def test_other_errors_keep_the_original_error():
    with pytest.raises(PortError, match=r"np\.dot") as info:
        jax.jit(port(nm.mismatch_cost))(_params())
    causes = []
    error = info.value
    while error is not None:
        causes.append(error)
        error = error.__cause__
    assert any(isinstance(e, TypeError) and "dot" in str(e) for e in causes[1:])
    line = _line_of('return np.sum(np.dot(params["w"], params["v"]))')
    assert f"line {line}" in str(info.value)


@pytest.mark.parametrize(
    "fn", [np.sum, np.exp, len, int, _Model], ids=["np.sum", "ufunc", "len", "class", "user-class"]
)
def test_not_a_python_function(fn):
    with pytest.raises(PortError, match="not a Python function") as info:
        port(fn)
    assert "jax_cost=" in str(info.value)


def test_numpy_function_names_its_counterpart():
    with pytest.raises(PortError, match="jax.numpy.sum"):
        port(np.sum)


# ---- The lesson's network, from jaxcheck.lesson ----------------------------------------------


def test_seed_forward_propagation_n():
    lesson = pytest.importorskip("jaxcheck.lesson")
    if not hasattr(lesson, "forward_propagation_n"):
        pytest.skip("jaxcheck.lesson has no forward_propagation_n yet")
    X, Y, parameters = lesson.gradient_check_n_test_case()
    forward_propagation_n = lesson.forward_propagation_n
    cost, cache = forward_propagation_n(X, Y, parameters)
    expected = lesson.backward_propagation_n(X, Y, cache)
    with jax.enable_x64(True):
        ported = port(lambda p: forward_propagation_n(X, Y, p))
        jax_cost, _ = ported(parameters)
        grads = jax.grad(lambda p: ported(p)[0])(parameters)
    np.testing.assert_allclose(jax_cost, cost, rtol=1e-12)
    for key in parameters:
        np.testing.assert_allclose(grads[key], expected["d" + key], rtol=1e-9, atol=1e-12)
