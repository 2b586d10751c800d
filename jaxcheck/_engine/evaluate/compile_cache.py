"""Compiled programs kept on disk, so that re-running a check in a fresh process compiles nothing.

Only the bytes of XLA's executable are stored (:mod:`~jaxcheck._engine.evaluate.executables`
rebuilds the rest from a fresh lowering; nothing goes through pickle), in authenticated entries
of a private directory (:mod:`~jaxcheck._engine.evaluate.cache_store`). An entry's name is a
digest of everything that shapes the program: the lowered program text (the user's data are
arguments, not constants), the compile options and ``XLA_FLAGS``, the JAX and jaxlib versions,
the backend, devices and host CPU, and jaxcheck's engine. An entry that is missing, unsafe or not
authentic is compiled again and overwritten: it never changes a verdict.

The directory is ``$JAXCHECK_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxcheck`` or
``~/.cache/jaxcheck``; the key is ``$JAXCHECK_CACHE_KEY``, else
``$XDG_CONFIG_HOME/jaxcheck/cache.key`` or ``~/.config/jaxcheck/cache.key``; the directory holds
at most ``$JAXCHECK_CACHE_MAX_BYTES`` (256 MiB by default). ``JAXCHECK_NO_CACHE=1`` or
``cache=False`` turns it off. JAX's global configuration is not touched.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import os
import platform
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib

from jaxcheck._engine.evaluate import executables
from jaxcheck._engine.evaluate.cache_store import Untrusted, load_key, open_store
from jaxcheck.errors import InputError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ENV_DIR",
    "ENV_KEY",
    "ENV_MAX_BYTES",
    "ENV_OFF",
    "UntrustedCacheWarning",
    "clear",
    "directory",
    "enabled",
    "info",
    "key_file",
    "load_or_compile",
    "max_bytes",
    "stats",
]

#: Environment variable naming the cache directory.
ENV_DIR = "JAXCHECK_CACHE_DIR"
#: Environment variable that turns the cache off when set to 1 (or true, yes).
ENV_OFF = "JAXCHECK_NO_CACHE"
#: Environment variable naming the file of the secret key entries are authenticated with.
ENV_KEY = "JAXCHECK_CACHE_KEY"
#: Environment variable bounding the directory's size: bytes, or with a K, M or G suffix.
ENV_MAX_BYTES = "JAXCHECK_CACHE_MAX_BYTES"
#: The directory's bound when ``$JAXCHECK_CACHE_MAX_BYTES`` is unset: 256 MiB.
DEFAULT_MAX_BYTES = 256 * 2**20

_LOG = logging.getLogger("jaxcheck")
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

#: What this process did: programs ``loaded`` from disk, ``compiled`` (and ``stored``), entries
#: ``rejected`` (not authentic or unusable), and times the cache was ``untrusted``.
stats: collections.Counter[str] = collections.Counter()


class UntrustedCacheWarning(UserWarning):
    """The disk cache (its directory, an entry or the key) is unsafe: programs compile in memory."""


_warned = False


def _warn_once(message: str) -> None:
    global _warned
    stats["untrusted"] += 1
    _LOG.info("jaxcheck: %s", message)
    if not _warned:
        _warned = True
        warnings.warn(
            f"jaxcheck's disk cache of compiled programs is not used: {message}. Make it yours "
            f"and private (chmod 700 the directory, 600 the key), point {ENV_DIR} elsewhere, or "
            f"set {ENV_OFF}=1; meanwhile programs compile in memory.",
            UntrustedCacheWarning,
            stacklevel=2,
        )


def enabled(option: bool | None = None) -> bool:
    """Whether the disk cache is used: the option if given, else not turned off by the env."""
    if option is not None:
        return bool(option)
    return os.environ.get(ENV_OFF, "").strip().lower() not in ("1", "true", "yes", "on")


def directory() -> Path:
    """The cache directory (created, 0700, on first use)."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxcheck"


def key_file() -> Path:
    """The file of the secret key (created, 0600, on first use), outside the cache directory."""
    explicit = os.environ.get(ENV_KEY)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "jaxcheck" / "cache.key"


def max_bytes() -> int:
    """The bound on the directory's size, from ``$JAXCHECK_CACHE_MAX_BYTES``.

    Raises:
        InputError: the variable is not a size.
    """
    text = os.environ.get(ENV_MAX_BYTES, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)(i?b)?", text.lower())
    if match is None:
        raise InputError(
            f"{ENV_MAX_BYTES}={text!r} is not a size",
            hint=f"set it to a number of bytes with an optional K, M or G (e.g. 512M), or unset "
            f"it for the default of {DEFAULT_MAX_BYTES // 2**20}M",
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


@functools.cache
def _engine_digest() -> str:
    """A digest of the code that builds the programs: a changed jaxcheck never loads old ones."""
    engine = Path(__file__).parent.parent  # jaxcheck/_engine: every stage that shapes a program
    digest = hashlib.sha256()
    for path in sorted(engine.rglob("*.py")):
        digest.update(path.relative_to(engine).as_posix().encode() + b"\x00")
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def _host() -> str:
    """The host CPU: XLA compiles CPU programs for the features of the machine it runs on."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{flags.strip()}"


def _key(text: str, options: dict[str, Any] | None, devices: Sequence[Any]) -> str:
    client = getattr(devices[0], "client", None) if devices else None
    parts = [
        _engine_digest(),
        jax.__version__,
        getattr(jaxlib, "__version__", ""),
        os.environ.get("XLA_FLAGS", ""),
        repr(sorted((options or {}).items())),
        repr([(d.platform, getattr(d, "device_kind", ""), d.id) for d in devices]),
        str(getattr(client, "platform_version", "")),
        f"{jax.process_index()}/{jax.process_count()}",
        _host(),
        text,
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def load_or_compile(
    lower: Callable[[], Any],
    *,
    name: str | None,
    options: dict[str, Any] | None,
    devices: Sequence[Any],
    persistent: bool,
) -> Callable[..., Any]:
    """The compiled program: from the disk cache, or lowered, compiled (and stored).

    Args:
        lower: lowers the program (``jitted.lower(*inputs)``).
        name: a text that names the program across processes, or None (part of the key, with
            the lowered program text).
        options: the XLA compile options (part of the key).
        devices: the devices it runs on (part of the key).
        persistent: use the disk; False compiles in memory only.
    """
    if not persistent:
        stats["compiled"] += 1
        return lower().compile()
    limit = max_bytes()
    lowered = lower()
    entry = f"{_key(f'{name}|{lowered.as_text()}', options, devices)}.jxc"
    try:
        with open_store(directory(), key_file(), cap=min(limit, 2**31)) as store:
            program = _load(store, entry, lowered)
            if program is None:
                program = _compile_and_store(store, entry, lowered, limit)
            for message in store.warnings:
                _warn_once(message)
            return program
    except Untrusted as why:
        _warn_once(str(why))
    except OSError as err:  # a directory that cannot be made or read: only slower
        _LOG.info("jaxcheck: disk cache unusable (%s); compiling in memory", err)
    stats["compiled"] += 1
    return lowered.compile()


def _load(store: Any, entry: str, lowered: Any) -> Any:
    try:
        payload = store.read(entry)
    except (OSError, ValueError) as err:
        _LOG.info("jaxcheck: cached program %s unreadable (%s)", entry, err)
        payload = None
    stats["rejected"] += store.rejected
    store.rejected = 0
    if payload is None:
        return None
    try:
        program = executables.rebuild(lowered, payload)
    except Exception as err:  # noqa: BLE001 - an entry XLA cannot load is just recompiled
        stats["rejected"] += 1
        _LOG.info("jaxcheck: cached program %s unusable (%s); recompiling", entry, err)
        return None
    stats["loaded"] += 1
    return program


def _compile_and_store(store: Any, entry: str, lowered: Any, limit: int) -> Any:
    program = lowered.compile()
    stats["compiled"] += 1
    try:
        payload = executables.to_bytes(program)
        header = {"jax": jax.__version__, "jaxlib": getattr(jaxlib, "__version__", "")}
        if payload is not None and store.write(entry, header, payload):
            stats["stored"] += 1
            store.prune(limit)
    except Exception as err:  # noqa: BLE001 - a cache that cannot be written is only slower
        _LOG.info("jaxcheck: could not store the compiled program (%s)", err)
    return program


def info() -> dict[str, Any]:
    """What ``jaxcheck cache info`` shows: where the cache is, how full, and whether trusted."""
    folder, key = directory(), key_file()
    out: dict[str, Any] = {
        "directory": str(folder),
        "enabled": enabled(),
        "key_file": str(key),
        "limit_bytes": max_bytes(),
        "entries": 0,
        "bytes": 0,
        "exists": folder.exists(),
        "trusted": False,
        "key": None,
        "problem": None,
    }
    try:
        with open_store(folder, None, cap=0, create=False) as store:
            files = store.files()
            out["key"] = "present" if load_key(key, cache_dir=folder, create=False) else "absent"
    except FileNotFoundError:
        out["problem"] = "the directory does not exist yet (made on first use)"
        return out
    except (Untrusted, OSError) as why:
        out["problem"] = str(why)
        return out
    out["trusted"] = True
    out["entries"] = sum(1 for name, _ in files if name.endswith(".jxc"))
    out["bytes"] = sum(item.st_size for _, item in files)
    return out


def clear() -> int:
    """Deletes every file of jaxcheck's in the cache directory; returns how many.

    Raises:
        Untrusted: the directory is unsafe (it is left alone).
    """
    try:
        with open_store(directory(), None, cap=0, create=False) as store:
            return store.clear()
    except FileNotFoundError:
        return 0
