"""Checks past one machine: two local CPU processes under ``jax.distributed`` give one answer."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from jaxcheck._engine.evaluate import meetings
from jaxcheck._engine.evaluate import processes as distributed

# One worker: joins the processes (when there are several), runs one check per method with a
# planted bug, and writes what it saw as JSON. Then one process alone gets other params, which
# every process must refuse with the same error.
_WORKER = textwrap.dedent(
    """
    import json, sys, time
    import jax

    process, processes, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if processes > 1:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            coordinator_bind_address=f"127.0.0.1:{port}",
            num_processes=processes,
            process_id=process,
            initialization_timeout=60,
        )
    import numpy as np
    import jaxcheck as jc
    from jaxcheck import models

    model = models.make("relu_mlp", layers=[8, 16, 4, 1], m=16)
    result = {"processes": jax.process_count(), "devices": jax.device_count()}
    for method, bug in [
        ("full", "bias_grad_1_percent"),
        ("sample", "missing_relu_mask"),
        ("directional", "extra_sigmoid_derivative"),
    ]:
        r = jc.check(model.cost, model.bugs[bug].grad, model.params, jax_cost=model.jax_cost,
                     method=method, batch_size=3)
        result[method] = {
            "ok": r.ok,
            "failing": r.failing,
            "status": {path: str(leaf.status) for path, leaf in r.leaves.items()},
            "checked": {path: leaf.checked for path, leaf in r.leaves.items()},
            "fd": [leaf.difference_fd for leaf in r.leaves.values()],
            "difference_fd": r.difference_fd,
            "difference_fd_autodiff": r.difference_fd_autodiff,
        }
    if processes > 1:
        # one process alone with other params, or a grad that differs: every process refuses
        params = jax.tree.map(np.copy, model.params)
        if process == 1:
            params["layers"][1]["W"][0, 0] += 1e-12
        grad = model.grad
        if process == 1:
            grad = lambda p: jax.tree.map(lambda g: 2 * g, model.grad(p))
        # a twin that differs by one Python float written into it
        scale = 1.0 if process == 0 else 1.0 + 1e-9
        nudged = lambda p: scale * model.jax_cost(p)
        # the user's cost raises on one process only
        def cost(p):
            if process == 1:
                raise ZeroDivisionError("a bug on process 1 only")
            return model.cost(p)
        # the NumPy cost's data differ, in a check without a twin
        other_data = lambda p: model.cost(p) * (1.0 + 1e-9 * process)
        two_way = {"jax_cost": None, "twin": "none"}
        cases = [
            ("params", model.cost, model.grad, params, {}),
            ("grad", model.cost, grad, model.params, {}),
            ("twin", model.cost, model.grad, model.params, {"jax_cost": nudged}),
            ("option", model.cost, model.grad, model.params, {"rtol": 1e-6 * (1 + process)}),
            ("raises", cost, model.grad, model.params, {}),
            ("numpy data", other_data, model.grad, model.params, two_way),
            ("bad input", model.cost, model.grad, params if process else "oops", {}),
        ]
        for name, c, g, ps, extra in cases:
            began = time.monotonic()
            try:
                jc.check(c, g, ps, **{"jax_cost": model.jax_cost, **extra})
                result[name] = None
            except jc.JaxcheckError as err:
                result[name] = f"{type(err).__name__}: {err}"
            result[name + " seconds"] = time.monotonic() - began
        # after all that, the processes are still in step: one more check agrees with one process
        r = jc.check(model.cost, model.bugs["bias_grad_1_percent"].grad, model.params,
                     jax_cost=model.jax_cost, method="full", batch_size=3)
        result["after"] = {"ok": r.ok, "failing": r.failing}
    with open(out, "w") as f:
        json.dump(result, f)
    """
)

TIMEOUT = 180


def _hostname_is_loopback() -> bool:
    # JAX's gloo CPU collectives listen on the address the host's name resolves to, with no
    # public option to choose it: run only where that is a loopback address.
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(processes: int, tmp_path, port: int) -> list[tuple[subprocess.Popen, str]]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["JAX_PLATFORMS"] = "cpu"
    runs = []
    for i in range(processes):
        out = str(tmp_path / f"{processes}-{i}")
        args = [sys.executable, "-c", _WORKER, str(i), str(processes), str(port), out + ".json"]
        with open(out + ".log", "w") as log:
            proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        runs.append((proc, out))
    return runs


def _results(runs: list[tuple[subprocess.Popen, str]]) -> list[dict]:
    deadline = time.monotonic() + TIMEOUT
    try:
        for proc, _ in runs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc, _ in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = []
    for proc, out in runs:
        with open(out + ".log") as f:
            assert proc.returncode == 0, f.read()[-4000:]
        with open(out + ".json") as f:
            results.append(json.load(f))
    return results


@pytest.mark.slow  # about 20 s: three Python processes start JAX and compile
@pytest.mark.skipif(
    not _hostname_is_loopback(),
    reason="gloo (JAX's CPU collectives) would listen on the host name's non-loopback address",
)
def test_two_processes_give_the_one_process_answer(tmp_path):
    # The one-process reference runs alongside the two processes, on the same two devices each.
    alone = _launch(1, tmp_path, 0)
    pair = _launch(2, tmp_path, _free_port())
    (one,) = _results(alone)
    both = _results(pair)
    assert one["processes"] == 1 and one["devices"] == 2
    for result in both:
        assert result["processes"] == 2 and result["devices"] == 4
    for method in ("full", "sample", "directional"):
        expected = one[method]
        assert not expected["ok"] and expected["failing"]
        for result in both:
            got = result[method]
            assert got["ok"] == expected["ok"]
            assert got["failing"] == expected["failing"]
            assert got["status"] == expected["status"]
            assert got["checked"] == expected["checked"]
            np.testing.assert_allclose(got["fd"], expected["fd"], rtol=1e-9, atol=1e-15)
            for key in ("difference_fd", "difference_fd_autodiff"):
                np.testing.assert_allclose(got[key], expected[key], rtol=1e-9, atol=1e-15)
        # every process returns the same report: the same numbers, bit for bit
        assert both[0][method] == both[1][method]
    for result in both:
        assert result["params"].startswith("InputError: params leaf 'layers/1/W' (shape (4, 16))")
        assert "differs between processes (process 0 vs 1" in result["params"]
        assert result["grad"].startswith("NondeterminismError: grad returned different")
        assert result["twin"].startswith(
            "InputError: the JAX twin differs between processes (process 0 vs 1)"
        )
        assert result["option"].startswith("InputError: the options differ between processes")
        assert (
            "check(): rtol (check(): rtol is 1e-06 on process 0 and 2e-06 on process 1)"
            in (result["option"])
        )
        assert "method" not in result["option"]
        assert result["after"] == {"ok": False, "failing": one["full"]["failing"]}
    for result in both:
        assert result["numpy data"].startswith(
            "InputError: the NumPy cost at params differs between processes (process 0 vs 1: "
        )
    for name in ("params", "grad", "twin", "option", "numpy data"):
        assert both[0][name] == both[1][name]  # every process refuses with the same words
    # An error on one process reaches the other as a jaxcheck error, within seconds.
    assert both[1]["raises"].startswith("UserCodeError: ")
    assert "ZeroDivisionError" in both[1]["raises"]
    assert both[0]["raises"].startswith(
        "UserCodeError: process 1 of 2 stopped check() (so every process stops"
    )
    assert (
        "there it raised UserCodeError: cost(params) raised ZeroDivisionError" in both[0]["raises"]
    )
    assert "a bug on process 1 only" in both[0]["raises"]
    assert both[0]["bad input"].startswith("InputError: ")
    assert both[1]["bad input"].startswith("InputError: process 0 of 2 stopped check() (so")
    for result in both:
        assert result["raises seconds"] < 30 and result["bad input seconds"] < 30


def test_one_process_changes_nothing():
    devices = jax.devices()
    assert not distributed.spans_processes(devices)
    assert distributed.probe_mesh(devices[:1]) is None
    tree = {"a": np.arange(3.0)}
    assert distributed.replicated(tree, distributed.probe_mesh(devices)) is tree
    consts, leaves, backprop, args = (
        [np.ones(2)],
        [np.zeros(3)],
        [np.zeros(3)],
        [(np.ones((1, 2)),)],
    )
    placed = distributed.global_inputs(consts, leaves, backprop, args, devices)
    assert placed[0][0] is consts[0] and placed[3][0][0] is args[0][0]
    # nothing to compare with: no collective, no error
    distributed.verify_same_everywhere(consts, leaves, backprop, ("plan",), devices)


def test_without_jax_distributed_the_doors_meet_nobody():
    calls = []

    @meetings.together("check")
    def door(x, *, rtol=None):
        calls.append((x, rtol))
        raise ValueError("its own error, untouched")

    with pytest.raises(ValueError, match="its own error, untouched"):
        door(1, rtol=1e-3)
    assert calls == [(1, 1e-3)]
    assert meetings.client() is None


def test_the_twin_digest_ignores_object_ids_but_not_constants():
    import jax.numpy as jnp

    from jaxcheck._engine.system.twin import trace

    leaves = [np.ones(3)]
    treedef = jax.tree_util.tree_structure(0)

    def twin(scale):
        def cost(w):
            return scale * jnp.sum(jnp.tanh(w) ** 2)

        return trace(cost, treedef, leaves, "given")

    with jax.enable_x64(True):
        one, same, other = twin(0.5), twin(0.5), twin(0.5 + 1e-12)
    assert distributed._twin_text(one) == distributed._twin_text(same)
    assert distributed._twin_text(one) != distributed._twin_text(other)
    assert distributed._stable(("a", ("object", 1234), 3)) == ("a", ("object",), 3)


# ---- what differs, in words: every process raises the same error from the same digests ----


def _entries(**theirs):
    ours = {
        "structure": "s",
        "options": [["check(): rtol", "1e-06"]],
        "twin": "t",
        "params": ["a", "b"],
        "data": ["d", "x"],
        "cost": (0.5).hex(),
        "backprop": ["g", "h"],
    }
    return [ours, {**ours, **theirs}]


@pytest.mark.parametrize(
    ("theirs", "error", "words"),
    [
        ({"structure": "other"}, "InputError", "the params have other paths, shapes or dtypes"),
        ({"options": [["check(): rtol", "2e-06"]]}, "InputError", "rtol is 1e-06 on process 0"),
        ({"twin": "other"}, "InputError", "the JAX twin differs between processes"),
        ({"params": ["a", "c"]}, "InputError", "params leaf 'W' (shape (2, 3)) differs"),
        ({"data": ["d", "y"]}, "InputError", "(process 0 vs 1: array 1 of 1, shape (4,))"),
        ({"cost": (0.25).hex()}, "InputError", "(process 0 vs 1: 0.5 vs 0.25)"),
        ({"backprop": ["g", "i"]}, "NondeterminismError", "gradients for leaf 'W' between"),
    ],
)
def test_each_difference_between_processes_is_named(theirs, error, words):
    leaves = [np.zeros(3), np.zeros((2, 3))]
    consts = [np.zeros(4)]
    with pytest.raises(Exception) as caught:
        distributed._raise_difference(_entries(**theirs), leaves, ["b", "W"], consts)
    assert type(caught.value).__name__ == error
    assert words in str(caught.value)
    assert "every process runs the whole check on its own copy" in str(caught.value)


def test_processes_that_agree_raise_nothing():
    leaves = [np.zeros(3), np.zeros((2, 3))]
    distributed._raise_difference(_entries(), leaves, ["b", "W"], [np.zeros(4)])
