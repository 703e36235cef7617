"""The per-user runtime directory of the VMM service, and the VMM's status names.

Everything the service and bfm trust lives here (the loaded extension, the pid file, the
socket), so nobody else may be able to plant or swap it.  The directory is opened
without following links, must belong to the caller with mode 0700, and every directory
above it must be one that only root or the caller can rename things in (owned by them,
or sticky like /tmp).  Anything else is refused with a one-line reason.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

_MAX_RECORD = 64 * 1024  # loaded.json and vmm.pid are a few hundred bytes


class VmmStatus(Enum):
    UNLOADED = "VMM_UNLOADED"
    LOADED = "VMM_LOADED"
    RUNNING = "VMM_RUNNING"
    CORRUPT = "VMM_CORRUPT"


class RuntimeDirError(Exception):
    """The runtime directory is unusable: another user could reach or replace it."""


def _describe_mode(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"


def check_ancestors(directory: Path) -> None:
    """Refuse ``directory`` (already resolved) if another user could swap what is in it."""
    uid = os.getuid()
    for ancestor in (directory, *directory.parents):
        try:
            info = os.lstat(ancestor)
        except OSError as exc:
            raise RuntimeDirError(f"cannot inspect {ancestor}: {exc.strerror}") from None
        if info.st_uid not in (0, uid):
            raise RuntimeDirError(
                f"{ancestor} belongs to uid {info.st_uid}: refusing a runtime directory in it"
            )
        others_write = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if others_write and not info.st_mode & stat.S_ISVTX:
            raise RuntimeDirError(
                f"{ancestor} (mode {_describe_mode(info.st_mode)}) is writable by others "
                "and not sticky: refusing a runtime directory in it"
            )


@dataclass(frozen=True)
class RuntimeDir:
    """``$PYFLANK_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/pyflank``, else /tmp/pyflank-UID.

    ``path`` is absolute, its parent resolved once (symbolic links above the directory are
    followed here and never again); the directory itself is never followed.
    """

    path: Path

    def __post_init__(self) -> None:
        given = Path(os.path.abspath(self.path))
        resolved = Path(os.path.realpath(given.parent)) / given.name
        object.__setattr__(self, "path", resolved)

    @classmethod
    def default(cls) -> RuntimeDir:
        explicit = os.environ.get("PYFLANK_RUNTIME_DIR")
        if explicit:
            return cls(Path(explicit))
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg:
            return cls(Path(xdg) / "pyflank")
        return cls(Path(tempfile.gettempdir()) / f"pyflank-{os.getuid()}")

    @property
    def socket(self) -> Path:
        return self.path / "vmm.sock"

    @property
    def pidfile(self) -> Path:
        return self.path / "vmm.pid"

    @property
    def loaded(self) -> Path:
        return self.path / "loaded.json"

    @property
    def log(self) -> Path:
        return self.path / "vmm.log"

    @property
    def saved_rings(self) -> Path:
        """The debug rings of the last run, saved when its service stopped."""
        return self.path / "debug-rings.json"

    @property
    def lock(self) -> Path:
        return self.path / "bfm.lock"

    # -- opening ---------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the directory 0700 if it is missing; refuse one another user could reach."""
        try:
            os.makedirs(self.path.parent, 0o700, exist_ok=True)
        except OSError as exc:
            raise RuntimeDirError(f"cannot create {self.path.parent}: {exc.strerror}") from None
        check_ancestors(self.path.parent)
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise RuntimeDirError(f"cannot create {self.path}: {exc.strerror}") from None
        self._check_directory()

    def exists(self) -> bool:
        """Whether the directory is there; if it is, it is checked like ``ensure``."""
        try:
            os.lstat(self.path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise RuntimeDirError(f"cannot inspect {self.path}: {exc.strerror}") from None
        check_ancestors(self.path.parent)
        self._check_directory()
        return True

    def _check_directory(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                kind = "a symbolic link" if os.path.islink(self.path) else "not a directory"
                raise RuntimeDirError(
                    f"{self.path} is {kind}: refusing it as the runtime directory"
                ) from None
            raise RuntimeDirError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if info.st_uid != os.getuid():
            raise RuntimeDirError(f"{self.path} belongs to uid {info.st_uid}, not to you")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise RuntimeDirError(
                f"{self.path} has mode {_describe_mode(info.st_mode)}: it must be 0700 "
                f"(chmod 700 {self.path})"
            )

    # -- small files (loaded.json, vmm.pid) ---------------------------------------------
    def read_text(self, path: Path, limit: int = _MAX_RECORD) -> str | None:
        """The text of a regular file in the directory (not a link); None if unreadable."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                return None
            data = stream.read(limit + 1)
        if len(data) > limit:
            return None
        return data.decode("utf-8", "replace")

    def write_text(self, path: Path, text: str) -> None:
        """Replace ``path`` atomically: readers see the old text or the new, whole."""
        self.ensure()
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)

    def read_record(self, path: Path, limit: int = _MAX_RECORD) -> dict[str, Any] | None:
        """A JSON object written by ``write_record``; None if absent or not one."""
        text = self.read_text(path, limit)
        if text is None:
            return None
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):
            return None
        return record if isinstance(record, dict) else None

    def write_record(self, path: Path, record: dict[str, Any]) -> None:
        self.write_text(path, json.dumps(record) + "\n")

    def remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    # -- the loaded extension ------------------------------------------------------------
    def read_loaded(self) -> dict[str, str] | None:
        record = self.read_record(self.loaded)
        if record is None or not all(
            isinstance(record.get(key), str) for key in ("extension", "handler")
        ):
            return None
        return {"extension": record["extension"], "handler": record["handler"]}

    def write_loaded(self, record: dict[str, str]) -> None:
        self.write_record(self.loaded, record)

    def forget_loaded(self) -> None:
        self.remove(self.loaded)

    def clean_service_files(self) -> None:
        for path in (self.socket, self.pidfile):
            self.remove(path)
