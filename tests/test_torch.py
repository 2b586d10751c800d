"""jaxcheck.torch: a custom torch.autograd.Function's backward judged three ways."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import jaxcheck as jc
import jaxcheck.torch


def test_importing_jaxcheck_or_jaxcheck_torch_does_not_import_torch(fresh_import):
    assert fresh_import["torch"] is False
    assert fresh_import["torch after jaxcheck.torch"] is False
    assert fresh_import["jaxcheck.torch.check callable"] is True


def test_without_torch_checking_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(jc.MissingDependencyError, match="pip install torch"):
        jaxcheck.torch.check(lambda x: x, np.ones(2))


@pytest.fixture(scope="module")
def torch():
    """PyTorch, or a skip (the tests above run without it)."""
    return pytest.importorskip("torch")


def linear(torch, weight_factor=1.0):
    """y = x @ w + b, its backward with dW scaled by ``weight_factor`` (a bug when ≠ 1)."""

    class Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias):
            ctx.save_for_backward(x, weight)
            return x @ weight + bias

        @staticmethod
        def backward(ctx, g):
            x, weight = ctx.saved_tensors
            return g @ weight.T, weight_factor * x.T @ g, g.sum(dim=0)

    return Linear


def reference_linear(x, weight, bias):
    return x @ weight + bias


def inputs(torch, dtype=None):
    dtype = dtype or torch.float64
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(4, 3, generator=gen, dtype=dtype),
        torch.randn(3, 2, generator=gen, dtype=dtype),
        torch.randn(2, generator=gen, dtype=dtype),
    )


def test_a_correct_backward_passes_three_ways_named_by_the_forward(torch):
    report = jaxcheck.torch.check(linear(torch).apply, *inputs(torch), reference=reference_linear)
    assert report.ok, str(report)
    assert list(report.leaves) == ["bias", "weight", "x"]
    assert report.autodiff
    assert report.twin == "torch"
    assert report.leaves["weight"].difference_autodiff < 1e-12
    text = str(report)
    assert "the backward of Linear.apply" in text
    assert "torch autograd of the reference" in text


def test_without_a_reference_the_check_is_two_way(torch):
    report = jaxcheck.torch.check(linear(torch).apply, *inputs(torch))
    assert report.ok
    assert not report.autodiff
    assert "two-way: no reference" in str(report)


@pytest.mark.parametrize("reference", [None, reference_linear], ids=["two-way", "three-way"])
def test_a_wrong_backward_is_localised_to_its_input_with_its_factor(torch, reference):
    report = jaxcheck.torch.check(linear(torch, 2.0).apply, *inputs(torch), reference=reference)
    assert report.failing == ["weight"]
    assert report.leaves["weight"].factor == pytest.approx(2.0, rel=1e-6)
    assert report.leaves["x"].status == "ok" and report.leaves["bias"].status == "ok"
    assert "weight: the backward is 2.00×" in report.verdict


def test_a_custom_relu_at_zero_is_a_kink(torch):
    class ReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * (x > 0)

    x = torch.tensor([-1.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    report = jaxcheck.torch.check(ReLU.apply, x, reference=torch.relu)
    assert report.ok, str(report)
    assert report.leaves["x"].status == "kink"
    assert report.leaves["x"].kinks == [(1,), (3,)]


def test_float32_backwards_are_judged_at_float32_tolerance(torch):
    good = jaxcheck.torch.check(
        linear(torch).apply, *inputs(torch, torch.float32), reference=reference_linear
    )
    assert good.ok, str(good)
    assert good.dtype == "float32"
    assert good.leaves["weight"].rtol == pytest.approx(1e-3)
    bad = jaxcheck.torch.check(
        linear(torch, 1.01).apply, *inputs(torch, torch.float32), reference=reference_linear
    )
    assert bad.failing == ["weight"]


def test_a_straight_through_estimator_is_reported_not_judged(torch):
    class RoundSTE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.round(x)

        @staticmethod
        def backward(ctx, g):
            return g

    x = torch.tensor([0.2, 1.3, -0.7], dtype=torch.float64)
    assert jaxcheck.torch.check(RoundSTE.apply, x).failing == ["x"]
    report = jaxcheck.torch.check(RoundSTE.apply, x, expected="surrogate")
    assert report.ok and report.failing == []
    assert report.verdict.startswith("Surrogate rule: not judged.")


def test_only_inputs_requiring_grad_are_checked_and_setup_context_forwards_are_named(torch):
    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(x, alpha, n):
            return alpha * x**n

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0], inputs[1])
            ctx.n = inputs[2]

        @staticmethod
        def backward(ctx, g):
            x, alpha = ctx.saved_tensors
            return g * alpha * ctx.n * x ** (ctx.n - 1), (g * x**ctx.n).sum(), None

    x = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(1.5, dtype=torch.float64)
    report = jaxcheck.torch.check(Scale.apply, x, alpha, 3)
    assert list(report.leaves) == ["x"]
    assert report.static == ["alpha", "n"]
    assert report.ok


def test_a_reference_that_computes_another_function_stops_the_check(torch):
    with pytest.raises(jc.ReimplementationError, match="does not compute Linear.apply"):
        jaxcheck.torch.check(linear(torch).apply, *inputs(torch), reference=lambda x, w, b: x @ w)


def small_inputs(torch, dtype):
    """Inputs of ``linear`` in ``dtype``, drawn in float64 (half-precision draws vary by build)."""
    rng = np.random.default_rng(3)
    return tuple(
        torch.from_numpy(rng.standard_normal(shape)).to(dtype) for shape in [(4, 3), (3, 2), (2,)]
    )


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_precision_backwards_are_judged_at_their_own_precision(torch, name):
    dtype = getattr(torch, name)
    try:
        torch.ones(2, 2, dtype=dtype) @ torch.ones(2, 2, dtype=dtype)
    except RuntimeError:  # older CPU builds have no half-precision matmul
        pytest.skip(f"this torch cannot multiply {name} matrices on the CPU")
    good = jaxcheck.torch.check(
        linear(torch).apply, *small_inputs(torch, dtype), reference=reference_linear
    )
    assert good.ok, str(good)
    assert good.dtype == name
    bad = jaxcheck.torch.check(
        linear(torch, 2.0).apply, *small_inputs(torch, dtype), reference=reference_linear
    )
    assert bad.failing == ["weight"]


def test_a_tensor_of_a_dtype_numpy_cannot_hold_is_refused_by_name(torch):
    float8 = getattr(torch, "float8_e4m3fn", None)
    if float8 is None:
        pytest.skip("this torch has no float8")
    x = torch.ones(3).to(float8)
    with pytest.raises(jc.InputError, match=r"input 'x' is a torch.float8_e4m3fn tensor"):
        jaxcheck.torch.check(lambda x: x.float() * 2, x)


def test_a_forward_that_writes_into_its_inputs_does_not_change_what_the_reference_sees(torch):
    class TanhScratch(torch.autograd.Function):
        """tanh(x) * scale, reusing its inputs as scratch space once done with them."""

        @staticmethod
        def forward(ctx, x, scale):
            out = torch.tanh(x) * scale
            ctx.save_for_backward(out / scale, scale.clone())
            x.zero_()
            scale.fill_(0.0)
            return out

        @staticmethod
        def backward(ctx, g):
            t, scale = ctx.saved_tensors
            return g * scale * (1 - t**2), None

    x = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([2.0, 0.5, -1.5], dtype=torch.float64)
    report = jaxcheck.torch.check(
        TanhScratch.apply, x, scale, reference=lambda x, s: torch.tanh(x) * s
    )
    assert report.ok, str(report)
    assert list(report.leaves) == ["x"]
    # the user's tensors are left as they were
    assert x.detach().tolist() == [0.3, -1.2, 0.8]
    assert scale.tolist() == [2.0, 0.5, -1.5]


def test_an_unknown_option_names_jaxcheck_torch_check(torch):
    with pytest.raises(jc.InputError, match=r"jaxcheck.torch.check\(\) got an unknown option "):
        jaxcheck.torch.check(linear(torch).apply, *inputs(torch), rtl=1e-3)
