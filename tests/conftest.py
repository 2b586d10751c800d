"""Shared fixtures: the classic lesson's system under test, and an x64 guard.

Also the suite's marks: the slowest cases are marked ``slow`` here, in one list, so that
``pytest -n auto -m "not slow"`` (the README's quick command) stays within a few minutes on two
cores; ``.ci/run`` runs them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxcheck
from jaxcheck import lesson as classic

# Tests that take several seconds each on a 2-core machine (compile-heavy checks, subprocesses),
# by file (its path under tests/, or jaxcheck/... for a doctest), then test function name (every
# parametrisation of it) or one test's full name.
SLOW = {
    "integrity/test_many_leaves.py": {"test_300_small_leaves_full_check_finds_the_one_bug"},
    "integrity/test_precision.py": {
        "test_float32_zoo_models_pass_and_fail_as_declared",
        "test_bfloat16_params_are_checked",
        "test_float64_rtol_is_1e7",
        "test_float16_correct_passes_and_three_percent_off_fails",
    },
    "integrity/test_floors.py": {
        "test_temperature_scale_leaf_float32_gradient_doubled_fails",
        "test_dead_units_keep_passing",
    },
    "integrity/test_nonfinite.py": {
        "test_nan_in_entries_the_method_does_not_probe_still_fails",
        "test_float32_sigmoid_derivative_overflow_is_nan_and_fails",
    },
    "integrity/test_twin_refusals.py": {
        "test_unfaithful_twins_are_refused_float64",
        "test_unfaithful_twins_are_refused_float32",
    },
    "engine/doors/test_check_zoo.py": {"test_zoo_float32_correct_passes_and_bugs_are_found"},
    "test_models.py": {
        "test_backprop_equals_autodiff[relu_mlp]",
        "test_backprop_equals_autodiff[tanh_mlp]",
        "test_other_sizes[relu_mlp]",
        "test_make_gives_fresh_arrays_and_nothing_mutates_params[dropout_lesson]",
    },
    "engine/verdict/test_properties.py": {
        f"test_random_models_methods_never_contradict_full[{k}]" for k in range(4, 8)
    },
    "test_cli.py": {  # each starts Python processes that import JAX
        "test_python_m_from_a_folder_with_namesakes_of_modules_numpy_imports",
        "test_jaxcheck_errors_are_input_problems_not_verdicts",
        "test_stdlib_namesakes_in_the_cwd_and_beside_the_model",
        "test_a_closed_stdout_keeps_the_verdict",
        "test_python_m_keeps_the_cwd_importable_but_behind_the_stdlib",
        "test_exit_in_grad_is_a_usage_error_with_json",
        "test_module_specs_from_pythonpath_and_json",
        "test_json_stdout_holds_only_the_report_whatever_the_user_prints",
        "test_demo_runs_the_lesson_and_explains_the_false_alarm",
        "test_an_exit_at_import_is_a_usage_error_not_a_verdict",
        "test_module_entry_point_help",
    },
    "test_port.py": {
        "test_code_without_source_still_ports_the_functions_it_calls",
        "test_port_leaves_user_code_alone",
        "test_losses_with_branches_and_masked_reductions",
        "test_svm_naive_with_if_margin_is_checked_three_way",
        "test_a_branch_guarded_against_log_of_zero_keeps_the_gradient_finite",
        "test_a_long_elif_chain_ports_without_blowing_up",
    },
    "test_readme.py": {"test_the_test_suite_example_passes_and_fails"},
    "test_pytest_plugin.py": {
        "test_one_passes_one_fails_with_the_report",
        "test_gradcheck_layer_passes_and_fails_with_the_report",
        "test_options_and_input_errors_pass_through",
        "test_explicit_plugin_loading_without_autoload",
    },
    # subprocesses, several devices, or large compiled programs
    "engine/evaluate/test_compile_cache.py": {
        "test_processes_sharing_a_directory_are_right_and_a_third_loads_their_programs",
        "test_a_directory_others_can_write_is_not_used_and_warned_about_once",
        "test_the_disk_cache_can_be_turned_off",
        "test_a_fifo_under_an_entrys_name_does_not_hang",
        "test_a_planted_pickle_never_runs_and_changes_no_verdict",
        "test_an_entry_copied_under_another_programs_name_is_rejected",
    },
    "engine/evaluate/test_finite_differences.py": {
        "test_four_devices_give_the_one_device_answer",
        "test_batch_size_follows_the_memory_budget_and_bounds_compiled_memory",
    },
    "engine/evaluate/test_incremental.py": {"test_incremental_value_equals_the_perturbed_twin"},
    "engine/system/test_inputs.py": {
        # a Python process each; [wrong] stays quick
        "test_json_stays_one_object_when_the_module_prints_at_exit[correct]",
    },
    "engine/doors/test_loss_and_grads.py": {
        "test_naive_svm_with_if_on_margins_is_checked_three_way",
        "test_naive_softmax_with_loops_ports",
    },
    "engine/doors/test_product.py": {
        "test_an_mlp_gauss_newton_product_passes_and_its_bugs_are_localised"
    },
    "engine/doors/test_second_order.py": {
        # float32 products: test_product's float32 test stays quick
        "test_float32_products_are_judged_at_float32_tolerance",
        # random directions: [full], and the Gauss-Newton test's directions=4, stay quick
        "test_a_wrong_block_is_localised_to_its_leaf_with_its_factor[random]",
    },
    "engine/doors/test_layer.py": {"test_naive_convolution_with_assignment_into_arrays"},
    # a doctest whose eager jax.grad compiles each primitive on its own; the twin's value and
    # gradient are checked by test_lesson's quick tests
    "jaxcheck/lesson.py": {"jaxcheck.lesson.forward_propagation_n_jax"},
}


TESTS = Path(__file__).resolve().parent
PACKAGE = Path(jaxcheck.__file__).resolve().parent  # its doctests, checked out or installed


def _key(where: Path) -> str:
    if TESTS in where.parents:
        return where.relative_to(TESTS).as_posix()
    if PACKAGE in where.parents:
        return "jaxcheck/" + where.relative_to(PACKAGE).as_posix()
    return where.name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        slow = SLOW.get(_key(Path(str(item.fspath)).resolve()), set())
        if item.name in slow or item.name.split("[")[0] in slow:
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session: pytest.Session) -> None:
    # CI tests the installed wheel from outside the checkout: make sure that is what it imports.
    if os.environ.get("JAXCHECK_TEST_INSTALLED") == "1":
        checkout = Path(__file__).resolve().parents[1]
        where = Path(jaxcheck.__file__).resolve()
        if checkout in where.parents:
            raise pytest.UsageError(f"this run tests the checkout ({where}), not the wheel")


@pytest.fixture(autouse=True, scope="session")
def _compile_cache_in_a_temporary_directory(tmp_path_factory, worker_id):
    # The tests exercise the disk cache of compiled programs, but never in the user's home.
    # Under pytest-xdist the workers share one directory, so a program compiled by one worker
    # is not compiled again by the next.
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    cache = root / "jaxcheck-cache"
    cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAXCHECK_CACHE_DIR", str(cache))
        patch.setenv("JAXCHECK_CACHE_KEY", str(cache.parent / "jaxcheck-cache-key"))
        yield


@pytest.fixture(scope="session")
def worker_id(request) -> str:
    """The xdist worker's id, or ``"master"`` without xdist (xdist provides its own)."""
    workerinput = getattr(request.config, "workerinput", None)
    return "master" if workerinput is None else workerinput["workerid"]


@pytest.fixture(scope="session")
def fresh_import() -> dict[str, bool]:
    """What a new Python process sees on ``import jax, jaxcheck``, then ``import jaxcheck.torch``.

    One process for every test that asks: starting Python and importing JAX takes seconds.
    """
    code = (
        "import json, sys, jax, jaxcheck\n"
        "seen = {'x64': jax.config.jax_enable_x64, 'torch': 'torch' in sys.modules}\n"
        "import jaxcheck.torch\n"
        "seen['torch after jaxcheck.torch'] = 'torch' in sys.modules\n"
        "seen['jaxcheck.torch.check callable'] = callable(jaxcheck.torch.check)\n"
        "print(json.dumps(seen))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


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
