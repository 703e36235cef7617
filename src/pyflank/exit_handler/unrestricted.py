"""A guest that starts outside long mode, run the VMX way (what KVM does for every guest).

The PVH entry starts Linux in 32-bit protected mode with paging off.  On VMX that needs
"unrestricted guest", which needs EPT (here: all of guest RAM identity-mapped); and since
VMX fixes CR0.NE at 1 while such a guest may well write 0 (Linux's PVH code does), the
VMM owns that bit: the guest reads its own value from the CR0 read shadow, and a write
that changes it is a control-register-access exit this handler completes.

    class Mine(UnrestrictedGuest): ...    # or compose it with your own handler

Your handler still sees every exit first when it overrides ``handle_exit``; call
``super()`` to let this one complete the CR0 writes.  On the software CPU, code outside
long mode gets no event delivery (an exception there stops the vCPU with the reason), and
its exiting instructions are decoded as 64-bit code; on KVM this is the named gap
``unrestricted_guest``.
"""

from __future__ import annotations

from pyflank.exit_handler.exit_handler_intel_x64 import ExitHandlerIntelX64
from pyflank.exit_handler.state_save import SDM_REGISTERS
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.controls import SecondaryProcessorBasedControls as Proc2
from pyflank.intel_x64.controls import VmEntryControls as Entry
from pyflank.intel_x64.msrs import EFER_LMA, EFER_LME
from pyflank.intel_x64.qualifications import ControlRegisterAccess, CrAccessType
from pyflank.intel_x64.registers import CR0_NE, CR0_PE, CR0_PG, CR0_TS
from pyflank.intel_x64.vectors import VECTOR_GP
from pyflank.intel_x64.vmcs import Vmcs

_PRIMARY = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
_SECONDARY = f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
OWNED_CR0_BITS = CR0_NE  # VMX fixes it; the guest's own value lives in the read shadow
_LMSW_BITS = 0xF


class UnrestrictedGuest(ExitHandlerIntelX64):
    """Unrestricted guest on an identity EPT, with CR0.NE owned by the VMM."""

    def setup(self, vmcs: Vmcs) -> None:
        self.ept.enable(vmcs)
        vmcs.write(_PRIMARY, vmcs.read(_PRIMARY) | Proc.ACTIVATE_SECONDARY_CONTROLS)
        vmcs.write(_SECONDARY, vmcs.read(_SECONDARY) | Proc2.UNRESTRICTED_GUEST)
        vmcs.write(f.CR0_GUEST_HOST_MASK, vmcs.read(f.CR0_GUEST_HOST_MASK) | OWNED_CR0_BITS)
        super().setup(vmcs)

    def handle_control_register_access(self) -> None:
        access = ControlRegisterAccess.decode(self.m_vmcs.read(f.EXIT_QUALIFICATION))
        if access.control_register != 0 or access.access_type is CrAccessType.MOV_FROM_CR:
            super().handle_exit(self.m_vmcs.read(f.EXIT_REASON))  # not ours to complete
            return
        vmcs = self.m_vmcs
        mask, shadow = vmcs.read(f.CR0_GUEST_HOST_MASK), vmcs.read(f.CR0_READ_SHADOW)
        seen = vmcs.read(f.GUEST_CR0) & ~mask | shadow & mask  # what the guest reads now
        if access.access_type is CrAccessType.MOV_TO_CR:
            new = getattr(self.m_state_save, SDM_REGISTERS[access.gpr])
            if not vmcs.read(f.GUEST_IA32_EFER) & EFER_LMA:
                new &= 0xFFFF_FFFF  # a 32-bit register outside long mode
            elif new >> 32:  # bits 63:32 of CR0 are reserved
                self.inject_exception(VECTOR_GP, 0)
                return
        elif access.access_type is CrAccessType.CLTS:
            new = seen & ~CR0_TS
        else:  # LMSW: PE, MP, EM and TS, and PE is never cleared
            source = access.lmsw_source_data
            new = seen & ~_LMSW_BITS | source & _LMSW_BITS | seen & CR0_PE
        vmcs.write(f.CR0_READ_SHADOW, shadow & ~mask | new & mask)
        vmcs.write(f.GUEST_CR0, new & ~mask | vmcs.read(f.GUEST_CR0) & mask)
        if (new ^ seen) & CR0_PG:
            self._paging_changed(bool(new & CR0_PG))
        self.advance_rip()

    def _paging_changed(self, paging: bool) -> None:
        """What the processor does when CR0.PG changes with EFER.LME set: IA-32e mode is
        activated or left (EFER.LMA, and the VM-entry control that loads it)."""
        vmcs = self.m_vmcs
        efer = vmcs.read(f.GUEST_IA32_EFER)
        if not efer & EFER_LME:
            return
        entry = vmcs.read(f.VM_ENTRY_CONTROLS)
        if paging:
            vmcs.write(f.GUEST_IA32_EFER, efer | EFER_LMA)
            vmcs.write(f.VM_ENTRY_CONTROLS, entry | Entry.IA_32E_MODE_GUEST)
        else:
            vmcs.write(f.GUEST_IA32_EFER, efer & ~EFER_LMA)
            vmcs.write(f.VM_ENTRY_CONTROLS, entry & ~Entry.IA_32E_MODE_GUEST)
