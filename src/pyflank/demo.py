"""``make run``: Debian's kernel booting to a shell's marker under the seed's exit handler
(``linux_demo``) where the kernel can be obtained; otherwise, or with ``--classic``, the
demo guest under the seed's exit handler and a bfm session.

python -m pyflank.demo [--backend emu|kvm|auto] [--classic] [--guest-only | --bfm-only]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pyflank import guests, linux_demo
from pyflank.abi import BF_VMCALL_SUCCESS, VmcallDataType, VmcallOpcode
from pyflank.backends.factory import NAMES, resolve
from pyflank.backends.kvm.policy import GAPS
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import exit_reasons
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.msrs import MSR_NAMES
from pyflank.platform.linux.assets import AssetsUnavailable
from pyflank.vmm import Vm

BUFFERS = 0x0000_7F00_0000_0000  # guest-virtual, mapped onto scattered physical pages
BUFFER_PAGES = (0x600000, 0x500000, 0x580000)
# Capability-report lines that explain where KVM's run differs from the software CPU's.
KVM_DIFFERENCES = (
    "- exits reaching user space",  # no CPUID or INVD exits: fewer exits, no lines for them
    "- guest VMCALL",  # the SDK takes the I/O-port doorbell: vmcalls exit at its OUT
    "- ring-0 guest code run by KVM's instruction emulator",  # VMXOFF exits where it gives up
    "- KVM_SET_CPUID2",  # what the guest's CPUIDs returned, if not the handler's table
)


class NarratedHandler(ExitHandlerIntelX64):
    """The seed's handler, telling what each exit was and what the guest got back."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def dispatch(self) -> None:
        s = self.m_state_save
        reason = self.m_vmcs.read(f.VM_EXIT_REASON) & 0xFFFF
        before = (s.rax, s.rcx, s.rdx, s.rsi)
        rip = s.rip
        super().dispatch()
        what = self._describe(reason, before)
        self.lines.append(f"  {rip:#010x}  {exit_reasons.description(reason):<8} {what}")

    def _describe(self, reason: int, before: tuple[int, int, int, int]) -> str:
        s = self.m_state_save
        rax, rcx, rdx, rsi = before
        if reason == ExitReason.CPUID:
            regs = f"eax={s.rax:#x} ebx={s.rbx:#x} ecx={s.rcx:#x} edx={s.rdx:#x}"
            order = {0: (s.rbx, s.rdx, s.rcx), 0x40000000: (s.rbx, s.rcx, s.rdx)}.get(rax)
            if order:
                text = b"".join(r.to_bytes(4, "little") for r in order).rstrip(b"\0")
                regs += f" ({text.decode(errors='replace')})"
            return f"leaf {rax:#x}: {regs}"
        if reason in (ExitReason.RDMSR, ExitReason.WRMSR):
            name = MSR_NAMES.get(rcx & 0xFFFFFFFF, hex(rcx))
            if reason == ExitReason.RDMSR:
                return f"{name} -> {(s.rdx << 32) | s.rax:#x}"
            return f"{name} <- {((rdx & 0xFFFFFFFF) << 32) | (rax & 0xFFFFFFFF):#x}"
        if reason == ExitReason.INVD:
            return "handled as WBINVD on the CPU model"
        if reason == ExitReason.VMXOFF:
            return "the vCPU leaves VMX operation (promoted)"
        if reason == ExitReason.VMCALL:
            return self._describe_vmcall(rax, rsi)
        return ""

    def _describe_vmcall(self, opcode: int, in_type: int) -> str:
        s = self.m_state_save
        status = "success" if s.rdx == BF_VMCALL_SUCCESS else "BF_VMCALL_FAILURE"
        name = VmcallOpcode(opcode).name if opcode in VmcallOpcode._value2member_map_ else "?"
        detail = ""
        if opcode == VmcallOpcode.VERSIONS:
            detail = f" -> {s.rbx}.{s.rsi}.{s.r08}"
        elif opcode == VmcallOpcode.DATA and s.rdx == BF_VMCALL_SUCCESS:
            reply = self.map_guest_buffer(s.r11, s.r12, writable=False).read()
            kind = VmcallDataType(in_type).name.lower()
            detail = f" {kind} -> {reply[:48]!r}"
        return f"{name.lower()}: {status}{detail}"


def run_guest(backend: str) -> int:
    vm = Vm(NarratedHandler, backend=backend)
    for i, page in enumerate(BUFFER_PAGES):
        vm.page_tables.map(BUFFERS + i * 0x1000, page, 0x1000)
    vm.load_asm(f".equ BUFFERS, {BUFFERS:#x}\n" + guests.read("demo.s"))
    print(f"== the demo guest on the {backend} backend, under the seed's exit handler ==")
    capabilities = vm.capabilities
    [result] = vm.run(timeout=30)
    handler = vm.vcpus[0].handler
    assert isinstance(handler, NarratedHandler)
    print("\n".join(handler.lines))
    print("serial output:")
    for line in vm.serial_output.decode(errors="replace").splitlines():
        print(f"  | {line}")
    print(f"vCPU 0 stopped: {result.reason.value} after {result.exits} exits")
    if capabilities is not None:
        print("where KVM differs from the software CPU (its capability report):")
        for line in capabilities.describe().splitlines():
            if line.startswith(KVM_DIFFERENCES):
                print(f"  {line}")
    return 0 if result.reason.value == "promoted" else 1


def run_bfm_session(backend: str) -> int:
    """What a user types, shown with what bfm answers."""
    with tempfile.TemporaryDirectory(prefix="pyflank-demo-") as tmp:
        env = {**os.environ, "PYFLANK_RUNTIME_DIR": str(Path(tmp) / "run")}
        data = Path(tmp) / "data.bin"
        data.write_bytes(bytes(range(32)))
        session = [
            ["load", "pyflank.exit_handler.exit_handler_intel_x64:ExitHandlerIntelX64"],
            ["start", "--backend", backend],
            ["status"],
            ["vmcall", "versions", "1"],
            ["vmcall", "registers", "2", "3", "4", "5"],
            ["vmcall", "string", "unformatted", "hello from bfm"],
            ["vmcall", "string", "json", '{"hello": "vmm"}'],
            ["vmcall", "data", "unformatted", str(data), str(Path(tmp) / "out.bin")],
            ["vmcall", "event", "7"],
            ["vmcall", "unittest", "1"],
            ["dump"],
            ["stop"],
            ["status"],
        ]
        print("\n== a bfm session: the vmcalls travel into the guest agent ==")
        failures = 0
        for args in session:
            print(f"$ bfm {' '.join(a if ' ' not in a else repr(a) for a in args)}")
            done = subprocess.run(
                [sys.executable, "-m", "pyflank.cli.bfm", *args],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            for line in (done.stdout + done.stderr).rstrip().splitlines():
                print(f"  {line}")
            failures += done.returncode != 0
        return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyflank.demo")
    parser.add_argument("--backend", choices=NAMES, default="auto")
    parser.add_argument("--classic", action="store_true", help="the demo guest, not Linux")
    parser.add_argument("--guest-only", action="store_true")
    parser.add_argument("--bfm-only", action="store_true")
    args = parser.parse_args(argv)
    backend = resolve(args.backend)
    if not (args.classic or args.guest_only or args.bfm_only):
        if backend != "emu":
            print(f"Linux on {backend}: KVM gap 'linux' ({GAPS['linux']}); the demo guest instead")
        else:
            try:
                return linux_demo.boot()
            except AssetsUnavailable as exc:
                print(f"no Linux kernel here ({exc}): the demo guest instead")
    status = 0
    if not args.bfm_only:
        status |= run_guest(backend)
    if not args.guest_only:
        status |= run_bfm_session(backend)
    return status


if __name__ == "__main__":
    sys.exit(main())
