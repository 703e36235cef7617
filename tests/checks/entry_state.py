"""VMCS states for the VM-entry check tests: the valid long-mode state and variants.

Each variant is itself valid; a test then breaks exactly one rule on top of it.
"""

from __future__ import annotations

from collections.abc import Callable

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.valid_state import default_controls, long_mode_guest_state
from pyflank.intel_x64.cpu import ModelCpu
from pyflank.intel_x64.vmcs import Vmcs

Mutation = Callable[[Vmcs, ModelCpu], None]

EPTP_VALID = 0x1000 | (3 << 3) | 6  # 4-level walk, write-back
LDTR_USABLE_RIGHTS = 0x82  # present LDT
V8086_RIGHTS = 0xF3


def rich_cpu() -> ModelCpu:
    """The model CPU with (nearly) every control allowed, so one feature's rules can
    be broken without also breaking "reserved bits" checks."""
    cpu = ModelCpu()
    caps = cpu.read_only_msrs
    caps[msrs.IA32_VMX_TRUE_PINBASED_CTLS] = 0xFF_0000_0016
    caps[msrs.IA32_VMX_TRUE_PROCBASED_CTLS] = 0xFFFF_FFFE_0400_6172
    caps[msrs.IA32_VMX_PROCBASED_CTLS] = 0xFFFF_FFFE_0401_E172
    caps[msrs.IA32_VMX_TRUE_EXIT_CTLS] = 0xFFFF_FFFF_0003_6DFB
    caps[msrs.IA32_VMX_TRUE_ENTRY_CTLS] = 0xFFFF_FFFF_0000_11FB
    caps[msrs.IA32_VMX_PROCBASED_CTLS2] = 0x7FFF_FFFF_0000_0000  # all but bit 31
    caps[msrs.IA32_VMX_PROCBASED_CTLS3] = 0xFF
    caps[msrs.IA32_VMX_EXIT_CTLS2] = 0xB
    caps[msrs.IA32_VMX_CR4_FIXED1] = 0x1_00F7_27FF  # adds PKE, CET and FRED
    return cpu


def valid(cpu: ModelCpu | None = None) -> tuple[Vmcs, ModelCpu]:
    cpu = rich_cpu() if cpu is None else cpu
    vmcs = Vmcs()
    default_controls(vmcs, cpu)
    long_mode_guest_state(
        vmcs, cr3=0x1000, rip=0x10_0000, rsp=0x20_0000, gdt_base=0x5000, gdt_limit=0x1F
    )
    return vmcs, cpu


def put(vmcs: Vmcs, **values: int) -> None:
    """Set fields by their SDM names (read-only ones too)."""
    for name, value in values.items():
        field = f.FIELD_BY_NAME[name]
        vmcs.processor_write(field.encoding, value & field.mask)


def set_bits(vmcs: Vmcs, encoding: int, bits: int) -> None:
    vmcs.processor_write(encoding, vmcs.read(encoding) | bits)


def clear_bits(vmcs: Vmcs, encoding: int, bits: int) -> None:
    vmcs.processor_write(encoding, vmcs.read(encoding) & ~bits)


def secondary(vmcs: Vmcs, bits: int) -> None:
    set_bits(vmcs, f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, b.PROC_SECONDARY)
    set_bits(vmcs, f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, bits)


def ept(vmcs: Vmcs) -> None:
    secondary(vmcs, b.PROC2_EPT)
    put(vmcs, ept_pointer=EPTP_VALID)


def unrestricted(vmcs: Vmcs) -> None:
    ept(vmcs)
    secondary(vmcs, b.PROC2_UNRESTRICTED)


def tpr_shadow(vmcs: Vmcs) -> None:
    set_bits(vmcs, f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, b.PROC_TPR_SHADOW)
    put(vmcs, virtual_apic_address=0x3000)


def posted_interrupts(vmcs: Vmcs) -> None:
    """Posted interrupts with everything they need: VID, TPR shadow, acknowledge."""
    tpr_shadow(vmcs)
    secondary(vmcs, b.PROC2_VID)
    set_bits(
        vmcs,
        f.PIN_BASED_VM_EXECUTION_CONTROLS,
        b.PIN_POSTED_INTERRUPTS | b.PIN_EXTERNAL_INTERRUPT_EXITING,
    )
    set_bits(vmcs, f.VM_EXIT_CONTROLS, b.EXIT_ACK_INTERRUPT)
    put(vmcs, posted_interrupt_notification_vector=0xF2, posted_interrupt_descriptor_address=0x4000)


def protected_mode(vmcs: Vmcs) -> None:
    """A 32-bit guest with 32-bit paging instead of the 64-bit one."""
    clear_bits(vmcs, f.VM_ENTRY_CONTROLS, b.ENTRY_IA32E)
    put(vmcs, guest_ia32_efer=0, guest_cr4=b.CR4_VMXE, guest_cs_access_rights=0xC09B)


def pae_protected_mode(vmcs: Vmcs) -> None:
    protected_mode(vmcs)
    put(vmcs, guest_cr4=b.CR4_VMXE | b.CR4_PAE)


def v8086_segments(vmcs: Vmcs) -> None:
    for index, name in enumerate(("es", "cs", "ss", "ds", "fs", "gs")):
        selector = 0x1000 + index
        put(vmcs, **{
            f"guest_{name}_selector": selector,
            f"guest_{name}_base": selector << 4,
            f"guest_{name}_limit": 0xFFFF,
            f"guest_{name}_access_rights": V8086_RIGHTS,
        })  # fmt: skip
    set_bits(vmcs, f.GUEST_RFLAGS, b.RFLAGS_VM)


def v8086(vmcs: Vmcs) -> None:
    protected_mode(vmcs)
    v8086_segments(vmcs)


def fred(vmcs: Vmcs) -> None:
    """The 64-bit guest using FRED transitions (CR4.FRED; ring 0 in 64-bit mode)."""
    set_bits(vmcs, f.GUEST_CR4, b.CR4_FRED)


def load_fred_on_exit(vmcs: Vmcs) -> None:
    set_bits(vmcs, f.VM_EXIT_CONTROLS, b.EXIT_SECONDARY)
    set_bits(vmcs, f.SECONDARY_VM_EXIT_CONTROLS, b.EXIT2_LOAD_FRED)


def ring3(vmcs: Vmcs) -> None:
    """The guest at CPL 3: CS and SS selectors and DPLs 3."""
    put(
        vmcs,
        guest_cs_selector=0x0B,
        guest_cs_access_rights=0xA0FB,
        guest_ss_selector=0x13,
        guest_ss_access_rights=0xC0F3,
    )


def usable_ldtr(vmcs: Vmcs) -> None:
    put(
        vmcs,
        guest_ldtr_selector=0x20,
        guest_ldtr_limit=0xFF,
        guest_ldtr_access_rights=LDTR_USABLE_RIGHTS,
    )


def legacy_host(vmcs: Vmcs) -> None:
    """A 32-bit host (paired with host_in_ia32e_mode=False in the tests)."""
    clear_bits(vmcs, f.VM_EXIT_CONTROLS, b.EXIT_HOST_64)
    put(vmcs, host_ia32_efer=b.EFER_SCE | b.EFER_NXE)


def inject(vmcs: Vmcs, kind: int, vector: int, *, error_code: int | None = None) -> None:
    info = b.EVENT_VALID | kind << 8 | vector
    if error_code is not None:
        info |= b.EVENT_DELIVER_ERROR_CODE
        put(vmcs, vm_entry_exception_error_code=error_code)
    put(vmcs, vm_entry_interruption_information_field=info)
