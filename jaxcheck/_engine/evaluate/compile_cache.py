"""Compiled programs kept on disk, so that re-running a check in a fresh process compiles nothing.

Programs are stored with JAX's own executable serialisation, keyed on the lowered program text
(which holds the whole computation; the user's data are arguments, not constants), the JAX
version, the compile options and the devices. The directory is ``$JAXCHECK_CACHE_DIR``, else
``$XDG_CACHE_HOME/jaxcheck`` or ``~/.cache/jaxcheck``; ``JAXCHECK_NO_CACHE=1`` or ``cache=False``
turns it off. Only jaxcheck's own programs are stored there: JAX's global configuration is not
touched.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib

__all__ = [
    "ENV_DIR",
    "ENV_OFF",
    "MAX_ENTRIES",
    "directory",
    "enabled",
    "load_or_compile",
    "stats",
]

#: Environment variable naming the cache directory.
ENV_DIR = "JAXCHECK_CACHE_DIR"
#: Environment variable that turns the cache off when set to 1 (or true, yes).
ENV_OFF = "JAXCHECK_NO_CACHE"
#: Programs kept; the least recently used beyond this are deleted.
MAX_ENTRIES = 512

_LOG = logging.getLogger("jaxcheck")

#: What this process did: programs ``loaded`` from disk, ``compiled`` (and ``stored``).
stats: collections.Counter[str] = collections.Counter()


def enabled(option: bool | None = None) -> bool:
    """Whether the disk cache is used: the option if given, else not turned off by the env."""
    if option is not None:
        return bool(option)
    return os.environ.get(ENV_OFF, "").strip().lower() not in ("1", "true", "yes", "on")


def directory() -> Path:
    """The cache directory (created on first write)."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxcheck"


@functools.cache
def _engine_digest() -> str:
    """A digest of the code that builds the programs: a changed jaxcheck never loads old ones."""
    engine = Path(__file__).parent.parent  # jaxcheck/_engine: every stage that shapes a program
    digest = hashlib.sha256()
    for path in sorted(engine.rglob("*.py")):
        digest.update(path.relative_to(engine).as_posix().encode() + b"\x00")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _key(text: str, options: dict[str, Any] | None, devices: Sequence[Any]) -> str:
    parts = [
        _engine_digest(),
        jax.__version__,
        getattr(jaxlib, "__version__", ""),
        repr(sorted((options or {}).items())),
        repr([(d.platform, getattr(d, "device_kind", ""), d.id) for d in devices]),
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
        name: a text that determines the program completely (its structure, shapes and
            constants), or None: then the key is the lowered program text itself.
        options: the XLA compile options (part of the key).
        devices: the devices it runs on (part of the key).
        persistent: use the disk; False compiles in memory only.
    """
    if not persistent:
        stats["compiled"] += 1
        return lower().compile()
    from jax.experimental import serialize_executable

    folder = directory()
    lowered = None
    if name is None:
        lowered = lower()
        name = lowered.as_text()
    path = folder / f"{_key(name, options, devices)}.bin"
    if path.exists():
        try:
            payload, in_tree, out_tree = pickle.loads(path.read_bytes())
            program = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
            os.utime(path)
            stats["loaded"] += 1
            return program
        except Exception as err:  # noqa: BLE001 - a stale or broken entry is just recompiled
            _LOG.info("jaxcheck: cached program %s unusable (%s); recompiling", path.name, err)
    program = (lowered if lowered is not None else lower()).compile()
    stats["compiled"] += 1
    try:
        blob = pickle.dumps(serialize_executable.serialize(program))
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".tmp") as f:
            f.write(blob)
        os.replace(f.name, path)
        stats["stored"] += 1
        _prune(folder)
    except Exception as err:  # noqa: BLE001 - a cache that cannot be written is only slower
        _LOG.info("jaxcheck: could not store the compiled program (%s)", err)
    return program


def _prune(folder: Path) -> None:
    entries = sorted(folder.glob("*.bin"), key=lambda p: p.stat().st_mtime)
    for old in entries[: max(0, len(entries) - MAX_ENTRIES)]:
        try:
            old.unlink()
        except OSError:
            pass
