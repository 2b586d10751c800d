"""check_hvp: a hand-written Hessian-vector (or Gauss-Newton) product judged three ways."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck._engine.doors import product as second_order
from jaxcheck._engine.verdict.evidence import difference_opinions


class TanhNet:
    """A tanh network with squared error, its hand-written Hessian-vector product (Pearlmutter's
    R-operator) and its Gauss-Newton product, with optional bugs."""

    def __init__(self, dtype=np.float64, n_x=3, n_h=4, n_y=2, m=5, seed=0):
        rng = np.random.default_rng(seed)
        self.X = rng.standard_normal((n_x, m)).astype(dtype)
        self.Y = rng.standard_normal((n_y, m)).astype(dtype)
        self.m = m
        self.params = {
            "W1": (rng.standard_normal((n_h, n_x)) / np.sqrt(n_x)).astype(dtype),
            "b1": (0.1 * rng.standard_normal((n_h, 1))).astype(dtype),
            "W2": (rng.standard_normal((n_y, n_h)) / np.sqrt(n_h)).astype(dtype),
            "b2": (0.1 * rng.standard_normal((n_y, 1))).astype(dtype),
        }

    def forward(self, p):
        a1 = np.tanh(p["W1"] @ self.X + p["b1"])
        return a1, p["W2"] @ a1 + p["b2"]

    def cost(self, p):
        return np.sum((self.forward(p)[1] - self.Y) ** 2) / (2 * self.m)

    def hvp(self, p, v, bug=None, gauss_newton=False):
        a1, z2 = self.forward(p)
        s = 1 - a1**2
        ra1 = s * (v["W1"] @ self.X + v["b1"])
        rz2 = v["W2"] @ a1 + p["W2"] @ ra1 + v["b2"]
        dz2 = np.zeros_like(z2) if gauss_newton else (z2 - self.Y) / self.m
        rdz2 = rz2 / self.m
        rda1 = v["W2"].T @ dz2 + p["W2"].T @ rdz2
        rdz1 = rda1 * s - 2 * (p["W2"].T @ dz2) * a1 * ra1
        out = {
            "W1": rdz1 @ self.X.T,
            "b1": np.sum(rdz1, axis=1, keepdims=True),
            "W2": rdz2 @ a1.T + dz2 @ ra1.T,
            "b2": np.sum(rdz2, axis=1, keepdims=True),
        }
        if bug == "b1 twice":
            out["b1"] = 2 * out["b1"]
        if bug == "W2 sign":
            out["W2"] = -out["W2"]
        return out

    def model_output(self, p):
        return p["W2"] @ jnp.tanh(p["W1"] @ self.X + p["b1"]) + p["b2"]

    def loss_of_output(self, out):
        return jnp.sum((out - self.Y) ** 2) / (2 * self.m)

    def jax_cost(self, p):
        return self.loss_of_output(self.model_output(p))


@pytest.fixture(scope="module")
def net():
    return TanhNet()


# --------------------------------------------------------------------------- the Hessian


def test_a_correct_hvp_passes_along_every_basis_vector(net):
    report = jc.check_hvp(net.cost, net.hvp, net.params, jax_cost=net.jax_cost)
    assert report.ok, str(report)
    assert report.method == "full"
    assert list(report.leaves) == ["W1", "W2", "b1", "b2"]
    assert {leaf.status for leaf in report.leaves.values()} == {"ok"}
    assert report.leaves["W1"].checked == 26  # one direction per parameter
    assert report.difference_autodiff < 1e-12
    assert report.difference_fd < 1e-8
    assert str(report).startswith(
        "jaxcheck: Hessian-vector product check along full Hessian (26 basis directions)"
    )
    assert "Hessian-vector product correct" in report.verdict


@pytest.mark.parametrize("directions", [None, 5], ids=["full", "random"])
def test_a_wrong_block_is_localised_to_its_leaf_with_its_factor(net, directions):
    def hvp(p, v):
        return net.hvp(p, v, bug="b1 twice")

    report = jc.check_hvp(net.cost, hvp, net.params, jax_cost=net.jax_cost, directions=directions)
    assert report.failing == ["b1"]
    leaf = report.leaves["b1"]
    assert leaf.factor == pytest.approx(2.0, rel=1e-9)
    assert leaf.difference_fd_autodiff < 1e-8  # the two references agree: hvp is outvoted
    assert "b1: hvp is 2.00× the exact product and finite differences of the gradient" in str(
        report
    )
    for path in ("W1", "W2", "b2"):
        assert report.leaves[path].status == "ok"
    if directions is not None:
        assert report.method == "directional"
        assert leaf.checked == 5


def test_a_sign_error_and_a_formula_error_are_told_apart(net):
    sign = jc.check_hvp(
        net.cost, lambda p, v: net.hvp(p, v, bug="W2 sign"), net.params, jax_cost=net.jax_cost
    )
    assert sign.failing == ["W2"]
    assert "W2: hvp has the wrong sign" in sign.verdict
    # The Gauss-Newton product is not the Hessian: wrong, but by no single factor.
    formula = jc.check_hvp(
        net.cost,
        lambda p, v: net.hvp(p, v, gauss_newton=True),
        net.params,
        jax_cost=net.jax_cost,
    )
    assert "b2" not in formula.failing and formula.failing
    leaf = formula.leaves[formula.failing[0]]
    assert leaf.factor is None
    assert "worst at H[" in leaf.message  # the full Hessian names the entry: row and column


def test_the_twin_is_ported_when_no_jax_cost_is_given(net):
    report = jc.check_hvp(net.cost, net.hvp, net.params, directions=3)
    assert report.ok and report.twin == "ported"


def test_small_models_get_the_full_hessian_and_large_ones_random_directions(net, monkeypatch):
    monkeypatch.setattr(second_order, "FULL_HESSIAN_MAX", 10)
    report = jc.check_hvp(net.cost, net.hvp, net.params, jax_cost=net.jax_cost)
    assert report.method == "directional"
    assert report.directions == second_order.DEFAULT_DIRECTIONS
    forced = jc.check_hvp(net.cost, net.hvp, net.params, jax_cost=net.jax_cost, directions="all")
    assert forced.method == "full" and forced.directions == 26


# --------------------------------------------------------------------------- kinks, precision


def test_a_kink_of_the_gradient_is_not_a_bug():
    # ½ relu(a)² has the gradient relu(a), whose derivative jumps from 0 to 1 at a = 0.
    params = {"a": np.array([0.0, 1.5, -0.5, 0.0]), "b": np.array([[0.3, -1.2]])}

    def cost(p):
        return float(np.sum(np.maximum(p["a"], 0) ** 2) / 2 + np.sum(np.sin(p["b"])))

    def hvp(p, v):
        return {"a": (p["a"] > 0) * v["a"], "b": -np.sin(p["b"]) * v["b"]}

    report = jc.check_hvp(cost, hvp, params)
    assert report.ok, str(report)
    assert report.leaves["a"].status == "kink"
    assert report.leaves["a"].kinks == [(0,), (3,)]
    assert report.leaves["b"].status == "ok"


def test_a_jump_of_the_gradient_is_not_a_bug_but_a_wrong_hvp_there_still_is():
    # |a| has the gradient sign(a), which jumps at a = 0.
    params = {"a": np.array([0.0, 1.5, -0.5])}

    def cost(p):
        return float(np.sum(np.abs(p["a"])) + np.sum(p["a"] ** 2) / 2)

    good = jc.check_hvp(cost, lambda p, v: {"a": v["a"]}, params, directions=4)
    assert good.ok and good.leaves["a"].status == "kink"
    bad = jc.check_hvp(cost, lambda p, v: {"a": 2 * v["a"]}, params)
    assert bad.failing == ["a"]


def test_float32_products_are_judged_at_float32_tolerance():
    net32 = TanhNet(np.float32)
    good = jc.check_hvp(net32.cost, net32.hvp, net32.params, jax_cost=net32.jax_cost)
    assert good.ok, str(good)
    assert good.dtype == "float32"
    assert good.leaves["W1"].rtol == pytest.approx(1e-3)
    assert 1e-9 < good.difference_autodiff < 1e-5  # float32 rounding, within tolerance
    bad = jc.check_hvp(
        net32.cost,
        lambda p, v: net32.hvp(p, v, bug="b1 twice"),
        net32.params,
        jax_cost=net32.jax_cost,
    )
    assert bad.failing == ["b1"]
    assert bad.leaves["b1"].factor == pytest.approx(2.0, rel=1e-5)


# --------------------------------------------------------------------------- Gauss-Newton


def test_a_gauss_newton_product_is_checked_against_jt_hl_j(net):
    def gn(p, v):
        return net.hvp(p, v, gauss_newton=True)

    report = jc.check_hvp(
        net.cost,
        gn,
        net.params,
        kind="gauss_newton",
        model_output=net.model_output,
        loss_of_output=net.loss_of_output,
    )
    assert report.ok, str(report)
    assert "Gauss-Newton product correct" in report.verdict
    wrong = jc.check_hvp(
        net.cost,
        lambda p, v: net.hvp(p, v, bug="b1 twice", gauss_newton=True),
        net.params,
        kind="gauss_newton",
        model_output=net.model_output,
        loss_of_output=net.loss_of_output,
        directions=4,
    )
    assert wrong.failing == ["b1"]
    assert wrong.leaves["b1"].factor == pytest.approx(2.0, rel=1e-9)


def test_gauss_newton_options_are_validated(net):
    with pytest.raises(jc.InputError, match="needs model_output="):
        jc.check_hvp(net.cost, net.hvp, net.params, kind="gauss_newton")
    with pytest.raises(jc.InputError, match="only applies to kind='gauss_newton'"):
        jc.check_hvp(net.cost, net.hvp, net.params, model_output=net.model_output)
    with pytest.raises(jc.InputError, match="leave jax_cost= out"):
        jc.check_hvp(
            net.cost,
            net.hvp,
            net.params,
            kind="gauss_newton",
            jax_cost=net.jax_cost,
            model_output=net.model_output,
            loss_of_output=net.loss_of_output,
        )
    with pytest.raises(jc.InputError, match="kind='newton' is not one of"):
        jc.check_hvp(net.cost, net.hvp, net.params, kind="newton")


# --------------------------------------------------------------------------- culprits, errors


def test_a_twin_with_a_wrong_second_derivative_is_blamed_not_hvp():
    @jax.custom_vjp
    def square(x):
        return x**2

    # The gradient's value is right, but its own derivative is cut off.
    square.defvjp(lambda x: (x**2, x), lambda x, g: (g * 2 * jax.lax.stop_gradient(x),))
    params = {"x": np.array([0.5, -1.0])}
    report = jc.check_hvp(
        lambda p: float(np.sum(p["x"] ** 2)),
        lambda p, v: {"x": 2 * v["x"]},
        params,
        jax_cost=lambda p: jnp.sum(square(p["x"])),
    )
    assert report.ok
    assert report.leaves["x"].status == "twin"
    assert "fix the twin" in report.verdict
    assert report.witnesses == "the exact product and finite differences of the gradient"


def test_bad_products_and_options_raise_with_advice(net):
    def args(**kw):
        return dict(jax_cost=net.jax_cost, directions=2) | kw

    with pytest.raises(jc.InputError, match="hvp\\(params, v\\) for leaf 'b1' has shape"):
        jc.check_hvp(
            net.cost, lambda p, v: {**net.hvp(p, v), "b1": np.zeros(3)}, net.params, **args()
        )
    with pytest.raises(jc.InputError, match="directions='some'"):
        jc.check_hvp(net.cost, net.hvp, net.params, **args(directions="some"))
    with pytest.raises(jc.InputError, match="directions=0"):
        jc.check_hvp(net.cost, net.hvp, net.params, **args(directions=0))

    def vandal(p, v):
        p["W1"] *= 2
        return net.hvp(p, v)

    with pytest.raises(jc.UserCodeError, match="read-only"):
        jc.check_hvp(net.cost, vandal, net.params, **args())
    rng = np.random.default_rng(1)
    with pytest.raises(jc.NondeterminismError, match="hvp\\(params, v\\) returned different"):
        jc.check_hvp(
            net.cost,
            lambda p, v: {k: x + rng.normal() for k, x in net.hvp(p, v).items()},
            net.params,
            **args(),
        )
    with pytest.raises(jc.ReimplementationError):
        jc.check_hvp(net.cost, net.hvp, net.params, jax_cost=lambda p: 2 * net.jax_cost(p))


def test_the_report_serialises_and_plots(net):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    report = jc.check_hvp(
        net.cost, lambda p, v: net.hvp(p, v, bug="b1 twice"), net.params, jax_cost=net.jax_cost
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["check"] == "hvp" and data["kind"] == "hessian" and data["failing"] == ["b1"]
    assert data["leaves"]["b1"]["factor"] == pytest.approx(2.0)
    figure = report.plot()
    assert figure.axes


# --------------------------------------------------------------------------- the engine inside


def test_the_device_screen_passes_exactly_what_classify_calls_ok():
    from jaxcheck._engine.evaluate import products as _products
    from jaxcheck._engine.verdict import classify as vd

    rng = np.random.default_rng(3)
    directions, sizes = 6, (5, 7)
    n = sum(sizes)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    exact = rng.normal(size=(directions, n))
    user = exact.copy()
    user[rng.random(user.shape) < 0.2] *= 1.02  # some wrong entries ...
    user[0, 2] = np.nan  # ... and a non-finite one
    steps = np.full(directions, 1e-5)
    g0 = rng.normal(size=n)
    drift = np.where(rng.random(exact.shape) < 0.2, 1e-3, 1e-12)  # FD astray at some entries
    up = g0 + steps[:, None] * exact * (1 + drift)
    down = g0 - steps[:, None] * exact * (1 + drift)
    outs = np.stack([up, down, exact], axis=1)
    rtol = np.array([1e-7, 1e-3])
    with jax.enable_x64(True):
        screen = jax.jit(lambda *args: _products._screen(*args, owner, len(sizes)))(
            user, g0, outs, steps, np.ones(directions, bool), rtol
        )
    flagged = np.asarray(screen[0])
    atol, scale, fd_atol, floor = (np.asarray(x) for x in screen[5:])
    for i in range(len(sizes)):
        cols = owner == i
        h = np.repeat(steps, sizes[i])
        op = difference_opinions(
            user[:, cols].ravel(),
            exact[:, cols].ravel(),
            up[:, cols].ravel(),
            down[:, cols].ravel(),
            h,
            h,
            np.tile(g0[cols], directions),
            second_order._rounding(float(floor[i])),
        )
        spread = sizes[i]
        tol = vd.Tolerance(
            rtol[i],
            np.repeat(atol[i], spread),
            vd.FD_RTOL,
            np.repeat(fd_atol[i], spread),
            np.repeat(scale[i], spread),
        )
        ok = vd.classify(op, tol) == vd.OK
        np.testing.assert_array_equal(~flagged[:, cols].ravel(), ok)
        assert 0 < ok.sum() < ok.size


@pytest.mark.parametrize("judged", [3, 10_000], ids=["capped", "all"])
def test_large_checks_refine_flagged_directions_and_count_what_they_do_not_judge(
    net, monkeypatch, judged
):
    from jaxcheck._engine.evaluate import products as _products

    monkeypatch.setattr(_products, "SMALL_CHECK", 0)  # ±2h in a second program, as when large
    monkeypatch.setattr(second_order, "MAX_JUDGED", judged)
    report = jc.check_hvp(
        net.cost, lambda p, v: net.hvp(p, v, bug="b1 twice"), net.params, jax_cost=net.jax_cost
    )
    assert report.failing == ["b1"]
    leaf = report.leaves["b1"]
    assert leaf.factor == pytest.approx(2.0, rel=1e-9)
    assert leaf.wrong == 4 * 26  # every entry of b1 along every direction


def test_large_checks_find_kinks_in_the_second_program(monkeypatch):
    from jaxcheck._engine.evaluate import products as _products

    monkeypatch.setattr(_products, "SMALL_CHECK", 0)
    params = {"a": np.array([0.0, 1.5, -0.5, 0.0])}
    report = jc.check_hvp(
        lambda p: float(np.sum(np.maximum(p["a"], 0) ** 2) / 2),
        lambda p, v: {"a": (p["a"] > 0) * v["a"]},
        params,
    )
    assert report.ok and report.leaves["a"].status == "kink"


def test_a_non_finite_product_is_named(net):
    def hvp(p, v):
        out = net.hvp(p, v)
        out["W2"] = out["W2"] * np.nan
        return out

    report = jc.check_hvp(net.cost, hvp, net.params, jax_cost=net.jax_cost, directions=2)
    assert report.failing == ["W2"]
    assert "W2: hvp is nan at" in report.verdict
    assert report.nonlinear == []  # a NaN is wrong on its own, not evidence of non-linearity


def test_a_progress_bar_can_be_asked_for(net, capsys):
    jc.check_hvp(net.cost, net.hvp, net.params, jax_cost=net.jax_cost, progress=True)
    assert "hvp directions" in capsys.readouterr().err
