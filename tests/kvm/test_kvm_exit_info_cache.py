"""The exit-information cache is transparent: same VMCS reads as storing every field each exit."""

from __future__ import annotations

from kvm_guest_helpers import Guest

from kvm_support import kvm_marks
from pyflank.abi import DEFAULT_DOORBELL_PORT, VMCALL_MAGIC_NUMBER
from pyflank.backends.kvm import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Primary
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.processor import VmxProcessor

pytestmark = kvm_marks()

FIELDS = (
    f.VM_EXIT_REASON,
    f.VM_EXIT_INSTRUCTION_LENGTH,
    f.EXIT_QUALIFICATION,
    f.VM_EXIT_INSTRUCTION_INFORMATION,
    f.GUEST_RIP,
    f.GUEST_RSP,
    f.GUEST_RFLAGS,
)


def source(port: int) -> str:
    return f"""
    mov r12, 60
again:
    mov rax, 1
    mov rdi, {VMCALL_MAGIC_NUMBER:#x}
    xor ecx, ecx
    mov dx, {port:#x}
    out dx, al
    out dx, al
    dec r12
    jnz again
    hlt
"""


class Poker(ExitHandlerIntelX64):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, ...]] = []
        self.n = 0

    def handle_exit(self, reason: int) -> None:
        vmcs = self.m_vmcs
        if reason not in (ExitReason.IO_INSTRUCTION, ExitReason.VMCALL):  # CPUID sampling
            return super().handle_exit(reason)
        self.seen.append(tuple(vmcs.read(e) for e in FIELDS))
        self.n += 1
        if self.n % 3 == 0:
            vmcs.write(f.GUEST_RSP, vmcs.read(f.GUEST_RSP) ^ 0x1000)  # StateSave wins on resume
        if self.n % 4 == 0:
            vmcs.write(f.GUEST_RFLAGS, vmcs.read(f.GUEST_RFLAGS) ^ 0x1)  # CF flips in the guest
        super().handle_exit(reason)

    def handle_io_instruction(self) -> None:
        self.advance_rip()


def _run(kind: str, cache: bool, monkeypatch) -> list[tuple[int, ...]]:
    if not cache:
        orig = VmxProcessor.exit

        def always(self, *a, **k):
            self.vmcs_written()
            return orig(self, *a, **k)

        monkeypatch.setattr(VmxProcessor, "exit", always)

    def prepare(h):
        if kind == "io":
            e = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
            h.m_vmcs.write(e, int(h.m_vmcs.read(e)) | int(Primary.UNCONDITIONAL_IO_EXITING))

    port = 0x80 if kind == "io" else DEFAULT_DOORBELL_PORT
    handler = Poker()
    with Guest(source(port), handler, prepare=prepare) as guest:
        assert guest.run() is StopReason.GUEST_HLT
    monkeypatch.undo()
    return handler.seen


def test_vmcall(monkeypatch) -> None:
    a = _run("vmcall", True, monkeypatch)
    b = _run("vmcall", False, monkeypatch)
    assert len(a) >= 60 and a == b


def test_io(monkeypatch) -> None:
    a = _run("io", True, monkeypatch)
    b = _run("io", False, monkeypatch)
    assert len(a) >= 60 and a == b


class StopsIoExiting(ExitHandlerIntelX64):
    n = 0

    def handle_io_instruction(self) -> None:
        self.n += 1
        if self.n == 10:
            e = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
            self.m_vmcs.write(e, int(self.m_vmcs.read(e)) & ~int(Primary.UNCONDITIONAL_IO_EXITING))
        self.advance_rip()


class StartsIoExiting(ExitHandlerIntelX64):
    """Turns I/O exiting on at a doorbell: the next OUTs exit."""

    n = 0

    def handle_vmcall(self) -> None:
        e = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        self.m_vmcs.write(e, int(self.m_vmcs.read(e)) | int(Primary.UNCONDITIONAL_IO_EXITING))
        super().handle_vmcall()

    def handle_io_instruction(self) -> None:
        self.n += 1
        self.advance_rip()


def _long(h) -> None:
    h.m_vmcs.write(f.VM_ENTRY_CONTROLS, int(h.m_vmcs.read(f.VM_ENTRY_CONTROLS)) | (1 << 9))


def test_controls_change_takes_effect() -> None:
    def prepare(h):
        _long(h)
        e = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        h.m_vmcs.write(e, int(h.m_vmcs.read(e)) | int(Primary.UNCONDITIONAL_IO_EXITING))

    handler = StopsIoExiting()
    with Guest(source(0x80), handler, prepare=prepare) as guest:
        r = guest.run_to_stop(timeout=5)
        assert r.reason is StopReason.GUEST_HLT, r.message
    assert handler.n == 10


def test_controls_set_at_doorbell() -> None:
    src = f"""
    mov r12, 5
again:
    mov dx, 0x80
    out dx, al
    dec r12
    jnz again
    mov rax, 1
    mov rdi, {VMCALL_MAGIC_NUMBER:#x}
    xor ecx, ecx
    mov dx, {DEFAULT_DOORBELL_PORT:#x}
    out dx, al
    mov r12, 7
again2:
    mov dx, 0x80
    out dx, al
    dec r12
    jnz again2
    hlt
"""
    handler = StartsIoExiting()
    with Guest(src, handler, prepare=_long) as guest:
        r = guest.run_to_stop(timeout=5)
        assert r.reason is StopReason.GUEST_HLT, r.message
    assert handler.n == 7
