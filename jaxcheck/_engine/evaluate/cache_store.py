"""The files of the disk cache: a private directory of authenticated entries, read safely.

Trust is checked as ssh checks its keys: the directory and every entry must belong to this user
and be writable by no one else; the secret key must be readable by no one else. An entry is a
data-only container (a JSON header and the payload's bytes) whose HMAC-SHA256, under the key,
covers its own file name, header and payload, so a planted, renamed, truncated or torn entry is
rejected. Only regular files are opened, without following links, without blocking, up to a size
cap. Writes go to a temporary file in the same directory, synced, then renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["ENTRY", "Store", "Untrusted", "load_key", "open_store", "unsafe"]

#: The file name of an entry: the hex digest of its key, and an extension of its own.
ENTRY = re.compile(r"[0-9a-f]{64}\.jxc")
# Files of ours that are not entries: temporaries of an interrupted write, and the pickled
# entries of jaxcheck before 0.7 (never read; deleted when the cache is pruned or cleared).
_OURS = re.compile(r"([0-9a-f]{64}\.jxc|\.[0-9a-f]{64}\.jxc\.[0-9a-f]+\.tmp|[0-9a-f]{64}\.bin)")
_MAGIC = b"JAXCHECK-PROGRAM\x00\x01"
_MAC_BYTES = 32
_CONTEXT = b"jaxcheck compile cache, v1\x00"
_KEY_CHARS = re.compile(rb"[0-9a-f]{64}\n?")
#: Temporaries older than this (seconds) are left over from a crashed writer.
_STALE_TMP = 3600.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class Untrusted(Exception):
    """The cache directory or the key cannot be trusted; the message says why and what to do."""


def unsafe(info: os.stat_result, *, private: bool = False) -> str | None:
    """Why a file with this status is not to be trusted, or None.

    Args:
        info: its ``stat``.
        private: also refuse what others can read (the secret key).
    """
    if info.st_uid != os.geteuid():
        return f"it belongs to user id {info.st_uid}, not to you ({os.geteuid()})"
    mode = stat.S_IMODE(info.st_mode)
    if private and mode & 0o077:
        return f"others can read or write it (mode {mode:04o}; it must be 0600)"
    if mode & 0o022:
        return f"others can write to it (mode {mode:04o})"
    return None


def _read_regular(path: str | os.PathLike, cap: int, *, dir_fd: int | None = None) -> tuple:
    """(bytes, stat) of a regular file of at most ``cap`` bytes; ``(None, why)`` otherwise."""
    try:
        fd = os.open(path, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, "absent"
    except OSError as err:  # ELOOP: a symbolic link
        return None, f"cannot be opened ({err.strerror})"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"
        if info.st_size > cap:
            return None, f"larger than {cap} bytes"
        chunks, left = [], info.st_size
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), info
    finally:
        os.close(fd)


def load_key(path: Path, *, cache_dir: Path, create: bool = True) -> bytes | None:
    """The secret key in ``path``, made (0600, atomically) on first use when ``create``.

    Returns None when there is no key and ``create`` is False.

    Raises:
        Untrusted: the key lies inside the cache directory, or its file or folder is unsafe.
    """
    where = path.expanduser().absolute()
    inside = Path(os.path.realpath(where)).is_relative_to(os.path.realpath(cache_dir))
    if inside:
        raise Untrusted(f"the key file {where} lies inside the cache directory {cache_dir}")
    if create:
        where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif not where.parent.is_dir():
        return None
    folder = unsafe(os.stat(where.parent))
    if folder:
        raise Untrusted(f"the key's folder {where.parent} is unsafe: {folder}")
    data, info = _read_regular(where, 4096)
    if data is None and info == "absent":
        if not create:
            return None
        _create_key(where)
        data, info = _read_regular(where, 4096)
    if data is None:
        raise Untrusted(f"the key file {where} is {info}")
    problem = unsafe(info, private=True)
    if problem:
        raise Untrusted(f"the key file {where} is unsafe: {problem}")
    if not _KEY_CHARS.fullmatch(data):
        raise Untrusted(f"the key file {where} does not hold a jaxcheck key; delete it")
    return bytes.fromhex(data[:64].decode())


def _create_key(where: Path) -> None:
    """Writes a new key under a temporary name, then links it into place (never overwrites)."""
    tmp = where.with_name(f".{where.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, where)  # another process may have made one first: then that one is used
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


class Store:
    """An open, trusted cache directory and the key its entries are authenticated with.

    Every file operation is relative to the directory's descriptor, so the directory checked
    is the one used even if its path is replaced meanwhile.
    """

    def __init__(self, fd: int, key: bytes | None, cap: int) -> None:
        self.fd, self.key, self.cap = fd, key, cap
        self.warnings: list[str] = []
        self.rejected = 0  # entries present but not authentic

    def _mac(self, name: str, body: bytes) -> bytes:
        if self.key is None:
            raise ValueError("a cache opened without its key reads and writes no entry")
        message = _CONTEXT + name.encode() + b"\x00" + body
        return hmac.new(self.key, message, hashlib.sha256).digest()

    def read(self, name: str) -> bytes | None:
        """The payload of entry ``name``, or None: absent, unsafe or not authentic."""
        data, info = _read_regular(name, self.cap, dir_fd=self.fd)
        if data is None:
            if info.startswith("larger"):  # written under a larger bound
                self.rejected += 1
            elif info != "absent":
                self.warnings.append(f"entry {name} is {info}")
            return None
        problem = unsafe(info)
        if problem:
            self.warnings.append(f"entry {name} is unsafe: {problem}")
            return None
        payload = self._authentic(name, data)
        if payload is None:
            self.rejected += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(name, dir_fd=self.fd, follow_symlinks=False)  # most recently used
        return payload

    def _authentic(self, name: str, data: bytes) -> bytes | None:
        """The payload of an entry's bytes, if its MAC, name and sizes are right."""
        body, mac = data[:-_MAC_BYTES], data[-_MAC_BYTES:]
        if len(data) < len(_MAGIC) + 4 + _MAC_BYTES or not body.startswith(_MAGIC):
            return None
        if not hmac.compare_digest(mac, self._mac(name, body)):
            return None
        size = int.from_bytes(body[len(_MAGIC) : len(_MAGIC) + 4], "big")
        start = len(_MAGIC) + 4
        try:
            header = json.loads(body[start : start + size])
        except ValueError:
            return None
        payload = body[start + size :]
        if not isinstance(header, dict) or header.get("name") != name:
            return None
        if header.get("bytes") != len(payload):
            return None
        return payload

    def write(self, name: str, header: dict[str, Any], payload: bytes) -> bool:
        """Stores an entry atomically; False when it is larger than the cap."""
        text = json.dumps({**header, "name": name, "bytes": len(payload)}, sort_keys=True).encode()
        body = _MAGIC + len(text).to_bytes(4, "big") + text + payload
        data = body + self._mac(name, body)
        if len(data) > self.cap:
            return False
        tmp = f".{name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=self.fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        return True

    def files(self) -> list[tuple[str, os.stat_result]]:
        """The files of ours in the directory (entries, temporaries, old entries), with stats."""
        found = []
        with os.scandir(self.fd) as it:
            for item in it:
                if _OURS.fullmatch(item.name):
                    with contextlib.suppress(OSError):
                        found.append((item.name, item.stat(follow_symlinks=False)))
        return found

    def prune(self, limit: int) -> int:
        """Deletes the least recently used entries beyond ``limit`` bytes; returns how many."""
        now, removed, kept = time.time(), 0, []
        for name, info in self.files():
            stale = name.endswith(".tmp") and now - info.st_mtime > _STALE_TMP
            if stale or name.endswith(".bin") or not stat.S_ISREG(info.st_mode):
                removed += self._unlink(name)
            elif ENTRY.fullmatch(name):
                kept.append((info.st_mtime, name, info.st_size))
        total = sum(size for _, _, size in kept)
        for _, name, size in sorted(kept):
            if total <= limit:
                break
            removed += self._unlink(name)
            total -= size
        return removed

    def clear(self) -> int:
        """Deletes every file of ours; returns how many."""
        return sum(self._unlink(name) for name, _ in self.files())

    def _unlink(self, name: str) -> int:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return 0
        except IsADirectoryError:
            os.rmdir(name, dir_fd=self.fd)
        return 1


@contextlib.contextmanager
def open_store(
    folder: Path, key_file: Path | None, *, cap: int, create: bool = True
) -> Iterator[Store]:
    """The trusted cache directory ``folder`` (made 0700 when ``create``), open.

    Without ``key_file`` the store can list and delete, but reads and writes nothing.

    Raises:
        Untrusted: the directory or the key is unsafe (the message says why).
        FileNotFoundError: there is no directory and ``create`` is False.
    """
    if os.name != "posix":
        raise Untrusted("the disk cache needs a POSIX system (file owners and modes)")
    if create:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    except NotADirectoryError:
        raise Untrusted(f"the cache directory {folder} is not a directory") from None
    try:
        problem = unsafe(os.fstat(fd))
        if problem:
            raise Untrusted(f"the cache directory {folder} is unsafe: {problem}")
        key = None if key_file is None else load_key(key_file, cache_dir=folder)
        yield Store(fd, key, cap)
    finally:
        os.close(fd)
