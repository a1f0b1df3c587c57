"""Writing files the way users expect: atomically (a temp file renamed into place) and with the mode the
umask gives (``tempfile.mkstemp`` alone makes every file 0600, which a web server user cannot read).

``os_error_message`` turns an OSError into the one line the CLI prints: the path and what to do.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Iterator


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask(x) is racy in threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", durable: bool = False, clear_stale: bool = False,
                fsync_folder: bool = True, **open_kw) -> Iterator[IO]:
    """Write ``path`` through a temp file in the same folder renamed over it on success: a crash or an error
    leaves the old file or none, never half a file, and the temp file never stays (a kill -9 can leave one:
    ``clear_stale`` removes this target's own leftovers first, for callers that alone write ``path``, as a
    claimed run's image). The file gets 0666 minus the umask. ``durable``: fsync the file and the folder (a
    done run's image survives a power cut); ``fsync_folder=False``: the file only, for a caller that fsyncs
    the folder once after several files (``fsync_dir``) before it relies on them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clear_stale:
        _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, **open_kw) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:  # name the target
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    if durable and fsync_folder:
        fsync_dir(path.parent)


def _remove_stale_temps(path: Path) -> None:
    """Temp files ``atomic_file`` made for ``path`` in an earlier process that was killed mid-write."""
    prefix = f".{path.name}."
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        if leftover.name.startswith(prefix) and leftover.is_file() and not leftover.is_symlink():
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_once(path: "str | Path") -> str:
    """``sha256_file``, computed once per path, size and mtime (checkpoints and LoRA files are large, and every
    run of a sweep names them)."""
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Errors of the place, not of one file: every later write fails too, so a sweep stops (runs back to pending,
# sweep interrupted) instead of failing each run.
FATAL_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EIO})


def is_fatal(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in FATAL_ERRNOS


_ADVICE = {
    errno.EROFS: "the file system is read-only: use a writable folder (--home, -o) or remount it",
    errno.EACCES: "permission denied: use a folder you can write (--home, -o) or fix its permissions",
    errno.EPERM: "operation not permitted: use a folder you can write (--home, -o) or fix its permissions",
    errno.ENOSPC: "the disk is full: free some space, then run the same command again (finished work is kept)",
    errno.EDQUOT: "the disk quota is exceeded: free some space, then run the same command again",
    errno.EFBIG: "the file is larger than this system allows (ulimit -f?): raise the limit or write elsewhere",
    errno.ENAMETOOLONG: "the name is too long for this file system: use a shorter experiment name or folder",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
}


def advice(code: int) -> str | None:
    """What to do about an error of this errno (the store's SQLite reasons use it too: ``db.reason``)."""
    return _ADVICE.get(code)


def os_error_message(e: OSError) -> str:
    """One line: the path (or paths), the system's reason and what to do."""
    where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None) or "a file"
    reason = e.strerror or str(e)
    what_to_do = advice(e.errno)
    return f"{where}: {reason}" + (f"; {what_to_do}" if what_to_do and what_to_do != reason.lower() else "")
