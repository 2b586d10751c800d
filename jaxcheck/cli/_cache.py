"""``jaxcheck cache info`` and ``jaxcheck cache clear``: the disk cache of compiled programs."""

from __future__ import annotations

from typing import TextIO

from jaxcheck._engine.evaluate import compile_cache
from jaxcheck._engine.evaluate.cache_store import Untrusted
from jaxcheck.cli._output import EXIT_CORRECT, UsageError, write
from jaxcheck.errors import InputError


def _size(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.1f} MiB)"


def _info(stdout: TextIO) -> int:
    try:
        found = compile_cache.info()
    except InputError as err:
        raise UsageError(str(err), kind="InputError", hint=err.hint) from err
    if found["trusted"]:
        trusted = "yes"
    elif not found["exists"]:
        trusted = "- (no directory yet: it is made, 0700, on first use)"
    else:
        trusted = f"no: {found['problem']}"
    used = "yes" if found["enabled"] else f"no ({compile_cache.ENV_OFF} is set)"
    lines = [
        f"directory: {found['directory']}",
        f"trusted:   {trusted}",
        f"in use:    {used}",
        f"entries:   {found['entries']}",
        f"size:      {_size(found['bytes'])}",
        f"limit:     {_size(found['limit_bytes'])} (${compile_cache.ENV_MAX_BYTES})",
        f"key file:  {found['key_file']}" + (f" ({found['key']})" if found["key"] else ""),
    ]
    write("\n".join(lines), stdout)
    return EXIT_CORRECT


def _clear(stdout: TextIO) -> int:
    folder = compile_cache.directory()
    try:
        removed = compile_cache.clear()
    except Untrusted as why:
        raise UsageError(
            f"not cleared: {why}",
            hint="only a directory of yours that others cannot write to is cleared; delete it "
            "yourself if it is yours",
        ) from None
    except OSError as err:
        raise UsageError(f"could not clear {folder}: {err}") from None
    write(f"removed {removed} file{'s' * (removed != 1)} from {folder}", stdout)
    return EXIT_CORRECT


def cache_command(action: str, stdout: TextIO) -> int:
    """Runs ``jaxcheck cache ACTION``; returns the exit code."""
    return _info(stdout) if action == "info" else _clear(stdout)
