"""The VMM service ``bfm start`` runs in the background: a VM, its guest agent, a socket.

    python -m pyflank.cli.service --runtime-dir DIR --extension SPEC [--backend B]
                                  [--vcpus N] [--memory BYTES]

It answers bfm's requests on ``DIR/vmm.sock`` (mode 0600, its own user only) until
``stop`` or SIGTERM.  A vCPU that stops (its handler raised, its agent halted) is
reported by ``ping`` and fails every vmcall sent to it at once, with the reason.
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
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pyflank import guests
from pyflank.abi import (
    BF_VMCALL_FAILURE,
    DATA,
    OPCODE_SLOT,
    SLOTS,
    STATUS_SLOT,
    VMCALL_OUT_BUFFER_SIZE,
    VmcallOpcode,
)
from pyflank.backends.base import BackendUnavailable
from pyflank.backends.factory import NAMES, resolve
from pyflank.cli.bounded_log import BoundedStream
from pyflank.cli.errors import ExtensionError
from pyflank.cli.extension import load_handler
from pyflank.cli.runtime import RuntimeDir, RuntimeDirError
from pyflank.cli.server import READ_TIMEOUT, ServiceServer, error_reply
from pyflank.cli.service_process import ServiceRecord, read_record, write_record
from pyflank.platform.mailbox import BASE_PORT, IN_OFFSET, OUT_OFFSET, SLOT_SIZE, Mailbox
from pyflank.vmm import VcpuResult, Vm

log = logging.getLogger("pyflank.service")

MAILBOX_BASE = 0x400000
VMCALL_TIMEOUT = 30.0
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
        self.vm = Vm(
            self.handler, vcpus=vcpus, backend=self.backend, memory_size=memory_size(vcpus, memory)
        )
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

    # -- requests ---------------------------------------------------------------------
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            capabilities = self.vm.capabilities
            return {
                "ok": True,
                "pid": self.record.pid,
                "handler": self.handler.__name__,
                "backend": self.backend,
                "vcpus": self.vcpu_states(),
                "capabilities": capabilities.describe() if capabilities else "",
            }
        if op == "dump":
            vcpuid = request.get("vcpuid", 0)
            if type(vcpuid) is not int or not 0 <= vcpuid < len(self.vm.vcpus):
                return error_reply(f"no vCPU {vcpuid!r} (the VMM runs {len(self.vm.vcpus)})")
            return {"ok": True, "text": self.vm.vcpus[vcpuid].debug_ring.read()}
        if op == "vmcall":
            return self._vmcall(request)
        if op == "stop":
            threading.Thread(target=self.stop, daemon=True).start()
            return {"ok": True}
        return error_reply(f"unknown request {op!r}")

    def _vmcall(self, request: dict[str, Any]) -> dict[str, Any]:
        cpuid, given = request.get("cpuid", 0), request.get("regs", {})
        if type(cpuid) is not int or not isinstance(given, dict):
            return error_reply("malformed vmcall request")
        if not 0 <= cpuid < len(self.vm.vcpus):
            return error_reply(f"no vCPU {cpuid} (the VMM runs {len(self.vm.vcpus)})")
        registers = [0] * len(SLOTS)
        for name, value in given.items():
            index = int(name[1:]) if name[:1] == "r" and name[1:].isdigit() else -1
            valid = type(value) is int and 0 <= value < 1 << 64
            if not 0 <= index < len(SLOTS) or not valid:
                return error_reply(f"bad register {name!r}={value!r}")
            registers[index] = value
        encoded, out_size = request.get("in", ""), request.get("out_size", VMCALL_OUT_BUFFER_SIZE)
        if not isinstance(encoded, str) or type(out_size) is not int or out_size < 0:
            return error_reply("malformed vmcall buffers")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return error_reply("the input buffer is not base64")
        is_data = registers[SLOTS.index(OPCODE_SLOT)] == VmcallOpcode.DATA
        if is_data:
            slot = self.mailbox.slot_address(cpuid)
            registers[DATA.index("in_addr")] = slot + IN_OFFSET
            registers[DATA.index("in_size")] = len(data)
            registers[DATA.index("out_addr")] = slot + OUT_OFFSET
            registers[DATA.index("out_size")] = min(out_size, VMCALL_OUT_BUFFER_SIZE)
        try:
            reply = self.mailbox.vmcall(cpuid, registers, data, self.limits.vmcall_timeout)
        except Exception as exc:  # noqa: BLE001 - the client's failure, never the service's
            return error_reply(str(exc))
        regs = dict(zip(SLOTS, reply.registers, strict=True))
        status = regs[STATUS_SLOT]
        result: dict[str, Any] = {"ok": True, "ret": status, "regs": regs}
        if is_data and status != BF_VMCALL_FAILURE:
            length = min(reply.registers[DATA.index("reply_size")], len(reply.out))
            result["out"] = base64.b64encode(reply.out[:length]).decode()
        return result

    # -- lifetime ---------------------------------------------------------------------
    def serve(self) -> None:
        self.rt.ensure()
        self.rt.remove(self.rt.socket)
        old_umask = os.umask(0o177)  # the socket is born 0600: only this user may connect
        try:
            server = ServiceServer(str(self.rt.socket), self.handle, self.limits.read_timeout)
        finally:
            os.umask(old_umask)
        os.chmod(self.rt.socket, 0o600)
        self._server = server
        write_record(self.rt, self.record)
        self._vm_thread.start()
        try:
            server.serve_forever(poll_interval=0.1)
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


def _bounded_logging() -> None:
    stream = BoundedStream(sys.stderr)
    sys.stderr = stream  # thread tracebacks go here too
    logging.basicConfig(
        stream=stream,
        level=logging.WARNING,  # the handlers' own lines are in their debug rings
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyflank-vmm")
    parser.add_argument("--runtime-dir", required=True, type=Path)
    parser.add_argument("--extension", required=True)
    parser.add_argument("--backend", default="auto", choices=NAMES)
    parser.add_argument("--vcpus", default=1, type=int)
    parser.add_argument("--memory", default=0, type=int)
    parser.add_argument("--vmcall-timeout", default=VMCALL_TIMEOUT, type=float)
    parser.add_argument("--read-timeout", default=READ_TIMEOUT, type=float)
    args = parser.parse_args(argv)
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
        service.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
