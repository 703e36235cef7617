"""What each bfm command does to the runtime directory and the VMM service."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyflank.cli import protocol
from pyflank.cli.runtime import RuntimeDir, VmmStatus, process_alive

DEFAULT_EXTENSION = "pyflank.exit_handler.exit_handler_intel_x64:ExitHandlerIntelX64"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PING_TIMEOUT = 2.0


class ManagerError(Exception):
    """A command refused in the VMM's current state, or a service failure."""

    def __init__(self, message: str, exit_code: int = 1, output: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.output = output  # printed on stdout before the one-line reason


@contextlib.contextmanager
def _locked(rt: RuntimeDir) -> Iterator[None]:
    """Serialize state changes between concurrent bfm processes."""
    rt.ensure()
    with open(rt.path / "bfm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ping(rt: RuntimeDir) -> bool:
    try:
        return protocol.call(rt.socket, {"op": "ping"}, PING_TIMEOUT).get("ok") is True
    except protocol.ProtocolError:
        return False


def status(rt: RuntimeDir) -> VmmStatus:
    pid = rt.read_pid()
    if pid is not None or rt.socket.exists():
        if pid is not None and process_alive(pid) and _ping(rt):
            return VmmStatus.RUNNING
        return VmmStatus.CORRUPT
    return VmmStatus.LOADED if rt.read_loaded() is not None else VmmStatus.UNLOADED


def load(rt: RuntimeDir, extension: str) -> str:
    with _locked(rt):
        state = status(rt)
        if state in (VmmStatus.RUNNING, VmmStatus.CORRUPT):
            raise ManagerError(f"the VMM is {state.value}: run 'bfm stop' first")
        from pyflank.cli.extension import load_handler  # noqa: PLC0415 - keeps bfm quick

        spec = _absolute(extension)
        handler = load_handler(spec)  # fail now, not at start
        rt.write_loaded({"extension": spec, "handler": handler.__name__})
        return f"loaded {handler.__name__} from {extension}"


def _absolute(extension: str) -> str:
    target, sep, name = extension.partition(":")
    if target.endswith((".py", ".modules")) or "/" in target:
        return str(Path(target).resolve()) + sep + name
    return extension


def unload(rt: RuntimeDir) -> str:
    stop(rt)
    with _locked(rt):
        rt.forget_loaded()
    return "unloaded"


def start(rt: RuntimeDir, *, backend: str = "auto", vcpus: int = 1) -> str:
    if vcpus < 1:
        raise ManagerError("--vcpus must be at least 1", exit_code=2)
    with _locked(rt):
        state = status(rt)
        if state is VmmStatus.RUNNING:
            return "the VMM is already running"
        if state is VmmStatus.CORRUPT:
            raise ManagerError("the VMM is VMM_CORRUPT: run 'bfm stop' to clean it up")
        record = rt.read_loaded()
        if record is None:  # start implies load: the default exit handler
            record = {"extension": DEFAULT_EXTENSION, "handler": "ExitHandlerIntelX64"}
            rt.write_loaded(record)
        _spawn(rt, record["extension"], backend, vcpus)
        info = protocol.call(rt.socket, {"op": "ping"}, PING_TIMEOUT)
    lines = [f"started {record['handler']} on {vcpus} vCPU(s), backend {info.get('backend')}"]
    if info.get("capabilities"):
        lines.append(str(info["capabilities"]))
    return "\n".join(lines)


def _spawn(rt: RuntimeDir, extension: str, backend: str, vcpus: int) -> None:
    command = [
        sys.executable, "-m", "pyflank.cli.service", "--runtime-dir", str(rt.path),
        "--extension", extension, "--backend", backend, "--vcpus", str(vcpus),
    ]  # fmt: skip
    with open(rt.log, "ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    rt.pidfile.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            rt.clean_service_files()
            raise ManagerError(f"the VMM service failed to start: {_last_log_line(rt)}")
        if rt.socket.exists() and _ping(rt):
            return
        time.sleep(0.02)
    _terminate(process.pid)
    rt.clean_service_files()
    raise ManagerError("the VMM service did not come up in time")


def _last_log_line(rt: RuntimeDir) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in rt.log.read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "no output"


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if process_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop(rt: RuntimeDir) -> str:
    with _locked(rt):
        state = status(rt)
        pid = rt.read_pid()
        if state is VmmStatus.RUNNING:
            with contextlib.suppress(protocol.ProtocolError):
                protocol.call(rt.socket, {"op": "stop"}, STOP_TIMEOUT)
        if pid is not None:
            deadline = time.monotonic() + STOP_TIMEOUT
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if process_alive(pid):
                _terminate(pid)
        rt.clean_service_files()
    if state is VmmStatus.CORRUPT:
        return "stopped (cleaned up a VMM that had died)"
    return "stopped" if state is VmmStatus.RUNNING else "the VMM was not running"


def _require_running(rt: RuntimeDir) -> None:
    state = status(rt)
    if state is not VmmStatus.RUNNING:
        raise ManagerError(f"the VMM is not running ({state.value}): run 'bfm start' first")


def _request(rt: RuntimeDir, message: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    _require_running(rt)
    reply = protocol.call(rt.socket, message, timeout)
    if not reply.get("ok"):
        raise ManagerError(str(reply.get("error", "the VMM refused the request")))
    return reply


def dump(rt: RuntimeDir, vcpuid: int) -> str:
    return str(_request(rt, {"op": "dump", "vcpuid": vcpuid})["text"]).rstrip("\n")


def vmcall(rt: RuntimeDir, cpuid: int, request: dict[str, Any]) -> dict[str, Any]:
    return _request(rt, {"op": "vmcall", "cpuid": cpuid, **request})


def check(path: Path) -> str:
    # Imported here so that the other commands do not pay for the checks.
    from pyflank.intel_x64 import checks  # noqa: PLC0415
    from pyflank.intel_x64.cpu import ModelCpu  # noqa: PLC0415
    from pyflank.intel_x64.vmcs_json import vmcs_from_json  # noqa: PLC0415

    try:
        text = path.read_text()
    except OSError as exc:
        raise ManagerError(f"cannot read {path}: {exc.strerror}", exit_code=2) from None
    try:
        vmcs = vmcs_from_json(text)
    except ValueError as exc:
        raise ManagerError(f"{path}: {exc}", exit_code=2) from None
    violations = checks.check_all(vmcs, ModelCpu())
    if not violations:
        return f"{path}: passes all {len(checks.CHECKS)} VM-entry checks"
    findings = "\n".join(str(v) for v in violations)
    raise ManagerError(f"{path}: {len(violations)} VM-entry check violation(s)", output=findings)
