"""The VMM service ``bfm start`` runs in the background: a VM, its guest agent, a socket.

    python -m pyflank.cli.service --runtime-dir DIR --extension SPEC [--backend B] [--vcpus N]

It answers bfm's requests on ``DIR/vmm.sock`` (mode 0600) until ``stop`` or SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import socketserver
import sys
import threading
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
from pyflank.cli import protocol
from pyflank.cli.extension import load_handler
from pyflank.cli.runtime import RuntimeDir
from pyflank.platform.mailbox import BASE_PORT, IN_OFFSET, OUT_OFFSET, SLOT_SIZE, Mailbox
from pyflank.vmm import Vm

MAILBOX_BASE = 0x400000
VMCALL_TIMEOUT = 30.0
_TWO_MIB = 0x200000


def memory_size(vcpus: int) -> int:
    end = MAILBOX_BASE + vcpus * SLOT_SIZE
    return max(16 << 20, (end + _TWO_MIB - 1) // _TWO_MIB * _TWO_MIB)


def agent_source() -> str:
    constants = (
        f".equ MAILBOX_BASE, {MAILBOX_BASE:#x}\n"
        f".equ MAILBOX_SLOT, {SLOT_SIZE:#x}\n"
        f".equ MAILBOX_PORT, {BASE_PORT:#x}\n"
    )
    return constants + guests.read("agent.s")


class VmmService:
    def __init__(self, rt: RuntimeDir, extension: str, backend: str, vcpus: int) -> None:
        self.rt = rt
        self.handler = load_handler(extension)
        self.backend = resolve(backend)  # "auto" is the software CPU
        size = memory_size(vcpus)
        self.vm = Vm(self.handler, vcpus=vcpus, backend=self.backend, memory_size=size)
        self.mailbox = Mailbox(self.vm.memory, MAILBOX_BASE, vcpus)
        self.vm.bus.insert(self.mailbox, BASE_PORT, self.mailbox.port_count, "bfm-mailbox")
        self.vm.load_asm(agent_source())
        self.stopped = threading.Event()
        self._vm_thread = threading.Thread(target=self._run_vm, name="vm", daemon=True)

    def _run_vm(self) -> None:
        self.vm.run(timeout=1e9)
        self.mailbox.stop()  # every vCPU has stopped: nobody will answer a request

    # -- requests ---------------------------------------------------------------------
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            capabilities = self.vm.capabilities
            return {
                "ok": True,
                "handler": self.handler.__name__,
                "backend": self.backend,
                "vcpus": len(self.vm.vcpus),
                "capabilities": capabilities.describe() if capabilities else "",
            }
        if op == "dump":
            vcpuid = request.get("vcpuid", 0)
            if not isinstance(vcpuid, int) or not 0 <= vcpuid < len(self.vm.vcpus):
                return {"ok": False, "error": f"no vCPU {vcpuid}"}
            return {"ok": True, "text": self.vm.vcpus[vcpuid].debug_ring.read()}
        if op == "vmcall":
            return self._vmcall(request)
        if op == "stop":
            threading.Thread(target=self.stop, daemon=True).start()
            return {"ok": True}
        return {"ok": False, "error": f"unknown request {op!r}"}

    def _vmcall(self, request: dict[str, Any]) -> dict[str, Any]:
        cpuid, given = request.get("cpuid", 0), request.get("regs", {})
        if not isinstance(cpuid, int) or not isinstance(given, dict):
            return {"ok": False, "error": "malformed vmcall request"}
        registers = [0] * len(SLOTS)
        for name, value in given.items():
            index = int(name[1:]) if name[:1] == "r" and name[1:].isdigit() else -1
            valid = isinstance(value, int) and 0 <= value < 1 << 64
            if not 0 <= index < len(SLOTS) or not valid:
                return {"ok": False, "error": f"bad register {name}={value!r}"}
            registers[index] = value
        data = base64.b64decode(request.get("in", "")) if request.get("in") else b""
        is_data = registers[SLOTS.index(OPCODE_SLOT)] == VmcallOpcode.DATA
        if is_data:
            slot = self.mailbox.slot_address(cpuid) if 0 <= cpuid < len(self.vm.vcpus) else 0
            out_size = min(int(request.get("out_size", VMCALL_OUT_BUFFER_SIZE)),
                           VMCALL_OUT_BUFFER_SIZE)  # fmt: skip
            registers[DATA.index("in_addr")] = slot + IN_OFFSET
            registers[DATA.index("in_size")] = len(data)
            registers[DATA.index("out_addr")] = slot + OUT_OFFSET
            registers[DATA.index("out_size")] = out_size
        try:
            reply = self.mailbox.vmcall(cpuid, registers, data, timeout=VMCALL_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the client's failure, never the service's
            return {"ok": False, "error": str(exc)}
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
        with contextlib.suppress(FileNotFoundError):
            self.rt.socket.unlink()
        old_umask = os.umask(0o177)  # the socket is born 0600: only this user may connect
        try:
            server = _Server(str(self.rt.socket), _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(self.rt.socket, 0o600)
        server.service = self
        self._server = server
        self.rt.pidfile.write_text(f"{os.getpid()}\n")
        self._vm_thread.start()
        try:
            server.serve_forever(poll_interval=0.1)
        finally:
            server.server_close()

    def stop(self, *_: object) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.mailbox.stop()
        self._vm_thread.join(10)
        self._server.shutdown()
        self.rt.clean_service_files()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 128  # many bfm clients connect at once
    service: VmmService


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            request = protocol.receive_message(self.rfile)
            reply = self.server.service.handle(request)
        except protocol.ProtocolError as exc:
            reply = {"ok": False, "error": str(exc)}
        with contextlib.suppress(OSError):
            protocol.send_message(self.connection, reply)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyflank-vmm")
    parser.add_argument("--runtime-dir", required=True, type=Path)
    parser.add_argument("--extension", required=True)
    parser.add_argument("--backend", default="auto", choices=NAMES)
    parser.add_argument("--vcpus", default=1, type=int)
    args = parser.parse_args(argv)
    try:
        service = VmmService(RuntimeDir(args.runtime_dir), args.extension, args.backend, args.vcpus)
    except BackendUnavailable as exc:  # one line: bfm start shows the log's last line
        print(f"pyflank-vmm: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=service.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
