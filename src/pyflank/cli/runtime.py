"""The per-user runtime directory of the VMM service, and the VMM's status."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class VmmStatus(Enum):
    UNLOADED = "VMM_UNLOADED"
    LOADED = "VMM_LOADED"
    RUNNING = "VMM_RUNNING"
    CORRUPT = "VMM_CORRUPT"


class RuntimeDirError(Exception):
    """The runtime directory is unusable (wrong owner or permissions)."""


@dataclass(frozen=True)
class RuntimeDir:
    """``$PYFLANK_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/pyflank``, else /tmp/pyflank-UID."""

    path: Path

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

    def ensure(self) -> None:
        """Create the directory 0700; refuse one another user could reach."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.path.stat()
        if info.st_uid != os.getuid():
            raise RuntimeDirError(f"{self.path} belongs to uid {info.st_uid}, not to you")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(self.path, 0o700)

    # -- the loaded extension ------------------------------------------------
    def read_loaded(self) -> dict[str, str] | None:
        try:
            record = json.loads(self.loaded.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def write_loaded(self, record: dict[str, str]) -> None:
        self.ensure()
        self.loaded.write_text(json.dumps(record) + "\n")

    def forget_loaded(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.loaded.unlink()

    # -- the service process ---------------------------------------------------
    def read_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def clean_service_files(self) -> None:
        for path in (self.socket, self.pidfile):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); its /proc state says otherwise.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True
