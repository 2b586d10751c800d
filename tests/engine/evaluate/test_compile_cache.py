"""The disk cache of compiled programs: shared safely, never trusted blindly, never run by pickle.

The end-to-end tests run real processes on one cache directory, then tamper with it as a shared
directory or a restored CI cache could be tampered with; every verdict must stay right.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxcheck as jc
import jaxcheck.cli
from jaxcheck._engine.evaluate import compile_cache
from jaxcheck._engine.evaluate.cache_store import Untrusted, load_key, open_store
from jaxcheck.errors import InputError

# A user's script: from-scratch models whose gradients are written by hand, one of them with the
# classic bug of a bias gradient that forgets to average over the batch.
_CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np

    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import jaxcheck as jc
        from jaxcheck._engine.evaluate import compile_cache

        def logistic(X, y):
            def forward(p):
                a = 1 / (1 + np.exp(-(X @ p["w"] + p["b"])))
                return a, -np.mean(y * np.log(a) + (1 - y) * np.log(1 - a))
            def grad(p, average_b=True):
                a, _ = forward(p)
                dz = (a - y) / len(y)
                return {"w": X.T @ dz, "b": np.sum(dz) * (1 if average_b else len(y))}
            return (lambda p: forward(p)[1]), grad

        def tanh(X, y):
            def cost(p):
                return float(np.mean((np.tanh(X @ p["w"] + p["b"]) - y) ** 2))
            def grad(p, average_b=True):
                t = np.tanh(X @ p["w"] + p["b"])
                dz = 2 * (t - y) * (1 - t**2) / len(y)
                return {"w": X.T @ dz, "b": np.sum(dz) * (1 if average_b else len(y))}
            return cost, grad

        out = {"good": [], "wrong": []}
        for i, job in enumerate(sys.argv[1].split(",")):
            model, n = job.split(":")
            rng = np.random.default_rng(int(sys.argv[2]) + i)
            X = rng.normal(size=(16, int(n)))
            y = (rng.random(16) < 0.5).astype(float)
            cost, grad = {"logistic": logistic, "tanh": tanh}[model](X, y)
            params = {"w": 0.3 * rng.normal(size=int(n)), "b": np.array(0.1)}
            out["good"].append(jc.check(cost, grad, params, compile=True).ok)
            wrong = jc.check(cost, lambda p: grad(p, False), params, compile=True)
            out["wrong"].append(wrong.failing)
    out["stats"] = dict(compile_cache.stats)
    out["warnings"] = [
        str(w.message) for w in caught
        if issubclass(w.category, compile_cache.UntrustedCacheWarning)
    ]
    print(json.dumps(out))
    """
)


def _env(folder: Path, key: Path) -> dict[str, str]:
    env = dict(os.environ, JAXCHECK_CACHE_DIR=str(folder), JAXCHECK_CACHE_KEY=str(key))
    env.pop("JAXCHECK_NO_CACHE", None)
    env.pop("JAXCHECK_CACHE_MAX_BYTES", None)
    return env


def _start(env: dict[str, str], jobs: str, seed: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, jobs, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(child: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _run(env: dict[str, str], jobs: str, seed: int = 0) -> dict:
    return _finish(_start(env, jobs, seed))


def _assert_right(result: dict) -> None:
    """Every correct gradient passed; every wrong one failed, on the bias alone."""
    assert all(result["good"]), result
    assert all(failing == ["b"] for failing in result["wrong"]), result


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith(".jxc")}


@dataclass
class Warm:
    """A cache directory filled by real processes: the entry of each model, and the key."""

    folder: Path
    key: Path
    first: list[dict]
    logistic: str
    tanh: str

    def copy(self, where: Path) -> Path:
        shutil.copytree(self.folder, where)
        where.chmod(0o700)
        return where


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Warm:
    folder = tmp_path_factory.mktemp("shared") / "cache"
    key = tmp_path_factory.mktemp("config") / "jaxcheck" / "cache.key"
    env = _env(folder, key)
    # Two processes at once, on one directory, compiling and storing the same program.
    both = [_start(env, "logistic:3", seed=1), _start(env, "logistic:3", seed=2)]
    first = [_finish(child) for child in both]
    (logistic,) = _entries(folder)
    first.append(_run(env, "tanh:3"))
    (tanh,) = _entries(folder) - {logistic}
    return Warm(folder, key, first, logistic, tanh)


def test_processes_sharing_a_directory_are_right_and_a_third_loads_their_programs(warm):
    for result in warm.first:
        _assert_right(result)
        assert result["stats"].get("stored", 0) + result["stats"].get("loaded", 0) >= 1
    third = _run(_env(warm.folder, warm.key), "logistic:3,tanh:3", seed=7)
    _assert_right(third)
    assert third["stats"].get("loaded") == 2 and third["stats"].get("compiled", 0) == 0
    assert third["warnings"] == [] and not third["stats"].get("rejected")


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_a_planted_pickle_never_runs_and_changes_no_verdict(warm, tmp_path):
    folder = warm.copy(tmp_path / "cache")
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Planted(control))).close()  # what the planted bytes would do
    assert control.exists()
    marker = tmp_path / "marker"
    planted = pickle.dumps((_Planted(marker), _Planted(marker), _Planted(marker)))
    (folder / warm.logistic).write_bytes(planted)
    (folder / warm.logistic.replace(".jxc", ".bin")).write_bytes(planted)  # the old format

    result = _run(_env(folder, warm.key), "logistic:3")
    _assert_right(result)
    assert not marker.exists()
    assert result["stats"]["rejected"] >= 1 and result["stats"]["compiled"] >= 1
    assert (folder / warm.logistic).read_bytes().startswith(b"JAXCHECK-PROGRAM")  # overwritten


def test_an_entry_copied_under_another_programs_name_is_rejected(warm, tmp_path):
    folder = warm.copy(tmp_path / "cache")
    shutil.copyfile(folder / warm.logistic, folder / warm.tanh)
    result = _run(_env(folder, warm.key), "tanh:3", seed=3)
    _assert_right(result)  # the wrong bias gradient still fails
    assert result["stats"]["rejected"] == 1 and result["stats"].get("loaded", 0) == 0


def test_a_fifo_under_an_entrys_name_does_not_hang(warm, tmp_path):
    folder = warm.copy(tmp_path / "cache")
    (folder / warm.logistic).unlink()
    os.mkfifo(folder / warm.logistic)
    child = _start(_env(folder, warm.key), "logistic:3", seed=4)
    try:
        result = _finish(child, timeout=240)
    finally:
        child.kill()
    _assert_right(result)
    assert result["stats"]["compiled"] >= 1 and len(result["warnings"]) == 1
    assert "not a regular file" in result["warnings"][0]
    assert stat.S_ISREG((folder / warm.logistic).lstat().st_mode)  # replaced by a real entry


def test_a_directory_others_can_write_is_not_used_and_warned_about_once(warm, tmp_path):
    folder = warm.copy(tmp_path / "cache")
    folder.chmod(0o777)
    before = sorted(os.listdir(folder))
    result = _run(_env(folder, warm.key), "logistic:3,logistic:4", seed=5)
    _assert_right(result)
    assert result["stats"].get("loaded", 0) == 0 and result["stats"]["compiled"] == 2
    assert len(result["warnings"]) == 1 and "others can write to it" in result["warnings"][0]
    assert result["stats"]["untrusted"] == 2
    assert sorted(os.listdir(folder)) == before


def test_the_disk_cache_can_be_turned_off(tmp_path):
    env = dict(_env(tmp_path / "cache", tmp_path / "key"), JAXCHECK_NO_CACHE="1")
    out = _run(env, "tanh:2")
    _assert_right(out)
    assert out["stats"].get("stored", 0) == 0 and out["stats"].get("loaded", 0) == 0
    assert not (tmp_path / "cache").exists() and not (tmp_path / "key").exists()
    assert not compile_cache.enabled(False) and compile_cache.enabled(True)


def test_cache_false_keeps_programs_in_memory_and_true_stores_them(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(7, 5))

    def cost(p):
        return float(np.sum(np.log1p(np.exp(X @ p["W"]))))

    def grad(p):
        return {"W": X.T @ (1 / (1 + np.exp(-(X @ p["W"]))))}

    params = {"W": rng.normal(size=(5, 2))}
    monkeypatch.setenv("JAXCHECK_CACHE_DIR", str(tmp_path / "off"))
    assert jc.check(cost, grad, params, cache=False, compile=True).ok
    assert not (tmp_path / "off").exists()
    monkeypatch.setenv("JAXCHECK_CACHE_DIR", str(tmp_path / "on"))
    new_shapes = {"W": rng.normal(size=(5, 3))}
    assert jc.check(cost, grad, new_shapes, cache=True, compile=True).ok
    assert len(_entries(tmp_path / "on")) == 1


def test_the_entry_name_changes_with_everything_that_changes_the_program(monkeypatch):
    cpu = jax.devices("cpu")[:1]
    fast = {"xla_backend_optimization_level": 0}
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    base = compile_cache._key("module @jit_f {}", fast, cpu)
    assert compile_cache._key("module @jit_f {}", dict(fast), cpu) == base
    changed = [
        compile_cache._key("module @jit_g {}", fast, cpu),
        compile_cache._key("module @jit_f {}", {"xla_backend_optimization_level": 1}, cpu),
        compile_cache._key("module @jit_f {}", None, cpu),
    ]
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    changed.append(compile_cache._key("module @jit_f {}", fast, cpu))
    monkeypatch.setattr(jax, "__version__", "0.0.1")
    changed.append(compile_cache._key("module @jit_f {}", fast, cpu))
    assert len({base, *changed}) == 1 + len(changed)


# ------------------------------------------------------------------------------------------------
# The store and the key, without compiling anything
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "cache", tmp_path / "config" / "key", cap=10_000) as opened:
        yield opened


_A, _B = "a" * 64 + ".jxc", "b" * 64 + ".jxc"


def test_the_key_is_made_0600_in_a_private_folder_and_kept(tmp_path):
    key = tmp_path / "config" / "jaxcheck" / "cache.key"
    made = load_key(key, cache_dir=tmp_path / "cache")
    assert len(made) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert load_key(key, cache_dir=tmp_path / "cache") == made
    assert [p.name for p in key.parent.iterdir()] == ["cache.key"]  # no temporary left


@pytest.mark.parametrize(
    "spoil, why",
    [
        (lambda key: key.chmod(0o644), "others can read or write it"),
        (lambda key: key.write_text("not a key\n"), "does not hold a jaxcheck key"),
        (lambda key: (key.unlink(), key.symlink_to(key.parent / "x")), "cannot be opened"),
        (lambda key: (key.unlink(), os.mkfifo(key)), "not a regular file"),
    ],
    ids=["readable-by-others", "garbage", "symlink", "fifo"],
)
def test_an_unsafe_key_is_refused(tmp_path, spoil, why):
    key = tmp_path / "config" / "cache.key"
    load_key(key, cache_dir=tmp_path / "cache")
    (key.parent / "x").write_text("0" * 64)
    spoil(key)
    with pytest.raises(Untrusted, match=why):
        load_key(key, cache_dir=tmp_path / "cache")


def test_a_key_inside_the_cache_directory_is_refused(tmp_path):
    with pytest.raises(Untrusted, match="inside the cache directory"):
        load_key(tmp_path / "cache" / "cache.key", cache_dir=tmp_path / "cache")


def test_the_directory_is_made_0700_and_one_of_another_user_is_refused(tmp_path):
    with open_store(tmp_path / "cache", tmp_path / "key", cap=1):
        pass
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    other = tmp_path / "other"
    other.mkdir(mode=0o755)
    if os.geteuid() == 0:
        os.chown(other, 65534, 65534)
    else:
        other = Path("/")
    with pytest.raises(Untrusted, match="belongs to user id"):
        with open_store(other, tmp_path / "key", cap=1, create=False):
            pass


def test_an_entry_reads_back_and_any_change_to_it_is_rejected(store, tmp_path):
    folder = tmp_path / "cache"
    assert store.write(_A, {"jax": "x"}, b"payload \x00\xff")
    assert store.read(_A) == b"payload \x00\xff"
    data = (folder / _A).read_bytes()
    spoiled = {
        "truncated": data[:-1],
        "torn": data[: len(data) // 2],
        "flipped": data[:40] + bytes([data[40] ^ 1]) + data[41:],
        "empty": b"",
    }
    for how, content in spoiled.items():
        (folder / _A).write_bytes(content)
        assert store.read(_A) is None, how
    (folder / _B).write_bytes(data)  # authentic, but under another name
    assert store.read(_B) is None
    assert store.rejected == len(spoiled) + 1 and store.warnings == []


def test_links_directories_and_entries_others_can_write_are_not_read(store, tmp_path):
    folder = tmp_path / "cache"
    store.write(_A, {}, b"x")
    (folder / _B).symlink_to(folder / _A)
    assert store.read(_B) is None
    (folder / _B).unlink()
    (folder / _B).mkdir()
    assert store.read(_B) is None
    (folder / _A).chmod(0o666)
    assert store.read(_A) is None
    assert len(store.warnings) == 3 and "unsafe" in store.warnings[-1]


def test_the_directory_is_bounded_in_bytes_least_recently_used_first(store, tmp_path):
    names = [c * 64 + ".jxc" for c in "abc"]
    for age, name in enumerate(names):
        store.write(name, {}, bytes(1000))
        os.utime(tmp_path / "cache" / name, (time.time() - 100 + age,) * 2)
    assert store.read(names[0]) == bytes(1000)  # the oldest, used again: now the newest
    (tmp_path / "cache" / "notes.txt").write_text("not ours")
    assert store.prune(2500) == 1
    assert sorted(_entries(tmp_path / "cache")) == sorted([names[0], names[2]])
    assert store.write("d" * 64 + ".jxc", {}, bytes(20_000)) is False  # over the cap
    assert store.clear() == 2 and os.listdir(tmp_path / "cache") == ["notes.txt"]


@pytest.mark.parametrize(
    "text, size",
    [("", compile_cache.DEFAULT_MAX_BYTES), ("1000", 1000), ("512M", 512 * 2**20), ("2GiB", 2**31)],
)
def test_the_bound_comes_from_the_environment(monkeypatch, text, size):
    monkeypatch.setenv(compile_cache.ENV_MAX_BYTES, text)
    assert compile_cache.max_bytes() == size


def test_a_bound_that_is_not_a_size_is_an_input_error(monkeypatch):
    monkeypatch.setenv(compile_cache.ENV_MAX_BYTES, "lots")
    with pytest.raises(InputError, match="JAXCHECK_CACHE_MAX_BYTES='lots' is not a size"):
        compile_cache.max_bytes()


# ------------------------------------------------------------------------------------------------
# jaxcheck cache info / clear
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def filled(tmp_path) -> Warm:
    """A cache directory holding two authentic entries, written by the store in this process.

    ``jaxcheck cache info`` and ``clear`` list and delete entries without reading them, so these
    need no compiled program (the processes of ``warm`` cost seconds; its tests are marked slow).
    """
    folder, key = tmp_path / "filled", tmp_path / "config" / "jaxcheck" / "cache.key"
    names = [c * 64 + ".jxc" for c in "ab"]
    with open_store(folder, key, cap=10_000) as store:
        for name, size in zip(names, (300, 700)):
            assert store.write(name, {"jax": jax.__version__}, bytes(range(256)) * (size // 256))
    return Warm(folder, key, [], *names)


def test_cache_info_and_clear(filled, tmp_path, monkeypatch, capsys):
    folder = filled.copy(tmp_path / "cache")
    (folder / "mine.txt").write_text("a file of the user's")
    monkeypatch.setenv("JAXCHECK_CACHE_DIR", str(folder))
    monkeypatch.setenv("JAXCHECK_CACHE_KEY", str(filled.key))
    monkeypatch.setenv("JAXCHECK_CACHE_MAX_BYTES", "64M")
    assert jaxcheck.cli.main(["cache", "info"]) == 0
    shown = capsys.readouterr().out
    size = sum((folder / name).stat().st_size for name in _entries(folder))
    assert f"directory: {folder}" in shown and "trusted:   yes" in shown
    assert "entries:   2" in shown and f"size:      {size} bytes" in shown
    assert f"limit:     {64 * 2**20} bytes" in shown and f"{filled.key} (present)" in shown

    assert jaxcheck.cli.main(["cache", "clear"]) == 0
    assert "removed 2 files" in capsys.readouterr().out
    assert os.listdir(folder) == ["mine.txt"]


def test_cache_clear_leaves_an_unsafe_directory_alone(filled, tmp_path, monkeypatch, capsys):
    folder = filled.copy(tmp_path / "cache")
    folder.chmod(0o770)
    monkeypatch.setenv("JAXCHECK_CACHE_DIR", str(folder))
    assert jaxcheck.cli.main(["cache", "info"]) == 0
    assert "trusted:   no: the cache directory" in capsys.readouterr().out
    assert jaxcheck.cli.main(["cache", "clear"]) == 2
    assert "others can write to it (mode 0770)" in capsys.readouterr().err
    assert _entries(folder) == {filled.logistic, filled.tanh}
