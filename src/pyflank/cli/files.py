"""The files a bfm command line names: read and written without ever blocking or
reading forever (a FIFO, /dev/zero), each failure a one-line ``UsageError``.  Paths are
strings or path objects; this module imports no ``pathlib`` (``bfm vmcall`` uses it)."""

from __future__ import annotations

import fcntl
import os
import stat

from pyflank.cli.errors import UsageError


def _reason(exc: OSError | ValueError) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def read_input(path: str | os.PathLike[str], limit: int, limit_name: str = "") -> bytes:
    """The bytes of the regular file ``path``; more than ``limit`` bytes is refused
    (the message calls the limit ``limit_name``, if given)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without a writer
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise UsageError(f"cannot read {path}: {_reason(exc)}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "it is a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise UsageError(f"cannot read {path}: {kind}")
    with os.fdopen(fd, "rb") as stream:
        try:
            data = stream.read(limit + 1)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {_reason(exc)}") from None
    if len(data) > limit:
        size = max(len(data), os.stat(path).st_size)
        raise UsageError(f"{path}: {size} bytes exceeds {limit_name or f'{limit} bytes'}")
    return data


def write_output(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` (a regular file, created if missing, or a device)."""
    try:
        # Non-blocking open: a FIFO without a reader fails (ENXIO) instead of hanging.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o666)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write {path}: {_reason(exc)}") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        os.close(fd)
        raise UsageError(f"cannot write {path}: not a regular file")
    with os.fdopen(fd, "wb") as stream:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        try:
            stream.write(data)
            stream.flush()
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {_reason(exc)}") from None
