"""Durable file helpers: directory fsync, atomic replace and a checksummed envelope.

A file written with ``write_checked`` is replaced atomically (temp file in the
same directory, fsync, rename, fsync of the directory), so after a crash the
path holds either the old or the new content, and ``read_checked`` detects any
other damage (truncation, bit flips, a foreign file) instead of returning it.

Everything the broker stores is private to its user: directories are created
0700 and files 0600 with explicit modes (``make_private_dirs``, ``FILE_MODE``),
whatever the umask, so no install step is needed to keep the data unreadable
to other local users.
"""

from __future__ import annotations

import contextlib
import glob
import os
import queue
import struct
import tempfile
import threading
import time
import zlib

# magic, format version, reserved, payload length, crc32 of the payload
_ENVELOPE = struct.Struct("<4sHHQI")
_MAGIC = b"BRKF"
_VERSION = 1
_TEMP_SUFFIX = ".tmp"
DIR_MODE = 0o700  # every directory the broker creates
FILE_MODE = 0o600  # every file the broker creates


TRASH_SUFFIX = ".deleted"  # a file renamed out of the way, unlinked in the background
TRIM_STEP = 2 * 1024 * 1024  # bytes a discarded file is cut by at a time...
TRIM_PAUSE = 0.01  # ...and the pause between cuts (a 64 MB segment: about half a second)


class _Unlinker:
    """One thread that unlinks files handed to it. Freeing a large file's blocks
    takes tens of milliseconds on ext4 (about 25 ms for a 64 MB journal segment
    on the dev machine), which a partition thread must not spend: it renames the
    file out of the way (``discard``) and goes on."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Condition()  # guards _pending and _thread
        self._pending = 0
        self._thread: threading.Thread | None = None

    def put(self, path: str) -> None:
        with self._idle:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="unlinker", daemon=True)
                self._thread.start()
        self._queue.put(path)

    def wait(self, timeout: float) -> bool:
        """Wait until everything handed over so far is unlinked (tests, shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        while True:
            path = self._queue.get()
            with contextlib.suppress(OSError):  # gone already; a leftover is swept at open
                # Freed a few MB at a time: one large free holds the filesystem
                # journal long enough to stall every fsync on the disk meanwhile.
                size = os.stat(path).st_size
                while size > TRIM_STEP:
                    size -= TRIM_STEP
                    os.truncate(path, size)
                    time.sleep(TRIM_PAUSE)  # pacing: the fsyncs waiting meanwhile go first
                os.unlink(path)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()


_UNLINKER = _Unlinker()


def discard(path: str) -> None:
    """Remove ``path`` without waiting for its blocks to be freed: it is renamed to
    ``path + TRASH_SUFFIX`` at once (so its name is free again, and a crash leaves
    only a trash file, swept by ``sweep_trash``) and unlinked by a background thread."""
    trash = path + TRASH_SUFFIX
    os.rename(path, trash)
    _UNLINKER.put(trash)


def sweep_trash(directory: str) -> None:
    """Hand over the trash files a crash left in ``directory`` for unlinking."""
    for name in os.listdir(directory):
        if name.endswith(TRASH_SUFFIX):
            _UNLINKER.put(os.path.join(directory, name))


def wait_discarded(timeout: float = 10.0) -> bool:
    """True once every discarded file so far is unlinked."""
    return _UNLINKER.wait(timeout)


class StorageError(Exception):
    """Stored data that the broker cannot use as it is; ``repair`` says what to do.

    Raised at start (the daemon prints it and exits with EXIT_STORAGE, no traceback)."""

    def __init__(self, path: str | os.PathLike, reason: str, repair: str = ""):
        self.path = os.fspath(path)
        self.reason = reason
        self.repair = repair
        super().__init__(f"{self.path}: {reason}" + (f"; {repair}" if repair else ""))


class CorruptFileError(StorageError):
    """A durable file exists but its content is damaged or not ours."""

    def __init__(self, path: str | os.PathLike, reason: str, repair: str = ""):
        super().__init__(path, reason, repair)


def make_private_dirs(path: str | os.PathLike) -> None:
    """``os.makedirs(path, exist_ok=True)``, but every directory it creates is 0700
    (set explicitly: neither the umask nor makedirs' handling of intermediate
    directories decides). Existing directories are left as they are."""
    path = os.path.abspath(os.fspath(path))
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
            continue  # created meanwhile by someone else: theirs
        os.chmod(d, DIR_MODE)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the creation, rename or deletion of entries in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file
    (created with ``mode``: private unless asked)."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=_TEMP_SUFFIX, dir=directory)
    try:
        os.fchmod(fd, mode)  # mkstemp's 0600 today; stated, not assumed
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def remove_temp_files(directory: str | os.PathLike, prefix: str) -> int:
    """Delete the temp files a crash left behind in ``atomic_write`` of files named
    ``prefix...`` in ``directory``; returns how many."""
    pattern = glob.escape(os.path.join(os.fspath(directory), prefix)) + "*" + _TEMP_SUFFIX
    stale = glob.glob(pattern)
    for tmp in stale:
        os.unlink(tmp)
    return len(stale)


def encode_checked(payload: bytes) -> bytes:
    return _ENVELOPE.pack(_MAGIC, _VERSION, 0, len(payload), zlib.crc32(payload)) + payload


def decode_checked(path: str | os.PathLike, blob: bytes) -> bytes:
    """The payload of an envelope read from ``path``; ``path`` only names errors."""
    if len(blob) < _ENVELOPE.size:
        raise CorruptFileError(path, f"truncated header ({len(blob)} bytes)")
    magic, version, _, length, crc = _ENVELOPE.unpack_from(blob)
    if magic != _MAGIC:
        raise CorruptFileError(path, f"bad magic {magic!r}")
    if version != _VERSION:
        raise CorruptFileError(path, f"unsupported format version {version}")
    payload = blob[_ENVELOPE.size :]
    if len(payload) != length:
        raise CorruptFileError(path, f"payload is {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != crc:
        raise CorruptFileError(path, "checksum mismatch")
    return payload


def write_checked(path: str | os.PathLike, payload: bytes) -> None:
    """Atomically replace ``path`` with ``payload`` wrapped in a checksummed envelope."""
    atomic_write(path, encode_checked(payload))


def read_checked(path: str | os.PathLike) -> bytes:
    """The payload written by ``write_checked``; raises CorruptFileError if damaged
    and FileNotFoundError if absent."""
    with open(path, "rb") as f:
        return decode_checked(path, f.read())
