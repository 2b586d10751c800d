"""Shared fixtures: the classic lesson's system under test, and an x64 guard."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxcheck import lesson as classic


@pytest.fixture(autouse=True, scope="session")
def _compile_cache_in_a_temporary_directory(tmp_path_factory):
    # The tests exercise the disk cache of compiled programs, but never in the user's home.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAXCHECK_CACHE_DIR", str(tmp_path_factory.mktemp("jaxcheck-cache")))
        patch.setenv("JAXCHECK_CACHE_KEY", str(tmp_path_factory.mktemp("jaxcheck-key") / "key"))
        yield


@pytest.fixture(autouse=True)
def _x64_left_alone():
    before = jax.config.jax_enable_x64
    yield
    assert jax.config.jax_enable_x64 == before, "jaxcheck changed the global x64 flag"


class Lesson:
    """The lesson's network as (cost, grad, buggy grad, twin, params)."""

    def __init__(self, dtype=np.float64):
        X, Y, params = classic.gradient_check_n_test_case()
        self.X, self.Y = X.astype(dtype), Y
        self.params = {k: v.astype(dtype) for k, v in params.items()}

    def cost(self, p):
        return classic.forward_propagation_n(self.X, self.Y, p)

    def grad(self, p):
        _, cache = classic.forward_propagation_n(self.X, self.Y, p)
        return classic.backward_propagation_n(self.X, self.Y, cache)

    def buggy(self, p):
        _, cache = classic.forward_propagation_n(self.X, self.Y, p)
        return classic.backward_propagation_n_buggy(self.X, self.Y, cache)

    def twin(self, p):
        return classic.forward_propagation_n_jax(self.X, self.Y, p)


@pytest.fixture
def lesson():
    return Lesson()
