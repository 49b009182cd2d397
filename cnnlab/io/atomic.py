"""Atomic file writes: a file is either the old version or the complete new one.

``atomic_write`` writes into a temporary file in the destination's directory (same
file system, so the final rename is atomic), flushes and fsyncs it, then
``os.replace``-s it over the destination. If anything goes wrong before that, the
temporary file is removed and the destination is untouched: a crash or an exception
never leaves a half-written checkpoint behind.
"""
import contextlib
import os
import secrets
import stat

_WRITE_MODES = {"wb", "w", "wt"}


def open_temporary(directory, base):
    """Create a fresh temporary file next to the destination; returns (fd, path).

    Created with O_EXCL and mode 0o666, so the process umask gives the file the same
    permissions a plain ``open(path, "w")`` would.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Open ``path`` for writing so that the file appears only when complete.

    Usage::

        with atomic_write("ckpt.npz") as f:
            np.savez(f, **arrays)

    mode: "wb" (default) or "w"/"wt" for text (``encoding`` defaults to UTF-8 then).
    The temporary file lives in the same directory as ``path``; on success it is
    flushed, fsynced and renamed over ``path``; on any exception (including
    KeyboardInterrupt) it is deleted and the exception re-raised. Replacing an existing file
    keeps its permission bits; a symbolic link at ``path`` stays, and the file it points to
    is the one replaced.
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"atomic_write mode must be one of {sorted(_WRITE_MODES)}, got {mode!r}")
    path = os.path.realpath(os.fspath(path))
    binary = "b" in mode
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    fd, temp = open_temporary(directory, os.path.basename(path))
    try:
        os.chmod(temp, stat.S_IMODE(os.stat(path).st_mode))    # an existing file's mode
    except OSError:     # none there yet (or unreadable): the new file's own mode stays
        pass
    try:
        if binary:
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8")
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_directory(directory)
