"""Tests of jaxcheck.port: ported NumPy costs equal the originals and trace under jit/grad/vmap."""

from __future__ import annotations

import functools
import importlib.util
import inspect
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

try:
    from tests.compiled import jit
    from tests.realistic import layers, losses, nets, rnn
except ImportError:  # pytest run without the repository root on sys.path: tests/ is on it
    from compiled import jit
    from realistic import layers, losses, nets, rnn

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
        jitted = jit(ported)(params)
    expected = cost(params)
    np.testing.assert_allclose(float(value), expected, rtol=1e-12)
    np.testing.assert_allclose(float(jitted), expected, rtol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_port_gradient_matches_finite_differences(case):
    X, Y, params = _data(1)
    cost = _cases(X, Y)[case]
    with jax.enable_x64(True):
        grads = jit(jax.grad(port(cost)))(params)
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
        values = jit(jax.vmap(port(cost)))(batched)
    expected = [cost({k: v + s for k, v in params.items()}) for s in shifts]
    np.testing.assert_allclose(values, expected, rtol=1e-12)


def test_grad_matches_analytic_gradient():
    X, Y, params = _data(3)
    with jax.enable_x64(True):
        grads = jit(jax.grad(port(nm.two_layer_cost), argnums=2))(X, Y, params)
    expected = nm.two_layer_gradients(X, Y, params)
    for key in params:
        np.testing.assert_allclose(grads[key], expected[key], rtol=1e-10, atol=1e-14)


def test_cost_returning_cost_and_cache():
    X, Y, params = _data()
    cost, cache = nm.cost_with_cache(X, Y, params)
    with jax.enable_x64(True):
        ported = port(nm.cost_with_cache)
        jax_cost, jax_cache = jit(ported)(X, Y, params)
        grads, aux = jit(jax.grad(lambda p: ported(X, Y, p), has_aux=True))(params)
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
        np.testing.assert_allclose(jit(ported)(w), 2.0 * np.sum(np.tanh(w)), rtol=1e-12)
        exec("def act(z):\n    return np.sin(z)\n", module.__dict__)
        np.testing.assert_allclose(ported(w), 2.0 * np.sum(np.sin(w)), rtol=1e-12)
        np.testing.assert_allclose(jax.grad(ported)(w), 2.0 * np.cos(w), rtol=1e-12)
        # jax.jit caches its trace by function; a new port gives a new trace.
        np.testing.assert_allclose(jit(port(module.cost))(w), 2.0 * np.sum(np.sin(w)))


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
        method_value = jit(port(model.cost))(params)
        call_grad = jit(jax.grad(port(model)))(params)
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


def test_of_jaxcheck_only_the_systems_under_test_and_their_adapters_are_ported():
    from jaxcheck import lesson, models, plotting, report
    from jaxcheck._engine.evaluate import programs
    from jaxcheck._engine.system import layer
    from jaxcheck._engine.verdict import classify
    from jaxcheck.port._user import is_user_function as _is_user_function

    # what stands in the user's place: shipped NumPy models, and the code that makes a layer's
    # forward one cost
    assert _is_user_function(lesson.backward_propagation_n)
    assert _is_user_function(models.make("relu_mlp").cost)
    assert _is_user_function(layer.Layer.cost)
    # jaxcheck's own machinery is a library
    assert not _is_user_function(classify.relative_difference)
    assert not _is_user_function(programs.program)
    assert not _is_user_function(report.Report.to_dict)
    assert not _is_user_function(plotting.plot_report)
    assert not _is_user_function(port)


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
    return jit(ported)(_params())


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
        "return np.sum(np.sort(w[w > 0])[-2:])",
        [
            "`x[mask]` with a mask computed from the parameters",
            "`numpy.sort`",
            "np.where(mask, x, 0)",
        ],
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
        jit(ported)(_params())


def test_other_errors_keep_the_original_error():
    with pytest.raises(PortError, match=r"np\.dot") as info:
        jit(port(nm.mismatch_cost))(_params())
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
        grads = jit(jax.grad(lambda p: ported(p)[0]))(parameters)
    np.testing.assert_allclose(jax_cost, cost, rtol=1e-12)
    for key in parameters:
        np.testing.assert_allclose(grads[key], expected["d" + key], rtol=1e-9, atol=1e-12)


# ---- Code people write: assignment into arrays, NumPy values that must stay NumPy ----------

ASSIGNMENTS_FIXTURE = Path(__file__).parent / "port_fixtures" / "assignments.py"
spec = importlib.util.spec_from_file_location("port_fixtures_assignments", ASSIGNMENTS_FIXTURE)
assignments = importlib.util.module_from_spec(spec)
spec.loader.exec_module(assignments)

ONCE_UNPORTABLE = [
    nm.inplace_cost,
    nm.augmented_cost,
    nm.math_cost,
    nm.concrete_cost,
    nm.library_calls_cost,
    assignments.nested_targets,
    assignments.global_target,
    assignments.closure_target,
    assignments.tuple_targets,
    assignments.add_at,
    assignments.mask_assignments,
    assignments.objects,
    assignments.list_indices,
    assignments.abc_layers,
]


def _as_w(fn):
    """Costs of the fixtures take `params`; the assignment fixtures take `w`."""
    if fn.__module__ == "port_fixtures_assignments":
        return lambda params: fn(params["w"])
    return fn


@pytest.mark.parametrize("cost", ONCE_UNPORTABLE, ids=lambda f: f.__name__)
def test_code_people_write_is_ported(cost):
    cost = _as_w(cost)
    params = _params()
    expected = cost(_params())
    with jax.enable_x64(True):
        ported = port(cost)
        assert jax.make_jaxpr(ported)(params) is not None
        np.testing.assert_allclose(jit(ported)(params), expected, rtol=1e-12)
        np.testing.assert_allclose(ported(_params()), expected, rtol=1e-12)
        grads = jit(jax.grad(ported))(params)
        batched = jit(jax.vmap(ported, in_axes=({"w": 0, "v": None},)))(
            {"w": np.stack([params["w"], -0.5 * params["w"]]), "v": params["v"]}
        )
    numerical = _numerical_gradient(cost, _params())
    for key in params:
        np.testing.assert_allclose(grads[key], numerical[key], rtol=1e-5, atol=1e-7)
    second = cost({"w": -0.5 * params["w"], "v": params["v"]})
    np.testing.assert_allclose(batched, [expected, second], rtol=1e-12)


def test_numpy_values_stay_numpy_values():
    # A library object, not a dict or object of the user's, which the port would put back.
    seen = types.SimpleNamespace()

    def cost(w):
        seen.size = np.prod(w.shape[1:])
        seen.index = np.arange(w.shape[0])
        np.random.seed(0)
        seen.mask = np.random.rand(*w.shape) < 0.5
        return np.sum(w.reshape(w.shape[0], seen.size)[seen.index] * seen.mask)

    w = np.arange(6.0).reshape(2, 3)
    with jax.enable_x64(True):
        jax.make_jaxpr(port(cost))(w)
    assert type(seen.size) is np.int64
    assert type(seen.index) is np.ndarray and type(seen.mask) is np.ndarray
    np.random.seed(0)
    np.testing.assert_array_equal(seen.mask, np.random.rand(2, 3) < 0.5)


def test_the_random_state_is_left_as_found():
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    with jax.enable_x64(True):
        jax.make_jaxpr(port(nm.dropout_cost))(_params())
        jax.make_jaxpr(port(nm.concrete_cost))(_params())
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_a_long_traced_loop_warns():
    def cost(w):
        total = 0.0
        for _ in range(10_001):
            total = total + 1.0
        return np.sum(w) * total

    with jax.enable_x64(True), pytest.warns(jaxcheck.errors.PortWarning, match="10,000 times"):
        jax.make_jaxpr(port(cost))(np.ones(2))
    port(cost)(np.ones(2))  # not traced: no warning (warnings are errors here)


# ---- The realistic NumPy code of tests/realistic ---------------------------------------------

RNG = np.random.RandomState(0)
CONV = {"stride": 2, "pad": 1}
POOL = {"pool_height": 2, "pool_width": 2, "stride": 2}
LABELS = np.array([0, 2, 1, 2, 0, 1])


def _one(backward):
    """A backward returning one gradient, as a tuple like the others."""
    return lambda dout, cache: (backward(dout, cache),)


def _loss_gradient(dout, dx):
    """Losses return (loss, dx): the gradient of dout * loss is dout * dx."""
    return (dout * dx,)


def _randn(*shapes):
    return tuple(RNG.randn(*shape) for shape in shapes)


# name -> (forward, its arguments, which of them are differentiated, backward)
LAYERS = {
    "affine": (
        layers.affine_forward,
        _randn((3, 2, 2), (4, 5), (5,)),
        (0, 1, 2),
        layers.affine_backward,
    ),
    "relu": (layers.relu_forward, _randn((4, 5)), (0,), _one(layers.relu_backward)),
    "conv": (
        lambda x, w, b: layers.conv_forward_naive(x, w, b, CONV),
        _randn((2, 3, 5, 5), (3, 3, 3, 3), (3,)),
        (0, 1, 2),
        layers.conv_backward_naive,
    ),
    "max-pool": (
        lambda x: layers.max_pool_forward_naive(x, POOL),
        _randn((2, 3, 4, 4)),
        (0,),
        _one(layers.max_pool_backward_naive),
    ),
    "batchnorm": (
        lambda x, g, b: layers.batchnorm_forward(x, g, b, {"mode": "train"}),
        _randn((6, 4), (4,), (4,)),
        (0, 1, 2),
        layers.batchnorm_backward,
    ),
    "layernorm": (
        lambda x, g, b: layers.layernorm_forward(x, g, b, {}),
        _randn((6, 4), (4,), (4,)),
        (0, 1, 2),
        layers.layernorm_backward,
    ),
    "dropout": (
        lambda x: layers.dropout_forward(x, {"p": 0.7, "mode": "train", "seed": 3}),
        _randn((6, 4)),
        (0,),
        _one(layers.dropout_backward),
    ),
    "svm": (lambda x: losses.svm_loss(x, LABELS), _randn((6, 3)), (0,), _loss_gradient),
    "softmax": (lambda x: losses.softmax_loss(x, LABELS), _randn((6, 3)), (0,), _loss_gradient),
    "softmax-naive": (
        lambda w, x: losses.softmax_loss_naive(w, x, LABELS, 0.1),
        (0.1 * RNG.randn(4, 3), RNG.randn(6, 4)),
        (0,),
        _loss_gradient,
    ),
    "softmax-vectorized": (
        lambda w, x: losses.softmax_loss_vectorized(w, x, LABELS, 0.1),
        (0.1 * RNG.randn(4, 3), RNG.randn(6, 4)),
        (0,),
        _loss_gradient,
    ),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_realistic_layers_and_losses(name):
    forward, args, wrt, backward = LAYERS[name]
    out, cache = forward(*args)
    dout = np.random.RandomState(1).randn(*np.shape(out))

    def scalar(*a):
        return jnp.sum(port(forward)(*a)[0] * dout)

    with jax.enable_x64(True):
        jaxpr = jax.make_jaxpr(scalar)(*args)
        ported_out = port(forward)(*args)[0]
        grads = jit(jax.grad(scalar, argnums=wrt))(*args)
    assert jaxpr.jaxpr.eqns
    np.testing.assert_allclose(ported_out, out, rtol=1e-12, atol=1e-14)
    expected = backward(dout, cache)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_svm_loss_naive_if_on_a_margin_is_if_converted():
    W, X = 0.1 * RNG.randn(4, 3), RNG.randn(6, 4)
    loss, dW = losses.svm_loss_naive(W, X, LABELS, 0.1)
    ported = port(losses.svm_loss_naive)
    with jax.enable_x64(True):
        # Under jit the margins are traced: both branches run, merged with where.
        value, jax_dW = jit(lambda w: ported(w, X, LABELS, 0.1))(W)
        grad = jit(jax.grad(lambda w: ported(w, X, LABELS, 0.1)[0]))(W)
    np.testing.assert_allclose(value, loss, rtol=1e-12)
    np.testing.assert_allclose(jax_dW, dW, rtol=1e-12, atol=1e-14)  # the `dW[:, j] += X[i]`
    np.testing.assert_allclose(grad, dW, rtol=1e-9, atol=1e-12)


def _data_for_nets():
    rng = np.random.RandomState(2)
    return rng.randn(5, 4), np.array([0, 1, 2, 1, 0])


def test_two_layer_net_loss_through_self_params():
    X, y = _data_for_nets()
    net = nets.TwoLayerNet()
    loss, grads = net.loss(X, y)
    params = net.params

    def cost(p):
        net.params = p
        return net.loss(X, y)[0]

    with jax.enable_x64(True):
        ported = port(cost)
        jax.make_jaxpr(ported)(dict(params))
        value, autodiff = jit(jax.value_and_grad(ported))(dict(params))
        method_value = jit(lambda X: port(net.loss)(X, y)[0])(X)
    assert net.params is params  # put back after every ported run
    np.testing.assert_allclose([value, method_value], [loss, loss], rtol=1e-12)
    for key in grads:
        np.testing.assert_allclose(autodiff[key], grads[key], rtol=1e-9, atol=1e-12)


def test_network_with_lists_of_weights():
    rng = np.random.RandomState(3)
    net = nets.Network([3, 4, 2])
    x, y = rng.randn(3, 1), rng.randn(2, 1)
    nabla_b, nabla_w = net.backprop(x, y)
    weights, biases = net.weights, net.biases

    def cost(p):
        net.weights, net.biases = p["w"], p["b"]
        return net.cost(x, y)

    params = {"w": list(weights), "b": list(biases)}
    with jax.enable_x64(True):
        jax.make_jaxpr(port(cost))(params)
        autodiff = jit(jax.grad(port(cost)))(params)
    assert net.weights is weights and net.biases is biases
    for got, want in zip(autodiff["w"] + autodiff["b"], nabla_w + nabla_b):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_net_of_layer_objects():
    X, t = _data_for_nets()
    net = nets.LayerNet([4, 5, 3, 3])
    loss, grads = net.loss(X, t), net.gradient(X, t)
    params = dict(net.params)
    relu_mask = net.layers["Relu1"].mask

    def cost(p):
        net.set_params(p)
        return net.loss(X, t)

    with jax.enable_x64(True):
        jax.make_jaxpr(port(cost))(params)
        value, autodiff = jit(jax.value_and_grad(port(cost)))(params)
    assert net.layers["Relu1"].mask is relu_mask
    assert net.layers["Affine1"].W is params["W1"]
    np.testing.assert_allclose(value, loss, rtol=1e-12)
    for key in grads:
        np.testing.assert_allclose(autodiff[key], grads[key], rtol=1e-9, atol=1e-12)


# ---- The user's world is left as found --------------------------------------------------------


class _CachedLayer:
    """A layer that keeps what its backward needs on itself, as course code does."""

    def __init__(self, w):
        self.w = w
        self.cache = None

    def forward(self, x):
        self.cache = (x, self.w)
        return np.tanh(x @ self.w)

    def backward(self, dout):
        x, w = self.cache
        dz = dout * (1 - np.tanh(x @ w) ** 2)
        return dz @ w.T


def test_a_layer_keeps_its_numpy_cache_after_a_traced_port():
    rng = np.random.RandomState(4)
    layer = _CachedLayer(rng.randn(3, 2))
    x = rng.randn(5, 3)
    out = layer.forward(x)
    expected = layer.backward(np.ones_like(out))
    with jax.enable_x64(True):
        jax.make_jaxpr(port(layer.forward))(x)
        jax.grad(lambda x: jnp.sum(port(layer.forward)(x)))(x)
    assert layer.cache[0] is x  # not a tracer: the user's own backward still works
    np.testing.assert_allclose(layer.backward(np.ones_like(out)), expected)


def test_module_level_caches_are_put_back():
    rng = np.random.RandomState(5)
    X, Y = rng.randn(3, 6), (rng.rand(1, 6) > 0.5).astype(float)
    params = {
        "W1": rng.randn(4, 3),
        "b1": rng.randn(4, 1),
        "W2": rng.randn(1, 4),
        "b2": rng.randn(1, 1),
    }
    nets.forward_with_global_cache(X, Y, params)
    expected = nets.backward_from_global_cache(X, Y, params)
    before = dict(nets.CACHE)
    with jax.enable_x64(True):
        autodiff = jit(jax.grad(port(nets.forward_with_global_cache), argnums=2))(X, Y, params)
    assert all(nets.CACHE[k] is v for k, v in before.items())
    for key in expected:
        np.testing.assert_allclose(autodiff[key], expected[key], rtol=1e-9)
        np.testing.assert_allclose(
            nets.backward_from_global_cache(X, Y, params)[key], expected[key]
        )


def test_dicts_passed_in_and_globals_written_are_put_back():
    bn_param = {"mode": "train"}
    x, gamma, beta = RNG.randn(6, 4), np.ones(4), np.zeros(4)
    with jax.enable_x64(True):
        jax.make_jaxpr(port(lambda x: layers.batchnorm_forward(x, gamma, beta, bn_param)[0]))(x)
    assert bn_param == {"mode": "train"}  # no running statistics holding tracers
    buffer, log = assignments.BUFFER, list(assignments.LOG)
    with jax.enable_x64(True):
        jax.make_jaxpr(port(assignments.global_target))(np.ones(3))
    assert assignments.BUFFER is buffer and assignments.LOG == log


# ---- Nothing stale, nothing called more than asked --------------------------------------------

DATA = np.array([1.0, 2.0])


def _global_cost(w):
    return np.sum(DATA * w)


def test_changed_data_is_seen():
    global DATA
    data, w = DATA, np.array([0.5, -1.0])
    local = np.array([3.0, 4.0])
    closure = lambda w: np.sum(local * w)  # noqa: E731
    ported_global, ported_closure = port(_global_cost), port(closure)
    with jax.enable_x64(True):
        assert float(ported_global(w)) == -1.5 and float(ported_closure(w)) == -2.5
        try:
            DATA += 1.0  # in place
            local += 1.0
            assert float(ported_global(w)) == -2.0 and float(ported_closure(w)) == -3.0
            DATA = np.array([10.0, 0.0])  # rebound
            assert float(ported_global(w)) == 5.0
            assert float(jit(port(_global_cost))(w)) == 5.0
        finally:
            DATA = data


def test_the_function_is_called_once_per_call():
    calls = []

    def cost(w):
        calls.append(1)
        return np.sum(w**2)

    ported = port(cost)
    assert calls == []  # porting calls nothing
    with jax.enable_x64(True):
        jax.make_jaxpr(ported)(np.ones(2))
    ported(np.ones(2))
    assert cost(np.ones(2)) == 2.0
    assert len(calls) == 1  # the ported runs' appends were put back; the NumPy call's stays


def test_classes_built_inside_the_cost_are_ported():
    class Affine:
        def __init__(self, w):
            self.w = np.asarray(w)
            self.scale = np.sqrt(np.sum(self.w**2))

        def __call__(self, x):
            return x @ self.w / self.scale

    def cost(w):
        return np.sum(np.tanh(Affine(w)(np.ones((2, 3)))))

    w = RNG.randn(3, 2)
    with jax.enable_x64(True):
        jax.make_jaxpr(port(cost))(w)
        np.testing.assert_allclose(jit(port(cost))(w), cost(w), rtol=1e-12)


def test_costs_in_test_modules_with_asserts_are_rewritten():
    # pytest rewrote this module's asserts; the port still finds this function's source.
    def cost(w):
        assert w.ndim == 1, "a vector"
        out = np.zeros(2)
        out[0] = np.sum(w**2)
        return np.sum(out)

    with jax.enable_x64(True):
        np.testing.assert_allclose(jit(port(cost))(np.array([1.0, 2.0])), 5.0)


def test_functions_passed_to_library_calls_are_ported():
    def act(z):
        z = z.copy()
        z[z < 0] = 0
        return z

    def cost(w):
        parts = list(map(act, [w, -w]))
        return functools.reduce(np.dot, parts) + sum(map(np.sum, parts))

    w = np.array([1.0, -2.0, 3.0])
    with jax.enable_x64(True):
        np.testing.assert_allclose(jit(port(cost))(w), cost(w), rtol=1e-12)


def test_rnn_loss_over_a_sequence():
    rng = np.random.RandomState(6)
    hidden, vocab = 4, 5
    params = {
        "Wxh": 0.1 * rng.randn(hidden, vocab),
        "Whh": 0.1 * rng.randn(hidden, hidden),
        "Why": 0.1 * rng.randn(vocab, hidden),
        "bh": np.zeros((hidden, 1)),
        "by": np.zeros((vocab, 1)),
    }
    inputs, targets, hprev = [0, 1, 2, 3, 1], [1, 2, 3, 4, 0], np.zeros((hidden, 1))
    loss, *grads, _ = rnn.rnn_loss(inputs, targets, hprev, **params)

    def cost(p):
        return rnn.rnn_loss(inputs, targets, hprev, **p)[0]

    with jax.enable_x64(True):
        value, autodiff = jit(jax.value_and_grad(port(cost)))(params)
    np.testing.assert_allclose(value, loss, rtol=1e-12)
    for key, want in zip(params, grads):
        np.testing.assert_allclose(autodiff[key], want, rtol=1e-9, atol=1e-12)


def test_layers_that_leave_their_output_on_themselves():
    X, y = _data_for_nets()
    dense1, relu, dense2 = nets.Dense(4, 5), nets.ActivationReLU(), nets.Dense(5, 3, seed=1)
    head = nets.SoftmaxCrossEntropy()

    def cost(p):
        dense1.weights, dense1.biases, dense2.weights, dense2.biases = p
        dense1.forward(X)
        relu.forward(dense1.output)
        dense2.forward(relu.output)
        return head.forward(dense2.output, y)

    params = (dense1.weights, dense1.biases, dense2.weights, dense2.biases)
    loss = cost(params)
    head.backward(head.output, y)
    dense2.backward(head.dinputs)
    relu.backward(dense2.dinputs)
    dense1.backward(relu.dinputs)
    with jax.enable_x64(True):
        value, autodiff = jit(jax.value_and_grad(port(cost)))(params)
    assert type(dense1.output) is np.ndarray  # put back after the traced run
    np.testing.assert_allclose(value, loss, rtol=1e-12)
    expected = (dense1.dweights, dense1.dbiases, dense2.dweights, dense2.dbiases)
    for got, want in zip(autodiff, expected):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


#: A check typed at a plain ``python`` prompt: the cost and the gradient have no source file.
_TYPED_AT_A_PROMPT = (
    "import jaxcheck as jc\n"
    "from jaxcheck import lesson\n"
    "X, Y, p = lesson.gradient_check_n_test_case()\n"
    "cost = lambda q: lesson.forward_propagation_n(X, Y, q)\n"
    "bug = lambda q: lesson.backward_propagation_n_buggy(X, Y, cost(q)[1])\n"
    "r = jc.check(cost, bug, p)\n"
)


def test_code_without_source_still_ports_the_functions_it_calls(tmp_path):
    # A cost typed at a plain `python` prompt (or `python -c`) has no source to rewrite: the
    # functions of the user's modules that it calls are ported all the same.
    import subprocess
    import sys

    script = _TYPED_AT_A_PROMPT + "print(r.twin, r.failing)\n"
    out = subprocess.run(
        [sys.executable, "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "ported ['b1', 'W2']"


def test_code_compiled_from_stdin_still_ports_the_functions_it_calls():
    # The same, in this process: code compiled under the name "<stdin>" has no source either
    # (the subprocess above, which really reads stdin, is marked slow).
    script = _TYPED_AT_A_PROMPT
    namespace = {"__name__": "__main__"}
    exec(compile(script, "<stdin>", "exec"), namespace)
    with pytest.raises(OSError):
        inspect.getsource(namespace["cost"])
    assert (namespace["r"].twin, namespace["r"].failing) == ("ported", ["b1", "W2"])


# ---- Idioms of RNN, LSTM and loss code (issue 19): checked with no JAX written -------------

try:
    from tests.realistic import branchy, lstm
except ImportError:
    from realistic import branchy, lstm


def _three_way(report):
    """The port gave the twin: three opinions, not a two-way check."""
    assert report.twin == "ported", report.twin_error
    assert "two-way" not in str(report)
    return report


def _lstm_case(bug=None, seed=0):
    rng = np.random.RandomState(seed)
    n_x, n_a, m = 3, 4, 5
    xt = rng.randn(n_x, m)
    params = {f"W{g}": 0.5 * rng.randn(n_a, n_a + n_x) for g in "fico"}
    params.update({f"b{g}": rng.randn(n_a, 1) for g in "fico"})
    params["a_prev"], params["c_prev"] = rng.randn(n_a, m), rng.randn(n_a, m)
    params["Wf"][0, 0] = 40.0  # a gate far in the saturated range: both sides of the sigmoid
    da, dc = rng.randn(n_a, m), rng.randn(n_a, m)

    def fn(p):
        weights = {k: v for k, v in p.items() if k[0] in "Wb"}
        a_next, c_next, cache = lstm.lstm_cell_forward(xt, p["a_prev"], p["c_prev"], weights)
        cost = np.sum(a_next * da) + np.sum(c_next * dc)
        grads = lstm.lstm_cell_backward(da, dc, cache, bug=bug)
        return cost, {k: grads[k] for k in p}

    return fn, params


def test_lstm_cell_with_gate_concatenation_is_checked_three_way():
    fn, params = _lstm_case()
    report = _three_way(jaxcheck.check(fn, None, params))
    assert report.ok, str(report)


@pytest.mark.parametrize("bug, leaf", [("dbi", "bi"), ("da_prev", "a_prev")])
def test_lstm_cell_planted_bugs_are_localised(bug, leaf):
    fn, params = _lstm_case(bug)
    report = _three_way(jaxcheck.check(fn, None, params))
    assert report.failing == [leaf], str(report)


JOINS = [
    (np.concatenate, {"axis": 0}, (3, 5)),
    (np.concatenate, {"axis": 1}, (4, 2)),
    (np.vstack, {}, (3, 5)),
    (np.hstack, {}, (4, 2)),
    (np.stack, {"axis": 2}, (4, 5)),
    (np.column_stack, {}, (4, 1)),
]


@pytest.mark.parametrize("join, options, shape", JOINS, ids=lambda v: getattr(v, "__name__", ""))
def test_joining_a_traced_value_with_plain_data_of_another_shape(join, options, shape):
    data = np.arange(float(np.prod(shape))).reshape(shape)

    def cost(p):
        a = np.tanh(p["a"])
        return np.sum(join((a, data), **options) ** 2) + np.sum(join([data, a], **options))

    params = {"a": np.linspace(-1, 1, 20).reshape(4, 5)}
    with jax.enable_x64(True):
        np.testing.assert_allclose(jit(port(cost))(params), cost(params), rtol=1e-12)


def test_a_join_numpy_rejects_too_is_not_blamed_on_jax_numpy():
    def cost(w):
        return np.sum(np.concatenate((w, np.ones((2, 2))), axis=1))

    with pytest.raises(PortError, match="NumPy rejects arguments of these shapes as well"):
        jit(port(cost))(np.ones((3, 2)))


def _rnn_case(bug=False):
    rng = np.random.RandomState(3)
    n_x, n_a, m, T = 3, 5, 4, 6
    x = rng.randn(n_x, m, T)
    params = {
        "Wax": 0.5 * rng.randn(n_a, n_x),
        "Waa": 0.5 * rng.randn(n_a, n_a),
        "ba": rng.randn(n_a, 1),
        "a0": rng.randn(n_a, m),
    }
    da = rng.randn(n_a, m, T)

    def fn(p):
        weights = {k: p[k] for k in ("Wax", "Waa", "ba")}
        states, caches = lstm.rnn_forward(x, p["a0"], weights)
        grads = lstm.rnn_backward(da, x, p["a0"], weights, caches, bug=bug)
        return np.sum(states * da), {k: grads[k] for k in p}

    return fn, params


def test_vanilla_rnn_over_several_steps():
    fn, params = _rnn_case()
    assert _three_way(jaxcheck.check(fn, None, params)).ok
    fn, params = _rnn_case(bug=True)  # through-time gradient forgotten: every leaf is wrong
    report = _three_way(jaxcheck.check(fn, None, params))
    assert set(report.failing) == set(params), str(report)


def test_stable_sigmoid_with_masked_assignment():
    w = np.array([-800.0, -30.0, -1.5, 0.0, 0.7, 25.0, 900.0])
    d = np.linspace(-1, 1, w.size)

    def fn(p):
        s = lstm.sigmoid(p["w"])
        return np.sum(s * d), {"w": s * (1 - s) * d}

    assert _three_way(jaxcheck.check(fn, None, {"w": w})).ok
    with jax.enable_x64(True):
        grad = jit(jax.grad(lambda v: port(fn)({"w": v})[0]))(w)
    assert np.all(np.isfinite(grad))  # exp(800) on the side not taken does not leak


def test_masked_assignment_with_the_same_mask_expression():
    def cost(w):
        out = np.zeros_like(w)
        out[w > 0] = np.log(w[w > 0])
        out[~(w > 0)] += 2 * w[~(w > 0)]
        return np.sum(out * w)

    w = np.array([0.5, -1.0, 2.0, 0.0])
    with jax.enable_x64(True):
        np.testing.assert_allclose(jit(port(cost))(w), cost(w), rtol=1e-12)
        grad = jit(jax.grad(port(cost)))(w)
    np.testing.assert_allclose(grad, [np.log(0.5) + 1, -4.0, np.log(2.0) + 1, 0.0])


def test_a_selection_by_another_mask_names_the_line():
    def cost(w):
        z = np.zeros_like(w)
        z[w > 0] = w[w > 1]
        return np.sum(z)

    with pytest.raises(PortError, match=r"z\[w > 0\] = w\[w > 1\]") as info:
        jit(port(cost))(np.ones(3))
    assert "another mask" in str(info.value)


def _linear_data(seed=4, n=12, d=3):
    rng = np.random.RandomState(seed)
    return rng.randn(n, d), rng.randn(n), rng.randn(d)


@pytest.mark.parametrize("loss", ["abs", "hinge", "huber"])
def test_losses_with_branches_and_masked_reductions(loss):
    X, y, w = _linear_data()
    if loss == "abs":
        good = lambda p: branchy.abs_loss(p["w"], X, y)  # noqa: E731
        bad = lambda p: branchy.abs_loss(p["w"], X, y, bug=True)  # noqa: E731
    elif loss == "hinge":
        labels = np.sign(y)
        good = lambda p: branchy.hinge_loss(p["w"], X, labels, 0.1)  # noqa: E731
        bad = lambda p: (good(p)[0], 2 * good(p)[1])  # noqa: E731
    else:
        good = lambda p: branchy.huber_loss(p["w"], X, y)  # noqa: E731
        bad = lambda p: branchy.huber_loss(p["w"], X, y, bug=True)  # noqa: E731
    assert _three_way(jaxcheck.check(good, None, {"w": w})).ok
    assert _three_way(jaxcheck.check(bad, None, {"w": w})).failing == ["w"]


def test_svm_naive_with_if_margin_is_checked_three_way():
    W, X = 0.1 * RNG.randn(4, 3), RNG.randn(6, 4)
    good = lambda p: losses.svm_loss_naive(p["W"], X, LABELS, 0.1)  # noqa: E731
    assert _three_way(jaxcheck.check(good, None, {"W": W})).ok
    bad = lambda p: (good(p)[0], good(p)[1] * 1.5)  # noqa: E731
    assert _three_way(jaxcheck.check(bad, None, {"W": W})).failing == ["W"]


def test_a_branch_guarded_against_log_of_zero_keeps_the_gradient_finite():
    w = np.array([0.8, -0.5, 1.3, -2.0, 0.4])  # two entries give p = 0: log(0) not taken
    with jax.enable_x64(True):
        grad = jit(jax.grad(lambda v: port(branchy.entropy)(v)[0]))(w)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, branchy.entropy(w)[1], rtol=1e-10, atol=1e-12)
    assert _three_way(jaxcheck.check(lambda p: branchy.entropy(p["w"]), None, {"w": w})).ok
    bad = lambda p: branchy.entropy(p["w"], bug=True)  # noqa: E731
    assert _three_way(jaxcheck.check(bad, None, {"w": w})).failing == ["w"]


def test_asserts_on_traced_values_do_not_stop_the_port():
    def cost(w):
        p = 1 / (1 + np.exp(-w))
        assert np.all(p > 0) and not np.any(np.isnan(p)), "probabilities"
        assert p.sum() < 0 or w.shape == (3,)
        return np.sum(np.log(p))

    def wrong_shape(w):
        assert w.shape == (2,), "expects two weights"
        return np.sum(w)

    with jax.enable_x64(True):
        np.testing.assert_allclose(jit(port(cost))(np.ones(3)), cost(np.ones(3)))
        with pytest.raises(PortError, match="expects two weights"):
            jit(port(wrong_shape))(np.ones(3))


def test_branches_that_do_more_than_assign_keep_the_error():
    def cost(w):
        total = 0.0
        for v in w:
            if v > 0:
                total += v
                break
        return total

    with pytest.raises(PortError, match=r"if v > 0:") as info:
        jit(port(cost))(np.ones(3))
    assert "only assign variables" in str(info.value)


def test_an_if_on_plain_values_runs_as_written():
    seen = types.SimpleNamespace(calls=())  # a library object: the port does not put it back

    def record(name, value):
        seen.calls += (name,)
        return value

    def cost(w, flag):
        if flag:
            out = record("then", w * 2)
        else:
            out = record("else", w)
        return np.sum(out)

    with jax.enable_x64(True):
        assert float(jit(port(cost), static_argnums=1)(np.ones(2), True)) == 4.0
        assert port(cost)(np.ones(2), False) == 2.0
    assert seen.calls == ("then", "else")  # one branch per call: the other never ran


def test_a_long_elif_chain_ports_without_blowing_up(tmp_path):
    # Each branch is written once in the rewrite: 25 nested elifs do not make 2**25 copies.
    source = ["def piecewise(w):", "    out = 0.0", "    for v in w:"]
    for k in range(25):
        keyword = "if" if k == 0 else "elif"
        source += [f"        {keyword} v < {k / 8 - 1.5}:", f"            out += {k} * v"]
    source += ["        else:", "            out -= v", "    return out"]
    path = tmp_path / "generated_elif.py"
    path.write_text("\n".join(source) + "\n")
    spec = importlib.util.spec_from_file_location("port_generated_elif", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    w = np.linspace(-2.0, 2.0, 5)
    with jax.enable_x64(True):
        value = jit(port(module.piecewise))(w)
    np.testing.assert_allclose(value, module.piecewise(w), rtol=1e-12)


VIEW_DATA = np.random.RandomState(5).randn(3, 4)


def _view_cost(p):
    h = np.tanh(p["W"] @ VIEW_DATA)
    top = h[0]  # a view: in NumPy, `top *= 2` doubles the first row of h
    top *= 2
    return np.sum(h**2)


def _view_grad(p):
    h = np.tanh(p["W"] @ VIEW_DATA)
    scale = np.ones((h.shape[0], 1))
    scale[0] = 2
    dz = 2 * (h * scale) * scale * (1 - h**2)
    return {"W": dz @ VIEW_DATA.T}


def test_a_cost_writing_through_a_view_names_the_line_and_the_ways_out():
    params = {"W": np.random.RandomState(6).randn(2, 3)}
    with pytest.raises(jaxcheck.ReimplementationError) as info:
        jaxcheck.check(_view_cost, _view_grad, params)
    message = str(info.value)
    assert f"line {_view_cost.__code__.co_firstlineno + 3}: `top *= 2`" in message
    assert "writes into a view" in message and "h[0].copy()" in message
    assert "jax_cost=" in message and 'twin="none"' in message
    report = jaxcheck.check(_view_cost, _view_grad, params, twin="none")
    assert report.ok and report.twin == "none"


def test_conditions_with_and_or_not_are_if_converted():
    def cost(w, y):
        loss = 0.0
        for i in range(w.shape[0]):
            if w[i] > 0 and y[i] == 1:
                loss += w[i] ** 2
            elif not w[i] > -1 or y[i] == 2:
                loss -= w[i]
            else:
                loss += 3 * w[i]
        return loss

    w = np.array([0.5, 0.5, -2.0, -0.5, -0.5, 1.5])
    y = np.array([1, 0, 0, 0, 2, 1])

    def clipped(w):
        total = 0.0
        for v in w:
            assert -10 < v < 10, "weights in range"
            if -1 < v <= 1:
                total += v**2
            else:
                total += 2 * abs(v) - 1
        return total

    with jax.enable_x64(True):
        np.testing.assert_allclose(jit(port(clipped))(w), clipped(w), rtol=1e-12)
    with jax.enable_x64(True):
        np.testing.assert_allclose(jit(port(cost))(w, y), cost(w, y), rtol=1e-12)
        grad = jit(jax.grad(port(cost)))(w, y)
    np.testing.assert_allclose(grad, [1.0, 3.0, -1.0, 3.0, -1.0, 3.0])


def test_branches_assigning_into_a_dict_of_gradients_merge_per_key():
    def svm(W, X, y):
        grads = {"W": np.zeros_like(W)}
        loss = 0.0
        for i in range(X.shape[0]):
            scores = X[i] @ W
            for j in range(W.shape[1]):
                margin = scores[j] - scores[y[i]] + 1
                if j != y[i] and margin > 0:
                    loss += margin
                    grads["W"][:, j] += X[i]
                    grads["W"][:, y[i]] -= X[i]
        return loss, grads

    W, X = 0.1 * RNG.randn(4, 3), RNG.randn(6, 4)
    report = _three_way(jaxcheck.check(lambda p: svm(p["W"], X, LABELS), None, {"W": W}))
    assert report.ok, str(report)


def test_branches_that_cannot_be_merged_name_the_line():
    def cost(w):
        picked = []
        for v in w:
            if v > 0:
                picked = picked + [v]
        return np.sum(w) + len(picked)

    with pytest.raises(PortError, match=r"if v > 0:") as info:
        jit(port(cost))(np.ones(3))
    assert "cannot merge `picked`" in str(info.value) and "np.where" in str(info.value)


MASK_DATA = np.array([1.0, 2.0, 3.0, 4.0])


def _masked_reductions(w):
    m = w > 0
    a = MASK_DATA[m] * w[m]  # data selected by a traced mask, times the parameters
    b = np.float64(2.0) * w[m] + 1
    rows = np.tile(w[:, None], (1, 3)) * np.arange(1.0, 4.0)
    r = rows[m]  # whole rows selected
    return (
        np.sum(a)
        + b.sum()
        + np.sum(r.sum(axis=0) ** 2)
        + r.mean(axis=1).sum()
        + np.max(w[m] ** 2)
        + np.min(w[~m])
        + np.mean(w[m] ** 2) * w[m].size
    )


def test_reductions_of_masked_selections_port():
    w = np.array([0.5, -1.0, 2.0, -0.1])
    with jax.enable_x64(True):
        np.testing.assert_allclose(
            jit(port(_masked_reductions))(w), _masked_reductions(w), rtol=1e-12
        )
        grad = jit(jax.grad(port(_masked_reductions)))(w)
    np.testing.assert_allclose(
        grad,
        _numerical_gradient(lambda p: _masked_reductions(p["w"]), {"w": w})["w"],
        rtol=1e-6,
        atol=1e-8,
    )


def _returning_forward(x, w):
    out = x @ w
    if np.sum(out) > 0:
        return 2 * out, (x, w, 2.0)
    return out, (x, w, 1.0)


def _returning_backward(dout, cache):
    x, w, k = cache
    return k * dout @ w.T, k * x.T @ dout


def test_check_layer_advice_names_jax_forward_not_jax_cost():
    x, w = RNG.randn(3, 4), RNG.randn(4, 2)
    report = jaxcheck.check_layer(_returning_forward, _returning_backward, x, w)
    assert report.ok and report.twin == "none"
    text = str(report)
    assert "jax_forward=" in text and "jax_cost=" not in text and "port.." not in text
    with pytest.raises(PortError) as info:
        jaxcheck.check_layer(_returning_forward, _returning_backward, x, w, twin="required")
    assert "jax_forward=" in info.value.hint and "jax_cost=" not in str(info.value)


def test_the_two_way_note_of_check_has_no_doubled_period():
    x, w = RNG.randn(3, 4), RNG.randn(4, 2)

    def fn(p):
        out, cache = _returning_forward(x, p["w"])
        return np.sum(out), {"w": _returning_backward(np.ones_like(out), cache)[1]}

    text = str(jaxcheck.check(fn, None, {"w": w}))
    assert "two-way" in text and "jax_cost=" in text and "port.." not in text
