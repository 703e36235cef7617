"""The real gdb for the stub's tests: Debian's, from PATH, else fetched with the package
manager (``apt-get download gdb``, unpacked into the user's cache); the tests skip, saying
why, only where neither gives a gdb that runs.  ``debug`` runs a Vm under it in batch mode."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyflank.platform.linux.debian import Apt, PackagesUnavailable
from pyflank.vmm import VcpuResult, Vm


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


@dataclass
class Session:
    transcript: str
    results: list[VcpuResult]


def debug(gdb: str, vm: Vm, commands: Sequence[str], *, timeout: float = 60) -> Session:
    """Run ``vm`` and a gdb that connects to its stub and runs ``commands``; both to the end."""
    assert vm.gdb is not None
    results: list[list[VcpuResult]] = []
    runner = threading.Thread(target=lambda: results.append(vm.run(timeout=timeout)))
    runner.start()
    script = ["set pagination off", "set confirm off", f"target remote {vm.gdb.address}"]
    args = [gdb, "-nx", "-batch"]
    for command in [*script, *commands]:
        args += ["-ex", command]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    runner.join(timeout)
    assert not runner.is_alive(), "the Vm did not finish"
    return Session(done.stdout + done.stderr, results[0])
