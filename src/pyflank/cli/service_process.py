"""Which process is this user's VMM service: the pid file, checked before it is believed.

The pid file holds the service's pid, as pid files do.  A pid is trusted only if that
process is alive now, belongs to the caller and runs ``pyflank.cli.service`` for this
runtime directory: a pid reused by any other process fails the check, and another user
cannot pass it by naming our directory in its own command line.  Signals go through a
pidfd opened before the check, so a pid reused between the check and the signal can
never receive it.  A pid of 1 or less is never a service.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # no typing import at run time: bfm's quick commands use this module
if TYPE_CHECKING:
    from pyflank.cli.runtime import RuntimeDir

SERVICE_MODULE = "pyflank.cli.service"


class ServiceRecord:
    """What the pid file says: the service's pid."""

    __slots__ = ("pid",)

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ServiceRecord) and other.pid == self.pid

    def __hash__(self) -> int:
        return hash(self.pid)

    def __repr__(self) -> str:
        return f"ServiceRecord(pid={self.pid})"

    @classmethod
    def of_this_process(cls) -> ServiceRecord:
        return cls(os.getpid())


def _proc(pid: int, name: str = "") -> str:
    return f"/proc/{pid}/{name}"


def _read(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def _state(pid: int) -> str | None:
    """The process state letter of ``/proc/PID/stat`` (None: no such process)."""
    try:
        text = _read(_proc(pid, "stat")).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may contain anything: split after it.
    fields = text.rsplit(")", 1)[-1].split()
    return fields[0] if fields else None


def write_record(rt: RuntimeDir, record: ServiceRecord) -> None:
    rt.write_text(rt.pidfile, f"{record.pid}\n")


def read_record(rt: RuntimeDir) -> ServiceRecord | None:
    text = rt.read_text(rt.pidfile)
    if text is None or not text.strip().isdigit():
        return None
    return ServiceRecord(int(text))


def why_not_our_service(rt: RuntimeDir, record: ServiceRecord) -> str | None:
    """None if ``record`` is this user's live VMM service for ``rt``; else the reason."""
    pid = record.pid
    if pid <= 1:
        return f"pid {pid} cannot be a VMM service"
    state = _state(pid)
    if state is None:
        return f"no process {pid}"
    if state in ("Z", "X"):
        return f"process {pid} has exited"
    try:
        owner = os.stat(_proc(pid)).st_uid
        argv = _read(_proc(pid, "cmdline")).split(b"\0")
    except OSError as exc:
        return f"cannot inspect process {pid}: {exc.strerror}"
    if owner != os.getuid():
        return f"process {pid} belongs to uid {owner}, not to you"
    wanted = [b"--runtime-dir", os.fsencode(rt.path)]
    runs_service = SERVICE_MODULE.encode() in argv
    for_this_dir = any(argv[i : i + 2] == wanted for i in range(len(argv) - 1))
    if not (runs_service and for_this_dir):
        return f"process {pid} is not the VMM service of {rt.path}"
    return None


def signal_service(rt: RuntimeDir, record: ServiceRecord, signum: int) -> bool:
    """Send ``signum`` to the service ``record`` names, only if it checks out; sent?"""
    import signal  # noqa: PLC0415 - its enums cost the quick commands an import

    try:
        fd = os.pidfd_open(record.pid)
    except OSError:
        return False
    try:
        # Checked after the pidfd pins the process: a pid reused later cannot be hit.
        if why_not_our_service(rt, record) is not None:
            return False
        try:  # noqa: SIM105 - contextlib would cost the quick commands an import
            signal.pidfd_send_signal(fd, signum)
        except ProcessLookupError:
            pass
        return True
    finally:
        os.close(fd)


def wait_gone(rt: RuntimeDir, record: ServiceRecord, timeout: float) -> bool:
    """Wait until the service ``record`` names has exited; gone in time?"""
    deadline = time.monotonic() + timeout
    while why_not_our_service(rt, record) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def terminate(rt: RuntimeDir, record: ServiceRecord, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it does not go in time; only ever the verified service."""
    import signal  # noqa: PLC0415 - its enums cost the quick commands an import

    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not signal_service(rt, record, signum) or wait_gone(rt, record, timeout):
            return
