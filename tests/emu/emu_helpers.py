"""Running small guest programs on a backend, and what tests inspect afterwards.

The tests here run on each backend (``backend`` fixture); ``run`` uses the one the
current test runs on.  ``kvm_gap`` skips a test on KVM for a documented gap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from native_support import RunImage, accelerated, differences, pure_python
from pyflank.backends.kvm.platform import measured_capabilities
from pyflank.backends.kvm.policy import GAPS
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.controls import SecondaryProcessorBasedControls as Proc2
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.vmm import VcpuResult, Vm

SDK = '.include "pyflank.inc"\n'
RUNTIME = "\n    PYFLANK_RUNTIME\n"
ERROR_CODE_VECTORS = (8, 10, 11, 12, 13, 14, 17, 21)
_backend = ["emu"]  # the backend of the running test


@contextlib.contextmanager
def using_backend(name: str) -> Iterator[None]:
    _backend.append(name)
    try:
        yield
    finally:
        _backend.pop()


def current_backend() -> str:
    return _backend[-1]


# Gaps only some KVMs have: a test skips where the capability report shows them.
_WHERE: dict[str, Callable[[Any], bool]] = {
    "emulator": lambda caps: bool(caps.cpl0_emulated),
    "vmx_instructions": lambda caps: not caps.cpl0_emulated,
}


def kvm_gap(gap: str) -> None:
    """Skip the running test on KVM: it needs what ``GAPS[gap]`` says KVM cannot do."""
    if current_backend() != "kvm":
        return
    where = _WHERE.get(gap)
    if where is not None and not where(measured_capabilities()):
        return
    pytest.skip(f"KVM gap '{gap}': {GAPS[gap]}")


def cpuid_exits(count: int) -> int:
    """How many of ``count`` guest CPUIDs are exits: none on KVM (gap 'cpuid')."""
    return 0 if on_kvm() else count


def on_kvm() -> bool:
    return current_backend() == "kvm"


def run(
    source: str,
    handler: type[ExitHandlerIntelX64] | Callable[[], ExitHandlerIntelX64] = ExitHandlerIntelX64,
    *,
    configure: Callable[[Vmcs], None] | None = None,
    timeout: float = 5.0,
    vcpus: int = 1,
    setup: Callable[[Vm], None] | None = None,
    differential: bool = True,
) -> tuple[Vm, list[VcpuResult]]:
    """Run ``source``.  With the native accelerator, the same guest runs on the same backend
    again on the pure-Python exit paths once the test is over, and both runs must have
    left the same (the differential test: ``compare_with_pure_python``).  Not where a
    second run could not be the same: a handler given as a factory (it may hand out one
    instance), a ``setup`` (it may share a device), ``differential=False`` (the guest
    reads the host's clock)."""
    vm, results = _run(source, handler, configure, timeout, vcpus, setup)
    if differential and isinstance(handler, type) and setup is None and accelerated():
        image = RunImage.of(vm, results)
        _PENDING.append((image, lambda: _run(source, handler, configure, timeout, vcpus, None)))
    return vm, results


_PENDING: list[tuple[RunImage, Callable[[], tuple[Vm, list[VcpuResult]]]]] = []


def compare_with_pure_python() -> None:
    """Run the guests of the test that just ended on the pure-Python exit paths; they
    must leave what the accelerated runs left."""
    pending = list(_PENDING)
    _PENDING.clear()
    for image, again in pending:
        if not image.repeatable:
            continue
        with pure_python():
            reference = RunImage.of(*again())
        found = differences(reference, image)
        assert not found, "native and pure-Python runs differ:\n" + "\n".join(found)


def _run(
    source: str,
    handler: type[ExitHandlerIntelX64] | Callable[[], ExitHandlerIntelX64],
    configure: Callable[[Vmcs], None] | None,
    timeout: float,
    vcpus: int,
    setup: Callable[[Vm], None] | None,
) -> tuple[Vm, list[VcpuResult]]:
    vm = Vm(handler, vcpus=vcpus, trace=True, backend=current_backend())
    vm.load_asm(source)
    if setup is not None:
        setup(vm)
    if configure is not None:
        vm.configure(configure)
    return vm, vm.run(timeout=timeout)


def run1(
    source: str,
    handler: type[ExitHandlerIntelX64] | Callable[[], ExitHandlerIntelX64] = ExitHandlerIntelX64,
    **kwargs: Any,
) -> tuple[Vm, VcpuResult]:
    """``run`` with one vCPU."""
    vm, [result] = run(source, handler, **kwargs)
    return vm, result


def controls(primary: int = 0, secondary: int = 0) -> Callable[[Vmcs], None]:
    """A ``configure`` step setting processor-based controls on top of the defaults."""

    def change(vmcs: Vmcs) -> None:
        proc = vmcs.read(f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS) | primary
        if secondary:
            proc |= Proc.ACTIVATE_SECONDARY_CONTROLS
            vmcs.write(f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, secondary)
        vmcs.write(f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, proc)

    return change


@dataclass(frozen=True)
class ExitRecord:
    reason: int
    qualification: int
    length: int
    information: int
    linear_address: int
    rip: int
    interruption: int


class Recorder(ExitHandlerIntelX64):
    """The seed's handler, remembering the VM-exit information of every exit."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[ExitRecord] = []

    def dispatch(self) -> None:
        read = self.m_vmcs.read
        self.records.append(
            ExitRecord(
                reason=read(f.VM_EXIT_REASON),
                qualification=read(f.EXIT_QUALIFICATION),
                length=read(f.VM_EXIT_INSTRUCTION_LENGTH),
                information=read(f.VM_EXIT_INSTRUCTION_INFORMATION),
                linear_address=read(f.GUEST_LINEAR_ADDRESS),
                rip=read(f.GUEST_RIP),
                interruption=read(f.VM_EXIT_INTERRUPTION_INFORMATION),
            )
        )
        super().dispatch()


# set_gate: IDT entry ECX (of ``idt``) -> a 64-bit gate to RAX in the boot code segment,
# EDX its type/DPL/P byte, R8D its IST index.  Clobbers RAX, RCX, RDI.
SET_GATE = """
set_gate:
    lea rdi, [rip + idt]
    shl rcx, 4
    add rdi, rcx
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov byte ptr [rdi + 4], r8b
    mov byte ptr [rdi + 5], dl
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    ret
"""
INTERRUPT_GATE = 0x8E  # present, DPL 0, 64-bit interrupt gate


def idt_source(vectors: int = 32) -> str:
    """``setup_idt`` (call it first) and handlers that record the event and halt:
    R12 = vector, R14 = error code (or -1), R15 = the saved RIP, R13 = saved CS."""
    stubs = []
    for vector in range(vectors):
        pop = "pop r14" if vector in ERROR_CODE_VECTORS else "mov r14, -1"
        stubs.append(f"vector_{vector}:\n    mov r12, {vector}\n    {pop}\n    jmp idt_common\n")
    gates = "\n".join(
        f"    lea rax, [rip + vector_{v}]\n    mov rcx, {v}\n    mov edx, {INTERRUPT_GATE}\n"
        "    xor r8d, r8d\n    call set_gate"
        for v in range(vectors)
    )
    return f"""
setup_idt:
{gates}
    lea rax, [rip + idtr]
    lea rdi, [rip + idt]
    mov [rax + 2], rdi
    lidt [rax]
    ret
{SET_GATE}
{"".join(stubs)}
idt_common:
    mov r15, [rsp]
    mov r13, [rsp + 8]
    cli
    hlt
    jmp idt_common
.balign 8
idtr: .word {vectors * 16 - 1}
      .quad 0
.balign 16
idt: .fill {vectors * 16}, 1, 0
"""


def with_idt(body: str, vectors: int = 32) -> str:
    return "    call setup_idt\n" + body + "\n" + idt_source(vectors)


__all__ = [
    "INTERRUPT_GATE",
    "RUNTIME",
    "SDK",
    "SET_GATE",
    "ExitRecord",
    "Proc",
    "Proc2",
    "Recorder",
    "controls",
    "cpuid_exits",
    "current_backend",
    "idt_source",
    "kvm_gap",
    "on_kvm",
    "run",
    "run1",
    "with_idt",
]
