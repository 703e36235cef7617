"""The per-user runtime directory of the VMM service.

Everything the service and bfm trust lives here (the loaded extension, the pid file, the
socket), so nobody else may be able to plant or swap it.  The directory is opened
without following links, must belong to the caller with mode 0700, and every directory
above it must be one that only root or the caller can rename things in (owned by them,
or sticky like /tmp).  Anything else is refused with a one-line reason.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False  # no typing import at run time: bfm's quick commands use this module
if TYPE_CHECKING:
    from typing import Any

_MAX_RECORD = 64 * 1024  # loaded.json and vmm.pid are a few hundred bytes


class RuntimeDirError(Exception):
    """The runtime directory is unusable: another user could reach or replace it."""


def _describe_mode(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"


def _parents(path: str) -> list[str]:
    """``path`` and every directory above it, up to ``/``."""
    chain = [path]
    while (parent := os.path.dirname(chain[-1])) != chain[-1]:
        chain.append(parent)
    return chain


def check_ancestors(directory: str) -> None:
    """Refuse ``directory`` (already resolved) if another user could swap what is in it."""
    uid = os.getuid()
    for ancestor in _parents(directory):
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


class RuntimeDir:
    """``$PYFLANK_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/pyflank``, else /tmp/pyflank-UID.

    ``path`` is absolute, its parent resolved once (symbolic links above the directory are
    followed here and never again); the directory itself is never followed.  Paths are
    strings (``os.path``): bfm's quick commands do not import ``pathlib``.
    """

    __slots__ = ("path",)
    path: str

    def __init__(self, path: str | os.PathLike[str]) -> None:
        given = os.path.abspath(os.fspath(path))
        parent, name = os.path.split(given)
        object.__setattr__(self, "path", os.path.join(os.path.realpath(parent), name))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a RuntimeDir cannot be changed")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuntimeDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"RuntimeDir({self.path!r})"

    @classmethod
    def default(cls) -> RuntimeDir:
        explicit = os.environ.get("PYFLANK_RUNTIME_DIR")
        if explicit:
            return cls(explicit)
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg:
            return cls(os.path.join(xdg, "pyflank"))
        import tempfile  # noqa: PLC0415 - the last resort, and slow to import

        return cls(os.path.join(tempfile.gettempdir(), f"pyflank-{os.getuid()}"))

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def socket(self) -> str:
        return self._file("vmm.sock")

    @property
    def pidfile(self) -> str:
        return self._file("vmm.pid")

    @property
    def loaded(self) -> str:
        return self._file("loaded.json")

    @property
    def log(self) -> str:
        return self._file("vmm.log")

    @property
    def saved_rings(self) -> str:
        """The debug rings of the last run, saved when its service stopped."""
        return self._file("debug-rings.json")

    @property
    def lock(self) -> str:
        return self._file("bfm.lock")

    @property
    def backend_choice(self) -> str:
        """What ``--backend auto`` chose on this host (``cli.backend_choice``)."""
        return self._file("backend-auto.json")

    # -- opening ---------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the directory 0700 if it is missing; refuse one another user could reach."""
        parent = os.path.dirname(self.path)
        try:
            os.makedirs(parent, 0o700, exist_ok=True)
        except OSError as exc:
            raise RuntimeDirError(f"cannot create {parent}: {exc.strerror}") from None
        check_ancestors(parent)
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
        check_ancestors(os.path.dirname(self.path))
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
    def read_text(self, path: str, limit: int = _MAX_RECORD) -> str | None:
        """The text of a regular file in the directory (not a link); None if unreadable."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = b""
            while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
                data += chunk
        finally:
            os.close(fd)
        if len(data) > limit:
            return None
        return data.decode("utf-8", "replace")

    def write_text(self, path: str, text: str) -> None:
        """Replace ``path`` atomically: readers see the old text or the new, whole."""
        self.ensure()
        directory, name = os.path.split(path)
        temporary = os.path.join(directory, f".{name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)

    def read_record(self, path: str, limit: int = _MAX_RECORD) -> dict[str, Any] | None:
        """A JSON object written by ``write_record``; None if absent or not one."""
        text = self.read_text(path, limit)
        if text is None:
            return None
        import json  # noqa: PLC0415 - not on the quick commands' path

        try:
            record = json.loads(text)
        except (ValueError, RecursionError):
            return None
        return record if isinstance(record, dict) else None

    def write_record(self, path: str, record: dict[str, Any]) -> None:
        import json  # noqa: PLC0415 - not on the quick commands' path

        self.write_text(path, json.dumps(record) + "\n")

    def remove(self, path: str) -> None:
        try:  # noqa: SIM105 - contextlib would cost the quick commands an import
            os.unlink(path)
        except FileNotFoundError:
            pass

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
