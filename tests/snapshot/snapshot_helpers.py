"""Guests for the snapshot tests, and a way to pause a Vm at a chosen exit."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from pyflank.observe import Observer
from pyflank.processor.observer import ObservedVcpu
from pyflank.processor.records import ExitRecord
from pyflank.vmm import VcpuResult, Vm

# 3000 rounds of CPUID (leaf 0-3) and a store of the running sum, per vCPU its own table.
LOOP = """
    mov r15, 3000
    xor rbx, rbx
    mov r14, rdi
    shl r14, 16
loop:
    mov eax, r15d
    and eax, 3
    cpuid
    add rbx, rax
    mov qword ptr [0x200000 + r14 + r15*8], rbx
    dec r15
    jnz loop
    hlt
"""
TABLE = 0x200000

# On the PC platform: COM1's receive interrupt (IRQ 4, vector 0x24) through the guest's IDT
# while it waits in HLT with nothing else to wake it; the byte goes to R12, then a CPUID.
WAITS_FOR_INPUT = """
    lea rax, [rip + on_com1]
    lea rdi, [rip + idt + 0x24 * 16]
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], cs
    mov byte ptr [rdi + 4], 0
    mov byte ptr [rdi + 5], 0x8e
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    lea rax, [rip + idtr]
    lea rdi, [rip + idt]
    mov [rax + 2], rdi
    lidt [rax]
    mov al, 0x11
    out 0x20, al
    mov al, 0x20
    out 0x21, al
    mov al, 4
    out 0x21, al
    mov al, 1
    out 0x21, al
    mov al, 0xef
    out 0x21, al
    mov dx, 0x3f9
    mov al, 1
    out dx, al
    mov dx, 0x3fc
    mov al, 8
    out dx, al
    sti
idle:
    hlt
    jmp idle
on_com1:
    mov dx, 0x3f8
    in al, dx
    movzx r12, al
    xor eax, eax
    cpuid
    cli
    hlt
.balign 8
idtr: .word 0x25 * 16 - 1
      .quad 0
.balign 16
idt: .fill 0x25 * 16, 1, 0
"""


class PauseAtExit(Observer):
    """Asks the Vm to pause once vCPU 0's handler has seen ``exits`` exits: the vCPU parks at
    the next start of guest code, the same place in every run."""

    def __init__(self, exits: int) -> None:
        self.exits = exits
        self.vm: Vm | None = None
        self.asked = threading.Event()

    def exited(self, vcpu: ObservedVcpu, record: ExitRecord, handler_ns: int) -> None:
        processor = getattr(vcpu, "processor", None)
        if vcpu.vcpuid == 0 and processor is not None and processor.exits == self.exits:
            assert self.vm is not None
            self.vm.request_pause()
            self.asked.set()


def run_in_thread(vm: Vm, timeout: float = 60) -> Callable[[], list[VcpuResult]]:
    """Start ``vm``; a function that waits for its results."""
    results: list[list[VcpuResult]] = []
    thread = threading.Thread(target=lambda: results.append(vm.run(timeout=timeout)))
    thread.start()

    def finish() -> list[VcpuResult]:
        thread.join(timeout)
        assert not thread.is_alive()
        return results[0]

    return finish


def snapshot_at_exit(vm_of: Callable[[list[Observer]], Vm], exits: int, path: Path) -> tuple[
    Vm, list[VcpuResult], int
]:
    """Run the Vm ``vm_of`` makes, saving it to ``path`` after vCPU 0's ``exits``-th exit;
    (the Vm, its results, the exits vCPU 0's handler had seen at the snapshot)."""
    pause = PauseAtExit(exits)
    vm = vm_of([pause])
    pause.vm = vm
    finish = run_in_thread(vm)
    assert pause.asked.wait(30)
    vm.pause()
    processor = vm.vcpus[0].processor
    assert processor is not None
    at = processor.exits
    vm.snapshot(path)
    vm.resume()
    return vm, finish(), at
