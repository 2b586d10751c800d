"""Options: every keyword of jc.check validated once, with an InputError naming it."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import jax
import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck._engine.options import Options


def _quadratic():
    params = {"w": np.array([0.5, -1.5, 2.0])}
    return (lambda p: float(np.sum(p["w"] ** 2))), (lambda p: {"w": 2 * p["w"]}), params


@pytest.mark.parametrize(
    "options, match",
    [
        ({"seed": -1}, "seed=-1"),
        ({"seed": None}, "seed=None"),
        ({"seed": "1"}, "seed='1'"),
        ({"seed": True}, "seed=True"),
        ({"seed": 1.5}, "seed=1.5"),
        ({"method": "fast"}, "method='fast'"),
        ({"twin": "maybe"}, "twin='maybe'"),
        ({"rtol": 2.0}, "rtol=2.0"),
        ({"rtol": 0.0}, "rtol=0.0"),
        ({"eps": float("nan")}, "eps=nan"),
        ({"eps": "1e-6"}, "eps='1e-6'"),
        ({"eps": 10**400}, "eps=1000"),
        ({"rtol": Fraction(-1, 10)}, "rtol=Fraction"),
        ({"eps": Fraction(10**400)}, "eps=Fraction"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"memory_budget": -5}, "memory_budget=-5"),
        ({"incremental": "yes"}, "incremental='yes'"),
        ({"cache": "no"}, "cache='no'"),
        ({"progress": 1}, "progress=1"),
        ({"devices": []}, "devices=\\[\\]"),
        ({"devices": ["cpu"]}, "expected jax devices"),
        ({"samples": 3}, "only applies to method='sample'"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else None,
)
def test_bad_options_raise_an_input_error_naming_the_option(options, match):
    cost, grad, params = _quadratic()
    with pytest.raises(jc.InputError, match=match):
        jc.check(cost, grad, params, **options)


def test_a_step_that_underflows_names_the_leaf_and_index():
    cost, grad, params = _quadratic()
    with pytest.raises(jc.InputError, match=r"eps=1e-300 is too small for leaf 'w'.*index \(0,\)"):
        jc.check(cost, grad, params, eps=1e-300)


def test_good_options_are_frozen_and_normalised():
    options = Options(seed=np.int64(3), devices=jax.devices())
    assert options.seed == 3 and isinstance(options.seed, int)
    assert isinstance(options.devices, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.seed = 4  # type: ignore[misc]


def test_a_fraction_for_a_tolerance_becomes_a_float_and_checks():
    options = Options(eps=Fraction(1, 10**6), rtol=Fraction(1, 10**4))
    assert options.eps == 1e-6 and type(options.eps) is float
    assert options.rtol == 1e-4 and type(options.rtol) is float
    cost, grad, params = _quadratic()
    report = jc.check(cost, grad, params, eps=Fraction(1, 10**6), rtol=Fraction(1, 10**4))
    assert report.ok, report


def test_floats_and_integers_for_a_tolerance_stay_as_given():
    assert type(Options(eps=np.float32(1e-3)).eps) is np.float32
    assert type(Options(eps=1).eps) is int
