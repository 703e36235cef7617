"""Valid but unusual guest states raise no finding: a false VM-entry failure would halt
a guest that real hardware runs.  Each state starts from the valid 64-bit state and
becomes something else entirely (real mode, virtual-8086, ...), not a broken variant.
"""

from __future__ import annotations

from entry_state import (
    ept,
    fred,
    inject,
    load_fred_on_exit,
    pae_protected_mode,
    put,
    rich_cpu,
    set_bits,
    unrestricted,
    v8086,
    valid,
)

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks import check_all
from pyflank.intel_x64.cpu import ModelCpu
from pyflank.intel_x64.vmcs import Vmcs

USER_SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")
REAL_MODE_CODE, REAL_MODE_DATA = 0x9B, 0x93  # present, DPL 0, accessed, 16-bit, byte-granular
BUSY_TSS32 = 0x8B
UNUSABLE = b.AR_UNUSABLE


def _assert_no_finding(vmcs: Vmcs, cpu: ModelCpu) -> None:
    violations = check_all(vmcs, cpu)
    assert violations == [], "\n".join(str(v) for v in violations)


def _legacy_guest(vmcs: Vmcs, *, cr0: int, cr4: int = b.CR4_VMXE) -> None:
    """A guest outside IA-32e mode: the control off, EFER.LMA/LME clear."""
    vmcs.write(f.VM_ENTRY_CONTROLS, vmcs.read(f.VM_ENTRY_CONTROLS) & ~b.ENTRY_IA32E)
    put(vmcs, guest_cr0=cr0, guest_cr4=cr4, guest_cr3=0, guest_ia32_efer=0)


def _segments(vmcs: Vmcs, base_of: dict[str, int], limit: int, code: int, data: int) -> None:
    for name in USER_SEGMENTS:
        selector = base_of[name] >> 4
        put(vmcs, **{
            f"guest_{name}_selector": selector,
            f"guest_{name}_base": base_of[name],
            f"guest_{name}_limit": limit,
            f"guest_{name}_access_rights": code if name == "cs" else data,
        })  # fmt: skip


def test_unrestricted_guest_in_real_mode() -> None:
    vmcs, cpu = valid()
    unrestricted(vmcs)
    _legacy_guest(vmcs, cr0=b.CR0_ET | b.CR0_NE)  # PE and PG clear
    _segments(vmcs, {"cs": 0xF0000, **dict.fromkeys(("es", "ss", "ds", "fs", "gs"), 0x7000)},
              0xFFFF, REAL_MODE_CODE, REAL_MODE_DATA)  # fmt: skip
    put(vmcs, guest_tr_selector=0, guest_tr_limit=0xFFFF, guest_tr_access_rights=BUSY_TSS32,
        guest_rip=0xFFF0, guest_rsp=0x7C00, guest_gdtr_base=0, guest_gdtr_limit=0,
        guest_idtr_base=0, guest_idtr_limit=0x3FF)  # fmt: skip
    _assert_no_finding(vmcs, cpu)
    inject(vmcs, b.TYPE_HARDWARE_EXCEPTION, 13)  # real mode: #GP pushes no error code
    _assert_no_finding(vmcs, cpu)


def test_unrestricted_guest_in_32bit_protected_mode_without_paging() -> None:
    vmcs, cpu = valid()
    unrestricted(vmcs)
    _legacy_guest(vmcs, cr0=b.CR0_PE | b.CR0_ET | b.CR0_NE)  # PG clear
    _segments(vmcs, dict.fromkeys(USER_SEGMENTS, 0), 0xFFFF_FFFF, 0xC09B, 0xC093)
    put(vmcs, guest_tr_access_rights=BUSY_TSS32)
    _assert_no_finding(vmcs, cpu)


def test_pae_paging_with_pdptes() -> None:
    vmcs, cpu = valid()
    ept(vmcs)  # with EPT the PDPTEs come from the VMCS and are checked
    pae_protected_mode(vmcs)
    put(vmcs, guest_tr_access_rights=BUSY_TSS32, guest_cr3=0x3000, guest_pdpte0=0x4001,
        guest_pdpte1=0x5001, guest_pdpte2=0, guest_pdpte3=0x7_0000_0019)  # fmt: skip
    _assert_no_finding(vmcs, cpu)


def test_virtual_8086_mode() -> None:
    vmcs, cpu = valid()
    v8086(vmcs)
    put(vmcs, guest_tr_access_rights=BUSY_TSS32)
    _assert_no_finding(vmcs, cpu)


def test_activity_state_hlt() -> None:
    vmcs, cpu = valid()
    put(vmcs, guest_activity_state=1, guest_rflags=0x202)
    _assert_no_finding(vmcs, cpu)
    inject(vmcs, b.TYPE_EXTERNAL_INTERRUPT, 0x20)  # HLT lets an external interrupt through
    _assert_no_finding(vmcs, cpu)


def test_unusable_segments_are_not_checked() -> None:
    vmcs, cpu = valid()
    # 64-bit ring 0 may run with null SS, DS, ES; what an unusable register holds
    # besides the unusable bit is never looked at.
    put(vmcs, guest_ss_selector=0, guest_ss_access_rights=UNUSABLE,
        guest_ds_selector=0, guest_ds_access_rights=UNUSABLE | 0x0F00, guest_ds_limit=0x12345,
        guest_es_selector=0, guest_es_access_rights=UNUSABLE | 1 << 20 | 0x8001,
        guest_es_base=1 << 40, guest_fs_access_rights=UNUSABLE,
        guest_gs_access_rights=UNUSABLE)  # fmt: skip
    _assert_no_finding(vmcs, cpu)


def test_fred_guest_and_host() -> None:
    vmcs, cpu = valid()
    fred(vmcs)
    set_bits(vmcs, f.VM_ENTRY_CONTROLS, b.ENTRY_LOAD_FRED)
    load_fred_on_exit(vmcs)
    put(vmcs, guest_ia32_fred_config=0xFFFF_8000_0000_1000 | 3 << 6, guest_ia32_fred_rsp1=0x8040,
        guest_ia32_fred_ssp2=0x9008, host_ia32_fred_rsp3=0xFFFF_8000_0000_0000)  # fmt: skip
    _assert_no_finding(vmcs, cpu)
    inject(vmcs, b.TYPE_OTHER_EVENT, 1)  # a FRED SYSCALL event
    put(vmcs, vm_entry_instruction_length=2)
    _assert_no_finding(vmcs, cpu)


def test_cet_state_on_entry_and_exit() -> None:
    vmcs, cpu = valid()
    set_bits(vmcs, f.VM_ENTRY_CONTROLS, b.ENTRY_LOAD_CET)
    set_bits(vmcs, f.VM_EXIT_CONTROLS, b.EXIT_LOAD_CET)
    # The guest IA32_S_CET need not be canonical, only the guest SSP's top bits equal.
    put(vmcs, guest_ia32_s_cet=0x0123_4567_8000_0000 | 1 << 10, guest_ssp=0xFFFF_F000_0000_0FF8,
        host_ia32_s_cet=0xFFFF_8000_0000_0000 | 1 << 11, host_ssp=0x7FFF_FFFF_FFF0,
        host_ia32_interrupt_ssp_table_addr=0xFFFF_8000_0000_1000)  # fmt: skip
    _assert_no_finding(vmcs, cpu)


def test_vmx_basic_bit_56_allows_any_error_code_for_hardware_exceptions() -> None:
    cpu = rich_cpu()
    cpu.read_only_msrs[msrs.IA32_VMX_BASIC] |= msrs.VMX_BASIC_NO_ERROR_CODE_CHECK
    vmcs, cpu = valid(cpu)
    inject(vmcs, b.TYPE_HARDWARE_EXCEPTION, 13)  # #GP without its error code
    _assert_no_finding(vmcs, cpu)
    inject(vmcs, b.TYPE_HARDWARE_EXCEPTION, 21, error_code=0x2)  # #CP, CET's exception
    _assert_no_finding(vmcs, cpu)


def test_vmx_basic_bit_58_allows_a_nested_exception() -> None:
    cpu = rich_cpu()
    cpu.read_only_msrs[msrs.IA32_VMX_BASIC] |= msrs.VMX_BASIC_NESTED_EXCEPTION
    vmcs, cpu = valid(cpu)
    inject(vmcs, b.TYPE_HARDWARE_EXCEPTION, 14, error_code=0x2)
    set_bits(vmcs, f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD, b.EVENT_NESTED_EXCEPTION)
    _assert_no_finding(vmcs, cpu)
