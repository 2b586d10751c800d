"""Verdict integrity, no trace left: the user's arrays, JAX's config and NumPy's state
are left as they were.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import jaxcheck as jc
from integrity.course import METHODS, TwoLayerNet, with_entry


@pytest.mark.parametrize("method, options", METHODS)
def test_no_check_changes_the_users_arrays(method, options):
    net = TwoLayerNet()
    params_before = {k: v.copy() for k, v in net.params.items()}
    ids = {k: id(v) for k, v in net.params.items()}
    X_before, Y_before = net.X.copy(), net.Y.copy()
    flags = {k: v.flags.writeable for k, v in net.params.items()}
    returned = {}

    def grad(p):
        g = net.grad(p)
        returned.update({k: (v, v.copy()) for k, v in g.items()})
        return g

    for g in (grad, with_entry(net.grad, "dW1", (0, 0), np.nan)):
        jc.check(net.cost, g, net.params, method=method, **options)
    for k, v in net.params.items():
        np.testing.assert_array_equal(v, params_before[k])
        assert id(v) == ids[k] and v.flags.writeable == flags[k]
    np.testing.assert_array_equal(net.X, X_before)
    np.testing.assert_array_equal(net.Y, Y_before)
    for array, copy in returned.values():
        np.testing.assert_array_equal(array, copy)  # the gradient the user returned, too


def test_in_place_backprop_does_not_reach_the_users_params():
    net = TwoLayerNet()
    before = {k: v.copy() for k, v in net.params.items()}

    def grad_that_updates(p):  # a backward that does the SGD step in place, as a trainer would
        g = net.grad(p)
        for k in ("W1", "b1", "W2", "b2"):
            p[k] -= 0.1 * g["d" + k]
        return net.grad({k: v + 0.1 * g["d" + k] for k, v in p.items()})

    jc.check(net.cost, grad_that_updates, net.params)
    for k, v in net.params.items():
        np.testing.assert_array_equal(v, before[k])


def test_a_check_leaves_jax_config_and_numpy_state_alone():
    net = TwoLayerNet()
    x64 = jax.config.jax_enable_x64
    errstate = np.geterr()
    printopts = np.get_printoptions()
    state = np.random.get_state()[1].copy()
    jc.check(net.cost, net.grad, net.params, method="directional")
    jc.check(net.cost, net.grad, net.params, method="sample", samples=2)
    assert jax.config.jax_enable_x64 == x64
    assert np.geterr() == errstate
    assert np.get_printoptions() == printopts
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert math.isfinite(net.cost(net.params))
