"""What each bfm command does to the runtime directory and the VMM service.

The state rules are Bareflank's bfm's (``ioctl_driver``), with the differences the
README lists: ``start`` with nothing loaded loads the default handler (and says so),
``stop`` and ``unload`` clean up a corrupt VMM, ``dump`` also works on a corrupt VMM
whose service still answers.  (``bfm vmcall`` goes straight to the service, ``cli.bfm``;
it comes here only to say why no service answered.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyflank.cli import client, protocol
from pyflank.cli.errors import ManagerError
from pyflank.cli.runtime import RuntimeDir
from pyflank.cli.service_launch import ServiceLaunch
from pyflank.cli.service_process import (
    ServiceRecord,
    read_record,
    terminate,
    wait_gone,
    why_not_our_service,
)
from pyflank.cli.vmm_state import VmmStatus, not_running, vcpu_lines

__all__ = ["ManagerError", "Status", "VmmStatus", "status", "why_not_running"]

DEFAULT_EXTENSION = "pyflank.exit_handler.exit_handler_intel_x64:ExitHandlerIntelX64"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PING_TIMEOUT = 10.0  # a loaded service answers slowly; a dead one is refused at once


@dataclass(frozen=True)
class Status:
    """The VMM's state, what is wrong with it, and (for -v) what runs."""

    state: VmmStatus
    problem: str = ""  # why the VMM is corrupt, when it is not one vCPU's stop
    vcpus: list[str] = field(default_factory=list)  # a line per stopped vCPU (-v: every one)
    service: ServiceRecord | None = None  # the verified live service, if there is one
    info: dict[str, Any] = field(default_factory=dict)  # its answer to ping

    @property
    def answering(self) -> bool:
        return bool(self.info)

    def reason(self) -> str:
        """One line: why the VMM is in this state (empty when nothing is wrong)."""
        return "; ".join(([self.problem] if self.problem else []) + self.vcpus)

    def lines(self, verbose: bool) -> list[str]:
        """What ``bfm status`` prints: the state, the vCPUs that stopped (-v: more)."""
        problem = [self.problem] if verbose and self.problem else []
        return [self.state.value, *self.vcpus, *problem]


@contextlib.contextmanager
def _locked(rt: RuntimeDir) -> Iterator[None]:
    """Serialize state changes between concurrent bfm processes."""
    rt.ensure()
    fd = os.open(rt.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def status(rt: RuntimeDir, *, verbose: bool = False) -> Status:
    if not rt.exists():
        return Status(VmmStatus.UNLOADED)
    record = read_record(rt)
    if record is None:
        if os.path.lexists(rt.pidfile) or os.path.lexists(rt.socket):
            return Status(VmmStatus.CORRUPT, "the VMM service left files behind and is gone")
        return Status(VmmStatus.LOADED if rt.read_loaded() is not None else VmmStatus.UNLOADED)
    why = why_not_our_service(rt, record)
    if why is not None:
        return Status(VmmStatus.CORRUPT, f"the VMM service is gone: {why}")
    try:
        info = protocol.call(rt.socket, {"op": "ping"}, PING_TIMEOUT, server_pid=record.pid)
    except protocol.ProtocolError as exc:
        return Status(VmmStatus.CORRUPT, f"the VMM service does not answer: {exc}", service=record)
    if not info.get("ok"):
        if info.get("busy"):  # alive, only full: a busy VMM is a running VMM
            return Status(VmmStatus.RUNNING, str(info.get("error")), service=record)
        return Status(VmmStatus.CORRUPT, str(info.get("error")), service=record)
    vcpus = info.get("vcpus")
    state = VmmStatus.CORRUPT if vcpu_lines(vcpus, everyone=False) else VmmStatus.RUNNING
    return Status(state, vcpus=vcpu_lines(vcpus, everyone=verbose), service=record, info=info)


def load(rt: RuntimeDir, extension: str) -> str:
    from pyflank.cli.extension import load_handler  # noqa: PLC0415 - keeps bfm quick

    spec = _absolute(extension)
    handler = load_handler(spec)  # fail now, before anything changes
    with _locked(rt):
        state = status(rt)
        if state.state is VmmStatus.CORRUPT:
            raise ManagerError(f"the VMM is VMM_CORRUPT ({state.reason()}): run 'bfm stop' first")
        stopped = state.state is VmmStatus.RUNNING and _stop_service(rt, state)
        rt.write_loaded({"extension": spec, "handler": handler.__name__})
    return ("stopped the running VMM; " if stopped else "") + (
        f"loaded {handler.__name__} from {extension}"
    )


def _absolute(extension: str) -> str:
    target, sep, name = extension.partition(":")
    if target.endswith((".py", ".modules")) or "/" in target:
        return os.path.abspath(target) + sep + name  # not resolved: load already checked it
    return extension


def unload(rt: RuntimeDir) -> str:
    stop(rt)
    with _locked(rt):
        rt.forget_loaded()
    return "unloaded"


def start(
    rt: RuntimeDir,
    *,
    backend: str = "auto",
    vcpus: int = 1,
    memory: int = 0,
    launch: ServiceLaunch | None = None,
) -> str:
    """Start the VMM (restarting a running one); ``launch``: a service spawned early."""
    if vcpus < 1:
        raise ManagerError("--vcpus must be at least 1", exit_code=2)
    from pyflank.cli.backend_choice import choose_backend  # noqa: PLC0415 - probes KVM

    choice = choose_backend(backend, rt)
    lines = []
    with _locked(rt):
        state = status(rt)
        if state.state is VmmStatus.CORRUPT:
            raise ManagerError(f"the VMM is VMM_CORRUPT ({state.reason()}): run 'bfm stop' first")
        if state.state is VmmStatus.RUNNING:  # Bareflank restarts a running VMM
            _stop_service(rt, state)
            lines.append("stopped the running VMM")
        record = rt.read_loaded()
        if record is None:  # pyflank has a handler to run without a load: the seed's
            record = {"extension": DEFAULT_EXTENSION, "handler": "ExitHandlerIntelX64"}
            rt.write_loaded(record)
            lines.append("nothing was loaded: loaded the default handler ExitHandlerIntelX64")
        arguments = ["--extension", record["extension"], "--backend", choice.name,
                     "--vcpus", str(vcpus), "--memory", str(memory)]  # fmt: skip
        info = _spawn(rt, arguments, launch)
    lines.append(f"started {record['handler']} on {vcpus} vCPU(s), backend {info.get('backend')}")
    if choice.why:
        lines.append(choice.why)
    if info.get("capabilities"):
        lines.append(str(info["capabilities"]))
    return "\n".join(lines)


def _spawn(
    rt: RuntimeDir,
    arguments: list[str],
    launch: ServiceLaunch | None,
) -> dict[str, Any]:
    """Start the service (the one ``launch`` spawned already, if given): its first
    ``ping`` answer, sent through a pipe the moment it serves (no polling)."""
    rt.remove(rt.pidfile)
    rt.remove(rt.saved_rings)
    launch = launch or ServiceLaunch(rt)
    launch.order(arguments)
    line = launch.wait_ready(START_TIMEOUT)
    process = launch.process
    record = read_record(rt)
    if line and record is not None and record.pid == process.pid:
        with contextlib.suppress(ValueError):
            info = protocol.loads(line)
            if isinstance(info, dict) and info.get("ok"):
                return info
    if line is None and process.poll() is None:
        process.kill()
        process.wait(STOP_TIMEOUT)
        rt.clean_service_files()
        raise ManagerError("the VMM service did not come up in time")
    process.wait(STOP_TIMEOUT)  # it is ending: let it say why first
    rt.clean_service_files()
    raise ManagerError(f"the VMM service failed to start: {_last_log_line(rt)}")


def _last_log_line(rt: RuntimeDir) -> str:
    with contextlib.suppress(OSError), open(rt.log, "rb") as log:
        text = log.read().decode("utf-8", "replace")
        lines = [line for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "no output"


def _stop_service(rt: RuntimeDir, state: Status) -> bool:
    """Stop the service ``state`` found (only a verified one is ever signalled); clean up.
    Whether a live service was stopped."""
    service = state.service
    client.forget(rt)  # this process's idle vmcall connections to it
    if service is not None:
        if state.answering or state.state is VmmStatus.CORRUPT:
            with contextlib.suppress(protocol.ProtocolError):
                protocol.call(rt.socket, {"op": "stop"}, STOP_TIMEOUT, server_pid=service.pid)
        if not wait_gone(rt, service, STOP_TIMEOUT):
            terminate(rt, service, STOP_TIMEOUT)
    rt.clean_service_files()
    return service is not None


def stop(rt: RuntimeDir) -> str:
    with _locked(rt):
        state = status(rt)
        if state.state not in (VmmStatus.RUNNING, VmmStatus.CORRUPT):
            return "the VMM was not running"
        _stop_service(rt, state)
    if state.state is VmmStatus.CORRUPT:
        return f"stopped (cleaned up a VMM that had failed: {state.reason()})"
    return "stopped"


def _answering(rt: RuntimeDir, what: str) -> Status:
    state = status(rt)
    if not state.answering:
        why = f": {state.reason()}" if state.reason() else ""
        raise ManagerError(
            f"the VMM is not running ({state.state.value}{why}): {what} needs 'bfm start' first"
        )
    return state


def _request(rt: RuntimeDir, state: Status, message: dict[str, Any]) -> dict[str, Any]:
    assert state.service is not None
    reply = protocol.call(rt.socket, message, 60.0, server_pid=state.service.pid)
    if not reply.get("ok"):
        raise ManagerError(str(reply.get("error", "the VMM refused the request")))
    return reply


def dump(rt: RuntimeDir, vcpuid: int) -> str:
    state = status(rt)
    if state.state is VmmStatus.LOADED:  # as Bareflank: the ring outlives the run
        rings = rt.read_record(rt.saved_rings, limit=64 << 20) or {}
        text = rings.get(str(vcpuid))
        if not isinstance(text, str):
            raise ManagerError(f"no debug ring of vCPU {vcpuid} from the last run")
        return text.rstrip("\n")
    state = _answering(rt, "dump")
    return str(_request(rt, state, {"op": "dump", "vcpuid": vcpuid})["text"]).rstrip("\n")


def stats(rt: RuntimeDir, *, timeline: bool = False) -> dict[str, Any]:
    """The running VMM's exit statistics (``ExitStatistics.as_dict``)."""
    state = _answering(rt, "stats")
    figures = _request(rt, state, {"op": "stats", "timeline": timeline}).get("stats")
    if not isinstance(figures, dict):
        raise ManagerError("the VMM sent no statistics")
    return figures


def why_not_running(rt: RuntimeDir, detail: str) -> ManagerError:
    """The error of a vmcall that found no service to send to (``detail``: what failed)."""
    state = status(rt)
    if state.state is VmmStatus.RUNNING:  # it came up (or is full) since: say what failed
        return ManagerError(f"cannot reach the VMM: {detail}")
    return ManagerError(not_running(state.state, state.reason()))


def status_lines(rt: RuntimeDir, verbose: bool) -> Sequence[str]:
    return status(rt, verbose=verbose).lines(verbose)


def check(path: Path) -> str:
    # Imported here so that the other commands do not pay for the checks.
    from pyflank.cli.files import read_input  # noqa: PLC0415
    from pyflank.intel_x64 import checks  # noqa: PLC0415
    from pyflank.intel_x64.cpu import ModelCpu  # noqa: PLC0415
    from pyflank.intel_x64.vmcs_json import vmcs_from_json  # noqa: PLC0415

    text = read_input(path, 16 << 20).decode("utf-8", "replace")
    try:
        vmcs = vmcs_from_json(text)
    except (ValueError, RecursionError) as exc:
        raise ManagerError(f"{path}: {exc}", exit_code=2) from None
    violations = checks.check_all(vmcs, ModelCpu())
    if not violations:
        return f"{path}: passes all {len(checks.CHECKS)} VM-entry checks"
    findings = "\n".join(str(v) for v in violations)
    raise ManagerError(f"{path}: {len(violations)} VM-entry check violation(s)", output=findings)
