"""The real gdb for the stub's tests: Debian's, from PATH, else fetched with the package
manager (``apt-get download gdb``, unpacked into the user's cache); the tests skip, saying
why, only where neither gives a gdb that runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyflank.platform.linux.debian import Apt, PackagesUnavailable


def _runs(gdb: str) -> str | None:
    """Why ``gdb`` does not run, or None when it does."""
    try:
        done = subprocess.run([gdb, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return str(exc)
    return None if done.returncode == 0 else (done.stderr.strip() or "gdb --version failed")


def _fetched() -> str:
    """Debian's gdb, unpacked into the cache; ``PackagesUnavailable`` with the reason."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    target = Path(base) / "pyflank" / "gdb" / "gdb"
    if not target.is_file():
        apt = Apt()
        apt.fetch(apt.show("gdb"), {"./usr/bin/gdb": target})
        target.chmod(0o755)
    why = _runs(str(target))
    if why is not None:
        raise PackagesUnavailable(f"Debian's gdb, unpacked, does not run here: {why}")
    return str(target)


@pytest.fixture(scope="session")
def gdb_binary() -> str:
    found = shutil.which("gdb")
    if found is not None and _runs(found) is None:
        return found
    try:
        return _fetched()
    except PackagesUnavailable as exc:
        pytest.skip(f"no gdb: none on PATH, and {exc}")
