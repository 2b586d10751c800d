"""Hostile inputs at every door: each gets a verdict, or a JaxcheckError that says what to do."""

from __future__ import annotations

import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck._engine.keywords import reject_unknown

try:
    from tests.compiled import jit
except ImportError:  # pytest run without the repository root on sys.path: tests/ is on it
    from compiled import jit

RNG = np.random.default_rng(7)
X = RNG.standard_normal((6, 3))
Y = RNG.standard_normal(6)


def init():
    return {"W": RNG.standard_normal(3) * 0.5, "b": np.array(0.1)}


def mse(p):
    r = X @ p["W"] + p["b"] - Y
    return 0.5 * np.mean(r**2)


def mse_grad(p):
    r = X @ p["W"] + p["b"] - Y
    return {"W": X.T @ r / len(Y), "b": np.array(r.mean())}


def mse_loss_and_grads(p):
    """A course solver's ``loss``: the loss and the gradients from one pass."""
    return mse(p), mse_grad(p)


# --------------------------------------------------------------------- what fn and cost return


def test_loss_and_grads_in_the_right_order_pass_and_a_wrong_one_fails():
    assert jc.check(mse_loss_and_grads, None, init()).ok

    def wrong(p):
        loss, g = mse_loss_and_grads(p)
        return loss, {"W": g["W"], "b": 2 * g["b"]}

    assert jc.check(wrong, None, init()).failing == ["b"]


def test_grads_returned_before_the_loss_are_named_as_swapped():
    with pytest.raises(jc.InputError, match=r"item 0 .* is a dict with keys \['W', 'b'\]") as err:
        jc.check(lambda p: (mse_grad(p), mse(p)), None, init())
    assert "it returned (grads, loss). Return (loss, grads)" in str(err.value)


def test_a_forward_that_returns_its_cache_is_told_to_pass_grad():
    def forward(p):  # (loss, cache), as a layer's forward returns it
        z = X @ p["W"] + p["b"]
        return 0.5 * np.mean((z - Y) ** 2), (z, X)

    with pytest.raises(jc.InputError, match="looks like a cache") as err:
        jc.check(forward, None, init())
    assert "pass grad=" in str(err.value).lower()

    def forward_dict(p):
        z = X @ p["W"] + p["b"]
        return 0.5 * np.mean((z - Y) ** 2), {"z": z, "X": X, "Y": Y}

    with pytest.raises(jc.InputError, match="looks like a cache"):
        jc.check(forward_dict, None, init())


def test_cost_and_grad_passed_in_each_others_place_are_named():
    with pytest.raises(jc.InputError, match="cost and grad are swapped"):
        jc.check(mse_grad, mse, init())


def test_a_cost_that_returns_a_gradient_like_pytree_is_not_read_as_a_loss():
    with pytest.raises(jc.InputError, match="a pytree where the scalar loss should be"):
        jc.check(mse_grad, mse_grad, init())


def test_cost_returning_loss_and_extras_still_works():
    assert jc.check(lambda p: (mse(p), {"z": X @ p["W"]}), mse_grad, init()).ok


# ------------------------------------------------------------------ gradients of other shapes


@pytest.mark.parametrize("kind", [tuple, list])
def test_a_sequence_returned_for_dict_params_says_return_a_dict(kind):
    def grad(p):
        g = mse_grad(p)
        return kind([g["W"], g["b"]])

    with pytest.raises(jc.InputError, match="return a dict keyed like params") as err:
        jc.check(mse, grad, init())
    assert "'W'" in str(err.value)


def layers_params():
    return [RNG.standard_normal(3) * 0.5, np.array(0.1)]


def layers_cost(p):
    return mse({"W": p[0], "b": p[1]})


def layers_grad(p):
    g = mse_grad({"W": p[0], "b": p[1]})
    return [g["W"], g["b"]]


@pytest.mark.parametrize(
    "params_kind, grad_kind", [(list, tuple), (tuple, list)], ids=["list-tuple", "tuple-list"]
)
def test_a_tuple_for_list_params_or_a_list_for_tuple_params_is_matched_by_position(
    params_kind, grad_kind
):
    params = params_kind(layers_params())
    assert jc.check(layers_cost, lambda p: grad_kind(layers_grad(p)), params).ok
    bad = jc.check(layers_cost, lambda p: grad_kind(g * 1.5 for g in layers_grad(p)), params)
    assert sorted(bad.failing) == ["0", "1"]


def test_nested_lists_of_layer_tuples_are_matched_by_position():
    params = [(RNG.standard_normal(3), np.array(0.2)), (RNG.standard_normal(3), np.array(-0.1))]

    def cost(p):
        return sum(mse({"W": w, "b": b}) for w, b in p)

    def grad(p):  # lists where params have tuples
        return [[mse_grad({"W": w, "b": b})[k] for k in ("W", "b")] for w, b in p]

    assert jc.check(cost, grad, params).ok


# ----------------------------------------------------------------------------- deep pytrees


def deep(leaf, levels, kind="dict"):
    for _ in range(levels):
        leaf = {"inner": leaf} if kind == "dict" else [leaf]
    return leaf


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_params_nested_thousands_deep_are_an_input_error(kind):
    params = deep(np.ones(2), 5000, kind)
    with pytest.raises(jc.InputError, match="params nests containers more than 200 levels"):
        jc.check(lambda p: 0.0, lambda p: p, params)


def test_a_gradient_or_cost_nested_thousands_deep_is_an_input_error():
    with pytest.raises(jc.InputError, match=r"grad\(params\) nests containers"):
        jc.check(mse, lambda p: deep(mse_grad(p), 5000, "list"), init())
    with pytest.raises(jc.InputError, match=r"cost\(params\) nests containers"):
        jc.check(lambda p: deep(mse(p), 5000, "list"), mse_grad, init())


def test_a_sensibly_nested_tree_passes_and_a_cycle_is_still_named():
    params = deep({"W": RNG.standard_normal(3) * 0.5, "b": np.array(0.1)}, 20)

    def unwrap(p):
        for _ in range(20):
            p = p["inner"]
        return p

    assert jc.check(lambda p: mse(unwrap(p)), lambda p: deep(mse_grad(unwrap(p)), 20), params).ok
    looped = {"W": np.ones(3)}
    looped["self"] = [looped]
    with pytest.raises(jc.InputError, match="contains itself at 'self/0'"):
        jc.check(lambda p: 0.0, lambda p: p, looped)


# ------------------------------------------------------------------------ unknown options


def test_reject_unknown_names_the_door_and_the_nearest_option():
    with pytest.raises(jc.InputError, match=r"check_hvp\(\) got an unknown option 'rtl'; did you"):
        reject_unknown("check_hvp", {"rtl": 1}, ["rtol", "eps"])
    with pytest.raises(jc.InputError, match=r"got an unknown option 'banana'\.$"):
        reject_unknown("check_hvp", ["banana"], ["rtol", "eps"])
    reject_unknown("check_hvp", ["rtol"], ["rtol", "eps"])  # a known one passes


def affine_forward(x, w, b):
    return x @ w + b, (x, w)


def affine_backward(dout, cache):
    x, w = cache
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


class Line:
    def __init__(self):
        self.params = {"W": RNG.standard_normal(3) * 0.5, "b": np.array(0.1)}

    def loss(self):
        return mse(self.params), mse_grad(self.params)


@pytest.mark.parametrize(
    "door, call",
    [
        ("check", lambda **o: jc.check(mse, mse_grad, init(), **o)),
        ("assert_gradients", lambda **o: jc.assert_gradients(mse, mse_grad, init(), **o)),
        (
            "check_layer",
            lambda **o: jc.check_layer(
                affine_forward, affine_backward, X, np.ones((3, 2)), np.zeros(2), **o
            ),
        ),
        (
            "assert_layer",
            lambda **o: jc.assert_layer(
                affine_forward, affine_backward, X, np.ones((3, 2)), np.zeros(2), **o
            ),
        ),
        ("check_object", lambda **o: jc.check_object(Line(), Line.loss, attributes="params", **o)),
    ],
)
def test_every_door_names_itself_and_the_option_it_does_not_know(door, call):
    with pytest.raises(jc.InputError, match=rf"^{door}\(\) got an unknown option 'rtl'; did you"):
        call(rtl=1e-6)
    with pytest.raises(jc.InputError, match=rf"^{door}\(\) got an unknown option 'methd'"):
        call(methd="sample")
    assert call(rtol=1e-6).ok  # the options the door passes on are known


# ----------------------------------------------------- the user's JAX config is not jaxcheck's


@pytest.fixture
def rank_promotion_raises():
    import jax

    before = jax.config.jax_numpy_rank_promotion
    jax.config.update("jax_numpy_rank_promotion", "raise")
    yield
    jax.config.update("jax_numpy_rank_promotion", before)


B = RNG.standard_normal((3, 2))


def tanh_layer_params():
    return {"W": RNG.standard_normal((3, 2)) * 0.5, "b": RNG.standard_normal(2) * 0.1}


def tanh_cost(p):  # NumPy broadcasting (5, 2) + (2,): implicit rank promotion in the port
    z = np.tanh(X @ p["W"] + p["b"])
    return 0.5 * np.sum(z**2)


def tanh_grad(p, factor=1.0):
    z = np.tanh(X @ p["W"] + p["b"])
    dz = z * (1 - z**2)
    return {"W": X.T @ dz, "b": factor * dz.sum(axis=0)}


@pytest.mark.parametrize("method", ["full", "sample", "directional"])
def test_check_works_when_the_user_makes_rank_promotion_raise(rank_promotion_raises, method):
    import jax
    import jax.numpy as jnp

    def jax_cost(p):  # the user's own twin, written for their "raise" setting
        return 0.5 * jnp.sum(jnp.tanh(X @ p["W"] + p["b"][None, :]) ** 2)

    for twin in (None, jax_cost):
        good = jc.check(tanh_cost, tanh_grad, tanh_layer_params(), jax_cost=twin, method=method)
        assert good.ok and good.twin in ("ported", "given"), str(good)
        bad = jc.check(
            tanh_cost,
            lambda p: tanh_grad(p, 1.1),
            tanh_layer_params(),
            jax_cost=twin,
            method=method,
        )
        assert bad.failing == ["b"] and bad.autodiff
    assert jax.config.jax_numpy_rank_promotion == "raise"  # left as found


def test_layer_and_object_doors_work_when_rank_promotion_raises(rank_promotion_raises):
    good = jc.check_layer(affine_forward, affine_backward, X, B, np.zeros(2))
    assert good.ok and good.twin == "ported", str(good)

    def half_bias(dout, cache):
        dx, dw, db = affine_backward(dout, cache)
        return dx, dw, db / 2

    assert jc.check_layer(affine_forward, half_bias, X, B, np.zeros(2)).failing == ["b"]

    class Net:
        def __init__(self):
            self.params = tanh_layer_params()

        def loss(self):
            return tanh_cost(self.params), tanh_grad(self.params)

    report = jc.check_object(Net(), Net.loss, attributes="params")
    assert report.ok and report.twin == "ported", str(report)


def _has_door(fn) -> bool:
    return hasattr(fn, "__jaxcheck_options__")


@pytest.mark.skipif(not _has_door(jc.check_hvp), reason="check_hvp does not take @door yet")
def test_check_hvp_works_when_rank_promotion_raises(rank_promotion_raises):
    import jax
    import jax.numpy as jnp

    def jax_cost(p):
        return 0.5 * jnp.sum(jnp.tanh(X @ p["W"] + p["b"][None, :]) ** 2)

    # The user's product, compiled once: op by op, each call would run (and first compile) every
    # primitive of the forward-over-reverse product on its own.
    product = jit(lambda p, v: jax.jvp(jax.grad(jax_cost), (p,), (v,))[1])

    def hvp(p, v):
        return jax.tree.map(np.asarray, product(p, v))

    assert jc.check_hvp(tanh_cost, hvp, tanh_layer_params()).ok


@pytest.mark.skipif(not _has_door(jc.check_rule), reason="check_rule does not take @door yet")
def test_check_rule_works_when_rank_promotion_raises(rank_promotion_raises):
    import jax

    @jax.custom_vjp
    def affine(x, b):
        return x + b

    affine.defvjp(lambda x, b: (x + b, None), lambda _, g: (g, g.sum(axis=0)))
    x, b = RNG.standard_normal((4, 3)), RNG.standard_normal(3)
    assert jc.check_rule(affine, x, b, reference=lambda x, b: x + b[None, :]).ok


# ------------------------------------------------------------------ check_layer and JAX arrays


@pytest.mark.parametrize("position, name", [(0, "x"), (1, "w"), (2, "b")])
def test_check_layer_given_a_jax_array_names_the_argument(position, name):
    import jax.numpy as jnp

    args = [X, B, np.zeros(2)]
    args[position] = jnp.asarray(args[position])
    with pytest.raises(jc.InputError, match=rf"JAX array for forward's argument '{name}'") as err:
        jc.check_layer(affine_forward, affine_backward, *args)
    assert "pass NumPy arrays" in str(err.value)
    args[position] = np.asarray(args[position])  # as the message says
    assert jc.check_layer(affine_forward, affine_backward, *args).ok


# ------------------------------------------------- --json: one JSON object, even at the exit

NOISY = """
import atexit, os, sys
import numpy as np

print("printed at import")
X = np.linspace(-1.0, 1.0, 5)


def _goodbye():
    print("printed by atexit")
    sys.stdout.write("written to sys.stdout at exit\\n")
    sys.stdout.flush()
    os.write(1, b"written to descriptor 1 at exit\\n")


atexit.register(_goodbye)


def cost(p):
    print("printed in cost")
    return float(np.sum(np.sin(p["w"] * X)))


def grad(p):
    return {"w": np.cos(p["w"] * X) * X * FACTOR}


FACTOR = float(os.environ.get("NOISY_FACTOR", "1"))
"""


@pytest.mark.parametrize("factor, code", [("1", 0), ("2", 1)], ids=["correct", "wrong"])
def test_json_stays_one_object_when_the_module_prints_at_exit(tmp_path, factor, code):
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "noisy.py").write_text(NOISY)
    np.savez(tmp_path / "w.npz", w=np.array([0.3, -0.2, 0.5, 0.1, 0.9]))
    module = tmp_path / "noisy.py"
    args = ["check", f"{module}:cost", "--grad", f"{module}:grad"]
    args += ["--params", str(tmp_path / "w.npz"), "--no-progress", "--json"]
    env = dict(os.environ, NOISY_FACTOR=factor)
    result = subprocess.run(
        [sys.executable, "-m", "jaxcheck", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == code, result.stderr
    report = json.loads(result.stdout)  # one object: json.loads refuses anything after it
    assert report["exit_code"] == code and report["ok"] is (code == 0)
    for printed in (
        "printed at import",
        "printed in cost",
        "printed by atexit",
        "written to sys.stdout at exit",
        "written to descriptor 1 at exit",
    ):
        assert printed in result.stderr
        assert printed not in result.stdout
