"""The "physical CPU" an exit handler sees on the software CPU: the CPU model, except for the
MSRs whose values the engine itself acts on, which are read and written in the engine.

Those are the MSRs a guest instruction uses without an exit (SYSCALL/SYSRET: STAR, LSTAR,
CSTAR, SFMASK; SWAPGS: KERNEL_GS_BASE; RDTSCP: TSC_AUX) and that VMX does not keep in the
VMCS.  A guest's WRMSR handled by the seed's ``handle_wrmsr`` lands in unicorn, so the
SYSCALL after it jumps where the guest said, and a write the MSR bitmaps let through is
what the handler reads back.  The VMCS-backed MSRs (EFER, PAT, SYSENTER, FS/GS base, ...)
stay in the VMCS, as the seed keeps them; here they are the host's, the model's values.
Everything else (CPUID, the VMX capability MSRs, APIC base, ...) is the model's, whose
tables can be changed as any ``ModelCpu``'s.
"""

from __future__ import annotations

from typing import Final

from pyflank.backends.emu import cpu_msrs
from pyflank.backends.emu.engine import Engine
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.cpu import ModelCpu

ENGINE_MSRS: Final = frozenset(
    {
        msrs.IA32_STAR,
        msrs.IA32_LSTAR,
        msrs.IA32_CSTAR,
        msrs.IA32_FMASK,
        msrs.IA32_KERNEL_GS_BASE,
        msrs.IA32_TSC_AUX,
    }
)


class EngineCpu(ModelCpu):
    """The CPU model, with ``ENGINE_MSRS`` read and written in ``engine``."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine

    def rdmsr(self, msr: int) -> int:
        if msr in ENGINE_MSRS:
            return cpu_msrs.read_msr(self.engine, msr)
        return super().rdmsr(msr)

    def wrmsr(self, msr: int, value: int) -> None:
        if msr not in ENGINE_MSRS:
            super().wrmsr(msr, value)
            return
        cpu_msrs.write_msr(self.engine, msr, self.accepted(msr, value))
