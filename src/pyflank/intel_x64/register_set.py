"""The registers a debugger shows of an x86-64 processor, once, in the order gdb's amd64
target description numbers them: the general registers, RIP, RFLAGS, the segment
selectors, the x87 stack and its control words, SSE, the FS/GS bases, then the system
registers a hypervisor's user wants to see (CR0, CR2, CR3, CR4, CR8, EFER).

``state_save`` is where an exit saves a register in ``StateSave`` (the general registers,
RIP); ``vmcs`` the guest-state field that holds it at an exit.  Registers with neither
(the x87 and SSE state, CR2, CR8) stay in the processor across an exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pyflank.intel_x64 import fields as f


@dataclass(frozen=True)
class ArchRegister:
    name: str
    bits: int
    group: str
    """"general", "x87", "sse", "segment base" or "system"."""
    state_save: str | None = None
    vmcs: int | None = None


def _general(name: str, saved: str | None = None) -> ArchRegister:
    return ArchRegister(name, 64, "general", state_save=saved or name)


_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")
_SELECTORS = {
    "cs": f.GUEST_CS_SELECTOR,
    "ss": f.GUEST_SS_SELECTOR,
    "ds": f.GUEST_DS_SELECTOR,
    "es": f.GUEST_ES_SELECTOR,
    "fs": f.GUEST_FS_SELECTOR,
    "gs": f.GUEST_GS_SELECTOR,
}
X87_CONTROL: Final = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")

REGISTERS: Final[tuple[ArchRegister, ...]] = (
    *(_general(name) for name in _GPRS),
    *(_general(f"r{n}", f"r{n:02d}") for n in range(8, 16)),
    ArchRegister("rip", 64, "general", state_save="rip"),
    ArchRegister("eflags", 32, "general", vmcs=f.GUEST_RFLAGS),
    *(ArchRegister(name, 32, "general", vmcs=field) for name, field in _SELECTORS.items()),
    *(ArchRegister(f"st{n}", 80, "x87") for n in range(8)),
    *(ArchRegister(name, 32, "x87") for name in X87_CONTROL),
    *(ArchRegister(f"xmm{n}", 128, "sse") for n in range(16)),
    ArchRegister("mxcsr", 32, "sse"),
    ArchRegister("fs_base", 64, "segment base", vmcs=f.GUEST_FS_BASE),
    ArchRegister("gs_base", 64, "segment base", vmcs=f.GUEST_GS_BASE),
    ArchRegister("cr0", 64, "system", vmcs=f.GUEST_CR0),
    ArchRegister("cr2", 64, "system"),
    ArchRegister("cr3", 64, "system", vmcs=f.GUEST_CR3),
    ArchRegister("cr4", 64, "system", vmcs=f.GUEST_CR4),
    ArchRegister("cr8", 64, "system"),
    ArchRegister("efer", 64, "system", vmcs=f.GUEST_IA32_EFER),
)
BY_NAME: Final = {register.name: register for register in REGISTERS}
