"""The VMM service ``bfm start`` runs in the background: a VM, its guest agent, a socket.

    python -m pyflank.cli.service --runtime-dir DIR --extension SPEC [--backend B]
                                  [--vcpus N] [--memory BYTES] [--ready-fd FD]

It answers bfm's requests on ``DIR/vmm.sock`` (mode 0600, its own user only) until
``stop`` or SIGTERM: control messages as JSON lines, vmcalls as frames on persistent
connections (``cli.server``, ``cli.wire``).  A vCPU that stops (its handler raised, its
agent halted) is reported by ``ping``, fails the vmcall it was running at once with the
reason, and makes the VMM refuse vmcalls as ``VMM_CORRUPT`` from then on.  With
``--ready-fd``, the answer to ``ping`` is written to that descriptor once the service
serves (how ``bfm start`` learns it is up without polling).

Only the backend chosen is imported (``backends.factory``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from pyflank import guests
from pyflank.abi import (
    BF_VMCALL_FAILURE,
    OPCODE_SLOT,
    SLOTS,
    STATUS_SLOT,
    VMCALL_OUT_BUFFER_SIZE,
    VmcallOpcode,
)
from pyflank.backends.base import BackendUnavailable
from pyflank.backends.factory import NAMES, resolve
from pyflank.cli import wire
from pyflank.cli.bounded_log import BoundedStream
from pyflank.cli.errors import ExtensionError
from pyflank.cli.extension import load_handler
from pyflank.cli.json_text import dumps, loads
from pyflank.cli.runtime import RuntimeDir, RuntimeDirError
from pyflank.cli.server import READ_TIMEOUT, Reply, ServiceServer, error_reply
from pyflank.cli.service_process import ServiceRecord, read_record, write_record
from pyflank.cli.vmm_state import VmmStatus, not_running, vcpu_lines
from pyflank.observe.statistics import ExitStatistics
from pyflank.platform.mailbox import (
    BASE_PORT,
    SLOT_SIZE,
    Mailbox,
    MailboxError,
    Ticket,
    VmcallReply,
)
from pyflank.vmm import VcpuResult, Vm

log = logging.getLogger("pyflank.service")

MAILBOX_BASE = 0x400000
VMCALL_TIMEOUT = 30.0
TIMELINE_LIMIT = 100_000  # exits per vCPU kept for bfm stats --plot (about 1 MiB)
_TWO_MIB = 0x200000


def memory_size(vcpus: int, at_least: int = 16 << 20) -> int:
    end = MAILBOX_BASE + vcpus * SLOT_SIZE
    return max(at_least, (end + _TWO_MIB - 1) // _TWO_MIB * _TWO_MIB)


def agent_source() -> str:
    constants = (
        f".equ MAILBOX_BASE, {MAILBOX_BASE:#x}\n"
        f".equ MAILBOX_SLOT, {SLOT_SIZE:#x}\n"
        f".equ MAILBOX_PORT, {BASE_PORT:#x}\n"
    )
    return constants + guests.read("agent.s")


def stop_text(result: VcpuResult) -> str:
    return f"{result.reason.value}: {result.message}" if result.message else result.reason.value


@dataclass(frozen=True)
class ServiceLimits:
    vmcall_timeout: float = VMCALL_TIMEOUT  # a vmcall the agent does not answer by then fails
    read_timeout: float = READ_TIMEOUT  # a client that sends no request by then is closed


class VmmService:
    def __init__(
        self,
        rt: RuntimeDir,
        extension: str,
        backend: str,
        vcpus: int,
        memory: int = 0,
        limits: ServiceLimits = ServiceLimits(),
    ) -> None:
        self.rt = rt
        self.limits = limits
        self.handler = load_handler(extension)
        self.backend = resolve(backend)
        self.statistics = ExitStatistics(log_table=False, timeline_limit=TIMELINE_LIMIT)
        self.vm = Vm(
            self.handler, vcpus=vcpus, backend=self.backend,
            memory_size=memory_size(vcpus, memory), observers=[self.statistics],
        )  # fmt: skip
        self.mailbox = Mailbox(self.vm.memory, MAILBOX_BASE, vcpus)
        self.vm.bus.insert(self.mailbox, BASE_PORT, self.mailbox.port_count, "bfm-mailbox")
        self.vm.load_asm(agent_source())
        self.stopped = threading.Event()
        self.record = ServiceRecord.of_this_process()
        self._stops: dict[int, VcpuResult] = {}
        self._failure = ""  # why the VM as a whole could not run, if it could not
        self._vm_thread = threading.Thread(target=self._run_vm, name="vm", daemon=True)

    def _run_vm(self) -> None:
        try:
            self.vm.run(timeout=None, on_stop=self._vcpu_stopped)
        except BaseException as exc:  # noqa: BLE001 - the VM could not run: say so, serve on
            log.error("the VM could not run: %s: %s", type(exc).__name__, exc)
            self._failure = f"the VM could not run: {type(exc).__name__}: {exc}"
        finally:
            self.mailbox.stop(self._failure or "the VM has stopped")  # nobody will answer

    def _vcpu_stopped(self, result: VcpuResult) -> None:
        self._stops[result.vcpuid] = result
        self.mailbox.stop_vcpu(result.vcpuid, stop_text(result))
        if not self.stopped.is_set():
            log.error("vCPU %d stopped: %s", result.vcpuid, stop_text(result))

    def vcpu_states(self) -> list[dict[str, Any]]:
        states: list[dict[str, Any]] = []
        for vcpu in self.vm.vcpus:
            result = self._stops.get(vcpu.vcpuid)
            if result is None and self._failure:
                states.append({"vcpuid": vcpu.vcpuid, "state": "stopped", "reason": "error",
                               "message": self._failure})  # fmt: skip
            elif result is None:
                states.append({"vcpuid": vcpu.vcpuid, "state": "running"})
            else:
                stop = {"reason": result.reason.value, "message": result.message}
                states.append({"vcpuid": vcpu.vcpuid, "state": "stopped", **stop})
        return states

    # -- requests (on the server thread) ------------------------------------------------
    def ping(self) -> dict[str, Any]:
        capabilities = self.vm.capabilities
        return {
            "ok": True,
            "pid": self.record.pid,
            "handler": self.handler.__name__,
            "backend": self.backend,
            "vcpus": self.vcpu_states(),
            "capabilities": capabilities.describe() if capabilities else "",
        }

    def message(self, request: dict[str, Any], reply: Reply) -> None:
        op = request.get("op")
        if op == "ping":
            reply.json(self.ping())
        elif op == "dump":
            vcpuid = request.get("vcpuid", 0)
            if type(vcpuid) is not int or not 0 <= vcpuid < len(self.vm.vcpus):
                reply.json(error_reply(f"no vCPU {vcpuid!r} (the VMM runs {len(self.vm.vcpus)})"))
            else:
                reply.json({"ok": True, "text": self.vm.vcpus[vcpuid].debug_ring.read()})
        elif op == "stats":  # bfm stats: the exits so far (a dict copy is atomic)
            timeline = request.get("timeline") is True
            reply.json({"ok": True, "stats": self.statistics.as_dict(timeline=timeline)})
        elif op == "vmcall":
            self._vmcall_message(request, reply)
        elif op == "stop":
            threading.Thread(target=self.stop, daemon=True).start()
            reply.json({"ok": True})
        else:
            reply.json(error_reply(f"unknown request {op!r}"))

    def _refusal(self, cpuid: int) -> str | None:
        """Why no vmcall can be made on ``cpuid`` now (None: it can)."""
        if not 0 <= cpuid < len(self.vm.vcpus):
            return f"no vCPU {cpuid} (the VMM runs {len(self.vm.vcpus)})"
        if (self._stops or self._failure) and not self.stopped.is_set():
            reason = "; ".join(vcpu_lines(self.vcpu_states(), everyone=False))
            return not_running(VmmStatus.CORRUPT, reason)
        return None

    def vmcall(self, frame: wire.Frame, reply: Reply) -> None:
        """A vmcall frame: answered from the vCPU thread that runs it."""
        cpuid = frame.cpuid
        refused = self._refusal(cpuid)
        if refused is not None:
            reply.frame(wire.refusal(refused, cpuid))
            return
        out_size = min(frame.out_size, VMCALL_OUT_BUFFER_SIZE)

        def done(answer: VmcallReply | None, error: str) -> None:
            if answer is None:
                reply.frame(wire.refusal(error, cpuid))
            else:
                reply.frame(wire.encode(wire.ANSWER, cpuid, answer.registers, answer.out, out_size))

        self._submit(cpuid, list(frame.registers), frame.payload, out_size, done, reply)

    def _submit(
        self,
        cpuid: int,
        registers: list[int],
        data: bytes,
        out_size: int,
        done: Callable[[VmcallReply | None, str], None],
        reply: Reply,
    ) -> None:
        timeout = self.limits.vmcall_timeout
        submitted: list[Ticket] = []

        def overdue() -> None:
            for ticket in submitted:
                self.mailbox.cancel(ticket, timeout)  # its done() replies

        reply.expire(timeout, overdue)
        try:
            submitted.append(self.mailbox.submit(cpuid, registers, data, done, out_size))
        except MailboxError as exc:
            done(None, str(exc))

    def _vmcall_message(self, request: dict[str, Any], reply: Reply) -> None:
        """A vmcall as a JSON message: registers by slot name, buffers in base64."""
        cpuid, given = request.get("cpuid", 0), request.get("regs", {})
        if type(cpuid) is not int or not isinstance(given, dict):
            reply.json(error_reply("malformed vmcall request"))
            return
        refused = self._refusal(cpuid)
        if refused is not None:
            reply.json(error_reply(refused))
            return
        registers = [0] * len(SLOTS)
        for name, value in given.items():
            index = int(name[1:]) if name[:1] == "r" and name[1:].isdigit() else -1
            valid = type(value) is int and 0 <= value < 1 << 64
            if not 0 <= index < len(SLOTS) or not valid:
                reply.json(error_reply(f"bad register {name!r}={value!r}"))
                return
            registers[index] = value
        encoded, out_size = request.get("in", ""), request.get("out_size", VMCALL_OUT_BUFFER_SIZE)
        if not isinstance(encoded, str) or type(out_size) is not int or out_size < 0:
            reply.json(error_reply("malformed vmcall buffers"))
            return
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            reply.json(error_reply("the input buffer is not base64"))
            return
        is_data = registers[SLOTS.index(OPCODE_SLOT)] == VmcallOpcode.DATA

        def done(answer: VmcallReply | None, error: str) -> None:
            if answer is None:
                reply.json(error_reply(error))
                return
            regs = dict(zip(SLOTS, answer.registers, strict=True))
            result: dict[str, Any] = {"ok": True, "ret": regs[STATUS_SLOT], "regs": regs}
            if is_data and regs[STATUS_SLOT] != BF_VMCALL_FAILURE:
                result["out"] = base64.b64encode(answer.out).decode()
            reply.json(result)

        out_size = min(out_size, VMCALL_OUT_BUFFER_SIZE)
        self._submit(cpuid, registers, data, out_size, done, reply)

    # -- lifetime ---------------------------------------------------------------------
    def serve(self, ready_fd: int | None = None) -> None:
        self.rt.ensure()
        self.rt.remove(self.rt.socket)
        old_umask = os.umask(0o177)  # the socket is born 0600: only this user may connect
        try:
            server = ServiceServer(self.rt.socket, self, self.limits.read_timeout)
        finally:
            os.umask(old_umask)
        os.chmod(self.rt.socket, 0o600)
        self._server = server
        write_record(self.rt, self.record)
        self._vm_thread.start()
        try:
            if ready_fd is not None:
                _tell_ready(ready_fd, self.ping())
            server.serve_forever()
        finally:
            server.server_close()
            self._leave()

    def stop(self, *_: object) -> None:
        """Stop the vCPUs, then the server (``serve`` returns and cleans up)."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.mailbox.stop()
        self._vm_thread.join(10)
        self._server.shutdown()

    def _leave(self) -> None:
        if read_record(self.rt) != self.record:  # a newer service owns the files by now
            return
        rings = {str(v.vcpuid): v.debug_ring.read() for v in self.vm.vcpus}
        with contextlib.suppress(OSError, RuntimeDirError):
            self.rt.write_record(self.rt.saved_rings, rings)  # bfm dump, once stopped
        self.rt.clean_service_files()


def _tell_ready(fd: int, info: dict[str, Any]) -> None:
    """Hand ``bfm start`` the first ``ping`` answer through the pipe it gave us."""
    with contextlib.suppress(OSError):
        try:
            os.write(fd, dumps(info).encode("ascii") + b"\n")
        finally:
            os.close(fd)


def _bounded_logging() -> None:
    stream = BoundedStream(sys.stderr)
    sys.stderr = stream  # thread tracebacks go here too
    logging.basicConfig(
        stream=stream,
        level=logging.WARNING,  # the handlers' own lines are in their debug rings
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _orders(fd: int) -> list[str] | None:
    """The rest of the command line, from ``bfm start`` (``cli.service_launch``); None if
    the pipe closed first: bfm decided not to start this service."""
    data = b""
    with contextlib.suppress(OSError):
        while not data.endswith(b"\n") and len(data) < 1 << 20:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    os.close(fd)
    if not data:
        return None
    orders = loads(data)
    if not isinstance(orders, list) or not all(isinstance(word, str) for word in orders):
        raise ValueError("the orders are not a command line")
    return orders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyflank-vmm")
    parser.add_argument("--runtime-dir", required=True)
    parser.add_argument("--extension")
    parser.add_argument("--backend", default="auto", choices=NAMES)
    parser.add_argument("--vcpus", default=1, type=int)
    parser.add_argument("--memory", default=0, type=int)
    parser.add_argument("--vmcall-timeout", default=VMCALL_TIMEOUT, type=float)
    parser.add_argument("--read-timeout", default=READ_TIMEOUT, type=float)
    parser.add_argument("--ready-fd", default=None, type=int)
    parser.add_argument("--orders-fd", default=None, type=int)
    given = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(given)
    if args.orders_fd is not None:  # spawned early: the VMM is imported, now wait to be told
        orders = _orders(args.orders_fd)
        if orders is None:
            return 0
        args = parser.parse_args([*given, *orders])
    if args.extension is None:
        parser.error("the following arguments are required: --extension")
    limits = ServiceLimits(args.vmcall_timeout, args.read_timeout)
    _bounded_logging()
    try:
        rt = RuntimeDir(args.runtime_dir)
        rt.ensure()
        service = VmmService(rt, args.extension, args.backend, args.vcpus, args.memory, limits)
    except (BackendUnavailable, ExtensionError, RuntimeDirError, ValueError) as exc:
        print(f"pyflank-vmm: {exc}", file=sys.stderr)  # one line: bfm start shows it
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=service.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with contextlib.suppress(KeyboardInterrupt):
        service.serve(args.ready_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
