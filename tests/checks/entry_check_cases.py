"""One way to break each VM-entry check, and nothing else, on top of a valid state.

A case lists the steps that make the VMCS break its rule.  A few rules the SDM
states twice (or that SMM rules make unavoidable) fire together; ``also`` names
those companions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from entry_state import (
    clear_bits,
    ept,
    fred,
    inject,
    legacy_host,
    load_fred_on_exit,
    pae_protected_mode,
    posted_interrupts,
    protected_mode,
    put,
    ring3,
    secondary,
    set_bits,
    tpr_shadow,
    unrestricted,
    usable_ldtr,
    v8086,
    v8086_segments,
)

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.cpu import ModelCpu
from pyflank.intel_x64.vmcs import Vmcs

Step = Callable[[Vmcs], None]

PIN, PROC = f.PIN_BASED_VM_EXECUTION_CONTROLS, f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
EXIT, ENTRY = f.VM_EXIT_CONTROLS, f.VM_ENTRY_CONTROLS
EVENT = f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD
HW, NMI, EXT, SOFT_INT = b.TYPE_HARDWARE_EXCEPTION, b.TYPE_NMI, b.TYPE_EXTERNAL_INTERRUPT, 4
STI, MOV_SS, ENCLAVE = b.BLOCKING_BY_STI, b.BLOCKING_BY_MOV_SS, b.ENCLAVE_INTERRUPTION
NONCANONICAL = 1 << 47
HLT = 1


@dataclass(frozen=True)
class Case:
    check_id: str
    steps: tuple[Step, ...]
    also: frozenset[str] = frozenset()
    legacy_processor: bool = False
    cpu: Callable[[ModelCpu], None] | None = None
    label: str = ""

    def apply(self, vmcs: Vmcs, cpu: ModelCpu) -> None:
        if self.cpu is not None:
            self.cpu(cpu)
        for step in self.steps:
            step(vmcs)

    @property
    def name(self) -> str:
        return self.check_id + (f"[{self.label}]" if self.label else "")


_CASES: list[Case] = []


def add(
    check_id: str,
    *steps: Step,
    also: frozenset[str] = frozenset(),
    legacy_processor: bool = False,
    cpu: Callable[[ModelCpu], None] | None = None,
    label: str = "",
) -> None:
    _CASES.append(Case(check_id, steps, also, legacy_processor, cpu, label))


def p(**values: int) -> Step:
    return lambda vmcs: put(vmcs, **values)


def s(encoding: int, bits: int) -> Step:
    return lambda vmcs: set_bits(vmcs, encoding, bits)


def c(encoding: int, bits: int) -> Step:
    return lambda vmcs: clear_bits(vmcs, encoding, bits)


def sec(bits: int) -> Step:
    return lambda vmcs: secondary(vmcs, bits)


def ev(kind: int, vector: int, error_code: int | None = None) -> Step:
    return lambda vmcs: inject(vmcs, kind, vector, error_code=error_code)


def capability(msr: int, clear: int) -> Callable[[ModelCpu], None]:
    def change(cpu: ModelCpu) -> None:
        cpu.read_only_msrs[msr] &= ~clear

    return change


def basic(bits: int) -> Callable[[ModelCpu], None]:
    """Report more IA32_VMX_BASIC features (bit 56, bit 58)."""

    def change(cpu: ModelCpu) -> None:
        cpu.read_only_msrs[msrs.IA32_VMX_BASIC] |= bits

    return change


def sgx(cpu: ModelCpu) -> None:
    eax, ebx, ecx, edx = cpu.cpuid_table[(7, 0)]
    cpu.cpuid_table[(7, 0)] = (eax, ebx | 1 << 2, ecx, edx)


OTHER = b.TYPE_OTHER_EVENT
CET_ON_EXIT, CET_ON_ENTRY = s(EXIT, b.EXIT_LOAD_CET), s(ENTRY, b.ENTRY_LOAD_CET)
FRED_ON_ENTRY = s(ENTRY, b.ENTRY_LOAD_FRED)


# -- 26.2.1.1 VM-execution controls --------------------------------------------
add("controls.pin_based.reserved", c(PIN, 1 << 1))
add("controls.primary.reserved", c(PROC, 1 << 1))
add("controls.secondary.reserved", sec(1 << 31))
add("controls.tertiary.reserved", s(PROC, b.PROC_TERTIARY),
    p(tertiary_processor_based_vm_execution_controls=1 << 40))  # fmt: skip
add("controls.cr3_target_count", p(cr3_target_count=5))
add("controls.io_bitmaps.address", s(PROC, b.PROC_IO_BITMAPS),
    p(address_of_io_bitmap_a=0x1000, address_of_io_bitmap_b=0x2001))  # fmt: skip
add("controls.msr_bitmaps.address", s(PROC, b.PROC_MSR_BITMAPS),
    p(address_of_msr_bitmaps=1 << 40))  # fmt: skip
add("controls.tpr_shadow.virtual_apic_address", tpr_shadow, p(virtual_apic_address=0x1800))
add("controls.tpr_shadow.threshold", tpr_shadow, p(tpr_threshold=0x10))
add("controls.tpr_shadow.required", sec(b.PROC2_X2APIC))
add("controls.ipi_virtualization.tpr_shadow", s(PROC, b.PROC_TERTIARY),
    p(tertiary_processor_based_vm_execution_controls=b.PROC3_IPI_VIRTUALIZATION))  # fmt: skip
add("controls.nmi.virtual_nmis", s(PIN, b.PIN_VIRTUAL_NMIS))
add("controls.nmi.nmi_window", s(PROC, b.PROC_NMI_WINDOW))
add("controls.apic_access.address", sec(b.PROC2_APIC_ACCESSES), p(apic_access_address=0x1001))
add("controls.x2apic.apic_accesses", tpr_shadow, sec(b.PROC2_X2APIC | b.PROC2_APIC_ACCESSES),
    p(apic_access_address=0x2000))  # fmt: skip
add("controls.vid.external_interrupt_exiting", tpr_shadow, sec(b.PROC2_VID))
add("controls.posted_interrupts.vid", posted_interrupts,
    c(f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, b.PROC2_VID))  # fmt: skip
add("controls.posted_interrupts.acknowledge", posted_interrupts, c(EXIT, b.EXIT_ACK_INTERRUPT))
add("controls.posted_interrupts.vector", posted_interrupts,
    p(posted_interrupt_notification_vector=0x100))  # fmt: skip
add("controls.posted_interrupts.descriptor", posted_interrupts,
    p(posted_interrupt_descriptor_address=0x4010))  # fmt: skip
add("controls.vpid.nonzero", sec(b.PROC2_VPID))
add("controls.vmcs_shadowing.bitmaps", sec(b.PROC2_VMCS_SHADOWING),
    p(vmread_bitmap_address=0x1000, vmwrite_bitmap_address=0x2008))  # fmt: skip
add("controls.ept.memory_type", ept, p(ept_pointer=0x1000 | 3 << 3 | 1))
add("controls.ept.walk_length", ept, p(ept_pointer=0x1000 | 2 << 3 | 6))
add("controls.ept.accessed_dirty", ept, p(ept_pointer=0x1000 | 1 << 6 | 3 << 3 | 6),
    cpu=capability(msrs.IA32_VMX_EPT_VPID_CAP, b.EPT_CAP_ACCESSED_DIRTY))  # fmt: skip
add("controls.ept.reserved", ept, p(ept_pointer=0x1000 | 1 << 7 | 3 << 3 | 6))
add("controls.ept.reserved", ept, p(ept_pointer=1 << 45 | 3 << 3 | 6), label="width")
add("controls.pml.ept", sec(b.PROC2_PML), p(pml_address=0x1000))
add("controls.pml.address", ept, sec(b.PROC2_PML), p(pml_address=0x1004))
add("controls.unrestricted_guest.ept", sec(b.PROC2_UNRESTRICTED))
add("controls.vmfunc.reserved", sec(b.PROC2_VMFUNC), p(vm_function_controls=2))
add("controls.vmfunc.eptp_switching_ept", sec(b.PROC2_VMFUNC),
    p(vm_function_controls=1, eptp_list_address=0x1000))  # fmt: skip
add("controls.vmfunc.eptp_list", ept, sec(b.PROC2_VMFUNC),
    p(vm_function_controls=1, eptp_list_address=0x1001))  # fmt: skip
add("controls.ept_violation_ve.address", sec(b.PROC2_EPT_VE),
    p(virtualization_exception_information_address=0x10))  # fmt: skip
add("controls.mode_based_ept.ept", sec(b.PROC2_MODE_BASED_EPT))
add("controls.sub_page_permissions.ept", sec(b.PROC2_SUB_PAGE))
add("controls.sub_page_permissions.table_pointer", ept, sec(b.PROC2_SUB_PAGE),
    p(sub_page_permission_table_pointer=0x1008))  # fmt: skip
add("controls.pt_guest_physical.requirements", ept, sec(b.PROC2_PT_GUEST_PHYSICAL))

# -- 26.2.1.2 / 26.2.1.3 VM-exit and VM-entry controls ------------------------------
add("controls.exit.reserved", c(EXIT, 1 << 0))
add("controls.exit.save_preemption_timer", s(EXIT, b.EXIT_SAVE_PREEMPTION))
add("controls.exit.msr_store_area", p(vm_exit_msr_store_count=1, vm_exit_msr_store_address=0x1008))
add("controls.exit.msr_load_area",
    p(vm_exit_msr_load_count=2, vm_exit_msr_load_address=(1 << 39) - 16))  # fmt: skip
add("controls.exit.secondary_reserved", s(EXIT, b.EXIT_SECONDARY),
    p(secondary_vm_exit_controls=1 << 2))  # fmt: skip
add("controls.entry.reserved", c(ENTRY, 1 << 0))
add("controls.entry.event_type", ev(b.TYPE_RESERVED, 0))
add("controls.entry.event_type", ev(b.TYPE_OTHER_EVENT, 0), label="no-mtf",
    cpu=capability(msrs.IA32_VMX_TRUE_PROCBASED_CTLS, b.PROC_MTF << 32))  # fmt: skip
add("controls.entry.event_vector", ev(NMI, 3))
add("controls.entry.event_vector", ev(HW, 32), label="exception")
add("controls.entry.event_vector", ev(OTHER, 1), label="syscall-without-fred")
add("controls.entry.event_vector", fred, ev(OTHER, 3), label="fred")
add("controls.entry.event_error_code_bit", ev(HW, 13))
add("controls.entry.event_error_code_bit", ev(HW, 6, error_code=0), label="unexpected")
add("controls.entry.event_error_code_bit", ev(NMI, 2, error_code=0), label="basic56-nmi",
    cpu=basic(msrs.VMX_BASIC_NO_ERROR_CODE_CHECK))  # fmt: skip
add("controls.entry.event_reserved", ev(HW, 6), s(EVENT, 1 << 12))
add("controls.entry.event_reserved", ev(HW, 6), s(EVENT, b.EVENT_NESTED_EXCEPTION),
    label="nested-unsupported")  # fmt: skip
add("controls.entry.event_nested_exception", ev(NMI, 2), s(EVENT, b.EVENT_NESTED_EXCEPTION),
    cpu=basic(msrs.VMX_BASIC_NESTED_EXCEPTION))  # fmt: skip
add("controls.entry.fred_event_length", fred, ev(OTHER, 1), p(vm_entry_instruction_length=16))
add("controls.entry.event_error_code", ev(HW, 13, error_code=0x1_0000))
add("controls.entry.event_instruction_length", ev(SOFT_INT, 0x80))
add("controls.entry.msr_load_area", p(vm_entry_msr_load_count=1, vm_entry_msr_load_address=0x1001))
add("controls.entry.smm", s(ENTRY, b.ENTRY_DUAL_MONITOR))

# -- 26.2.2 / 26.2.3 / 26.2.4 host state ----------------------------------------------
add("host.cr0.fixed_bits", c(f.HOST_CR0, b.CR0_NE))
add("host.cr4.fixed_bits", c(f.HOST_CR4, b.CR4_VMXE))
add("host.cr3.width", p(host_cr3=1 << 40))
add("host.sysenter.canonical", p(host_ia32_sysenter_eip=NONCANONICAL))
add("host.perf_global_ctrl.reserved", s(EXIT, b.EXIT_LOAD_PERF_GLOBAL),
    p(host_ia32_perf_global_ctrl=1))  # fmt: skip
add("host.pat.memory_types", s(EXIT, b.EXIT_LOAD_PAT), p(host_ia32_pat=0x0007_0406_0007_0402))
add("host.efer.reserved", s(f.HOST_IA32_EFER, 1 << 1))
add("host.efer.address_space_size", c(f.HOST_IA32_EFER, b.EFER_LMA))
add("host.cr4.cet_needs_wp", s(f.HOST_CR4, b.CR4_CET), c(f.HOST_CR0, b.CR0_WP))
add("host.cet.canonical", CET_ON_EXIT, p(host_ia32_interrupt_ssp_table_addr=NONCANONICAL))
add("host.cet.s_cet_reserved", CET_ON_EXIT, p(host_ia32_s_cet=0x40))
add("host.cet.s_cet_suppress_tracker", CET_ON_EXIT, p(host_ia32_s_cet=0xC00))
add("host.cet.ssp_alignment", CET_ON_EXIT, p(host_ssp=0x1002))
add("host.address_space.cet_64bit", CET_ON_EXIT, p(host_ssp=NONCANONICAL))
add("host.address_space.cet_64bit", CET_ON_EXIT, p(host_ia32_s_cet=1 << 50), label="s_cet")
add("host.address_space.cet_32bit", protected_mode, legacy_host, CET_ON_EXIT,
    p(host_ia32_s_cet=1 << 32), legacy_processor=True)  # fmt: skip
add("host.fred.config_reserved", load_fred_on_exit, p(host_ia32_fred_config=0x4))
add("host.fred.rsp_alignment", load_fred_on_exit, p(host_ia32_fred_rsp2=0x1010))
add("host.fred.ssp_alignment", load_fred_on_exit, p(host_ia32_fred_ssp3=0x1004))
add("host.fred.canonical", load_fred_on_exit, p(host_ia32_fred_rsp1=NONCANONICAL))
add("host.address_space.legacy_host_fred", protected_mode, legacy_host,
    s(f.HOST_CR4, b.CR4_FRED), legacy_processor=True)  # fmt: skip
add("host.pkrs.reserved", s(EXIT, b.EXIT_LOAD_PKRS), p(host_ia32_pkrs=1 << 32))
add("host.selector.rpl_ti", p(host_ds_selector=0x13))
add("host.selector.cs_tr_null", p(host_tr_selector=0))
add("host.selector.ss_null", protected_mode, legacy_host, p(host_ss_selector=0),
    legacy_processor=True)  # fmt: skip
add("host.base.canonical", p(host_gs_base=NONCANONICAL))
add("host.address_space.legacy_processor_guest", legacy_host, legacy_processor=True,
    also=frozenset({"host.address_space.legacy_host_guest"}))  # fmt: skip
add("host.address_space.legacy_processor_host", protected_mode, legacy_processor=True)
add("host.address_space.ia32e_processor_host", protected_mode, legacy_host)
add("host.address_space.legacy_host_guest", legacy_host,
    also=frozenset({"host.address_space.ia32e_processor_host"}))  # fmt: skip
add("host.address_space.legacy_host_pcide", protected_mode, legacy_host,
    s(f.HOST_CR4, b.CR4_PCIDE), legacy_processor=True)  # fmt: skip
add("host.address_space.legacy_host_rip", protected_mode, legacy_host, p(host_rip=1 << 32),
    legacy_processor=True)  # fmt: skip
add("host.address_space.host_pae", c(f.HOST_CR4, b.CR4_PAE))
add("host.address_space.host_rip_canonical", p(host_rip=NONCANONICAL))

# -- 26.3.1.1 guest control registers, debug registers, MSRs ------------------------
add("guest.cr0.fixed_bits", c(f.GUEST_CR0, b.CR0_NE))
add("guest.cr0.pg_requires_pe", unrestricted, c(f.GUEST_CR0, b.CR0_PE))
add("guest.cr4.fixed_bits", c(f.GUEST_CR4, b.CR4_VMXE))
add("guest.debugctl.reserved", s(ENTRY, b.ENTRY_LOAD_DEBUG), p(guest_ia32_debugctl=1 << 2))
add("guest.ia32e.paging", c(f.GUEST_CR4, b.CR4_PAE))
add("guest.cr4.pcide", protected_mode, s(f.GUEST_CR4, b.CR4_PCIDE))
add("guest.cr3.width", p(guest_cr3=1 << 45))
add("guest.dr7.upper_bits", s(ENTRY, b.ENTRY_LOAD_DEBUG), p(guest_dr7=1 << 32 | 0x400))
add("guest.sysenter.canonical", p(guest_ia32_sysenter_esp=NONCANONICAL))
add("guest.perf_global_ctrl.reserved", s(ENTRY, b.ENTRY_LOAD_PERF_GLOBAL),
    p(guest_ia32_perf_global_ctrl=1))  # fmt: skip
add("guest.pat.memory_types", s(ENTRY, b.ENTRY_LOAD_PAT), p(guest_ia32_pat=0x0007_0406_0307_0406))
add("guest.efer.reserved", s(f.GUEST_IA32_EFER, 1 << 9))
add("guest.efer.lma", p(guest_ia32_efer=b.EFER_NXE))
add("guest.efer.lme", c(f.GUEST_IA32_EFER, b.EFER_LME))
add("guest.bndcfgs.reserved", s(ENTRY, b.ENTRY_LOAD_BNDCFGS), p(guest_ia32_bndcfgs=0x4))
add("guest.bndcfgs.canonical", s(ENTRY, b.ENTRY_LOAD_BNDCFGS), p(guest_ia32_bndcfgs=NONCANONICAL))
add("guest.cr4.cet_needs_wp", s(f.GUEST_CR4, b.CR4_CET), c(f.GUEST_CR0, b.CR0_WP))
add("guest.cet.s_cet_reserved", CET_ON_ENTRY, p(guest_ia32_s_cet=0x80))
add("guest.cet.s_cet_suppress_tracker", CET_ON_ENTRY, p(guest_ia32_s_cet=0xC00))
add("guest.cet.ssp_alignment", CET_ON_ENTRY, p(guest_ssp=0x1001))
add("guest.cet.canonical", CET_ON_ENTRY, p(guest_ia32_interrupt_ssp_table_addr=NONCANONICAL))
add("guest.cr4.fred_needs_ia32e", protected_mode, fred)
add("guest.fred.config_reserved", FRED_ON_ENTRY, p(guest_ia32_fred_config=1 << 11))
add("guest.fred.rsp_alignment", FRED_ON_ENTRY, p(guest_ia32_fred_rsp3=0x1020))
add("guest.fred.ssp_alignment", FRED_ON_ENTRY, p(guest_ia32_fred_ssp1=0x1001))
add("guest.fred.canonical", FRED_ON_ENTRY, p(guest_ia32_fred_config=NONCANONICAL))
add("guest.lbr_ctl.reserved", s(ENTRY, b.ENTRY_LOAD_LBR_CTL), p(guest_ia32_lbr_ctl=0x2))
add("guest.pkrs.reserved", s(ENTRY, b.ENTRY_LOAD_PKRS), p(guest_ia32_pkrs=1 << 33))

# -- 26.3.1.2 guest segment registers ---------------------------------------------------
add("guest.tr.selector_ti", p(guest_tr_selector=0x1C))
add("guest.ldtr.selector_ti", usable_ldtr, p(guest_ldtr_selector=0x24))
add("guest.ss.selector_rpl", p(guest_cs_selector=0x0B))
add("guest.v8086.base", v8086, p(guest_ds_base=0x10))
add("guest.base.canonical", p(guest_fs_base=NONCANONICAL))
add("guest.ldtr.base_canonical", usable_ldtr, p(guest_ldtr_base=NONCANONICAL))
add("guest.cs.base_upper", p(guest_cs_base=1 << 32))
add("guest.base.upper", p(guest_ds_base=1 << 32))
add("guest.v8086.limit", v8086, p(guest_es_limit=0xFFFFF))
add("guest.v8086.access_rights", v8086, p(guest_gs_access_rights=0xF1))
add("guest.cs.type", p(guest_cs_access_rights=0xA09A))
add("guest.ss.type", p(guest_ss_access_rights=0xC091))
add("guest.data.accessed", p(guest_ds_access_rights=0xC092))
add("guest.data.readable", p(guest_ds_access_rights=0xC099))
add("guest.segment.s", p(guest_es_access_rights=0xC083))
add("guest.cs.dpl_data", unrestricted, p(guest_cs_access_rights=0xA0B3))
add("guest.cs.dpl_nonconforming", p(guest_cs_access_rights=0xA0FB))
add("guest.cs.dpl_conforming", p(guest_cs_access_rights=0xA0BF))
add("guest.ss.dpl_rpl", p(guest_cs_selector=0x0B, guest_ss_selector=0x13))
add("guest.ss.dpl_real_mode", unrestricted,
    p(guest_cs_access_rights=0xA093, guest_ss_access_rights=0xC0F3))  # fmt: skip
add("guest.data.dpl", p(guest_ds_selector=0x13))
add("guest.segment.present", p(guest_fs_access_rights=0xC013))
add("guest.segment.reserved_11_8", p(guest_gs_access_rights=0xC193))
add("guest.cs.l_and_d", p(guest_cs_access_rights=0xE09B))
add("guest.segment.granularity_low", p(guest_ds_limit=0xFFFF_F000))
add("guest.segment.granularity_high", p(guest_ds_access_rights=0x4093))
add("guest.segment.reserved_31_17", s(f.GUEST_ES_ACCESS_RIGHTS, 1 << 20))
add("guest.fred.ss_dpl", fred, p(guest_cs_selector=0x09, guest_cs_access_rights=0xA0BB,
    guest_ss_selector=0x11, guest_ss_access_rights=0xC0B3))  # fmt: skip
add("guest.fred.cs_l", fred, p(guest_cs_access_rights=0xC09B))
add("guest.tr.type", protected_mode, p(guest_tr_access_rights=0x89))
add("guest.tr.type_ia32e", p(guest_tr_access_rights=0x83))
add("guest.tr.s", p(guest_tr_access_rights=0x9B))
add("guest.tr.present", p(guest_tr_access_rights=0x0B))
add("guest.tr.reserved_11_8", p(guest_tr_access_rights=0x18B))
add("guest.tr.granularity_low", s(f.GUEST_TR_ACCESS_RIGHTS, b.AR_G))
add("guest.tr.granularity_high", p(guest_tr_limit=0x10_0000))
add("guest.tr.usable", s(f.GUEST_TR_ACCESS_RIGHTS, b.AR_UNUSABLE))
add("guest.tr.reserved_31_17", s(f.GUEST_TR_ACCESS_RIGHTS, 1 << 17))
add("guest.ldtr.type", usable_ldtr, p(guest_ldtr_access_rights=0x83))
add("guest.ldtr.s", usable_ldtr, p(guest_ldtr_access_rights=0x92))
add("guest.ldtr.present", usable_ldtr, p(guest_ldtr_access_rights=0x02))
add("guest.ldtr.reserved_11_8", usable_ldtr, p(guest_ldtr_access_rights=0x282))
add("guest.ldtr.granularity_low", usable_ldtr, p(guest_ldtr_access_rights=0x8082))
add("guest.ldtr.granularity_high", usable_ldtr, p(guest_ldtr_limit=0x10_0000))
add("guest.ldtr.reserved_31_17", usable_ldtr, p(guest_ldtr_access_rights=0x82 | 1 << 18))

# -- 26.3.1.3 / 26.3.1.4 descriptor tables, RIP and RFLAGS -------------------------------
add("guest.gdtr_idtr.canonical", p(guest_idtr_base=NONCANONICAL))
add("guest.gdtr_idtr.limit", p(guest_gdtr_limit=0x1_0000))
add("guest.rip.upper_bits", protected_mode, p(guest_rip=1 << 32))
add("guest.rip.canonical", p(guest_rip=1 << 50))
add("guest.rflags.reserved", p(guest_rflags=0x2 | 1 << 3))
add("guest.rflags.reserved", p(guest_rflags=0), label="bit1")
add("guest.rflags.reserved", p(guest_rflags=0x2 | 1 << 22), label="upper")
add("guest.rflags.vm", v8086_segments)
add("guest.rflags.if_for_interrupt", ev(EXT, 0x20))
add("guest.ssp.upper_bits", CET_ON_ENTRY, p(guest_ssp=1 << 50))
add("guest.fred.iopl", fred, ring3, p(guest_rflags=0x2 | 1 << 12))

# -- 26.3.1.5 guest non-register state ---------------------------------------------
add("guest.activity.valid", p(guest_activity_state=4))
add("guest.activity.valid", p(guest_activity_state=2), label="unsupported",
    cpu=capability(msrs.IA32_VMX_MISC, 1 << 7))  # fmt: skip
add("guest.activity.hlt_cpl", ring3, p(guest_activity_state=HLT))
add("guest.activity.blocking", p(guest_activity_state=HLT, guest_rflags=0x202,
    guest_interruptibility_state=STI))  # fmt: skip
add("guest.activity.event", p(guest_activity_state=HLT), ev(HW, 13, error_code=0))
add("guest.activity.smm_sipi", s(ENTRY, b.ENTRY_SMM), p(guest_activity_state=3),
    also=frozenset({"controls.entry.smm", "guest.interruptibility.smi_for_smm_entry"}))  # fmt: skip
add("guest.interruptibility.reserved", p(guest_interruptibility_state=1 << 5))
add("guest.interruptibility.sti_and_mov_ss",
    p(guest_rflags=0x202, guest_interruptibility_state=STI | MOV_SS))  # fmt: skip
add("guest.interruptibility.sti_needs_if", p(guest_interruptibility_state=STI))
add("guest.interruptibility.external_interrupt",
    p(guest_rflags=0x202, guest_interruptibility_state=MOV_SS), ev(EXT, 0x20))  # fmt: skip
add("guest.interruptibility.nmi_mov_ss", p(guest_interruptibility_state=MOV_SS), ev(NMI, 2))
add("guest.interruptibility.smi_outside_smm", p(guest_interruptibility_state=b.BLOCKING_BY_SMI))
add("guest.interruptibility.smi_for_smm_entry", s(ENTRY, b.ENTRY_SMM),
    also=frozenset({"controls.entry.smm"}))  # fmt: skip
add("guest.interruptibility.virtual_nmi", s(PIN, b.PIN_NMI_EXITING | b.PIN_VIRTUAL_NMIS),
    p(guest_interruptibility_state=b.BLOCKING_BY_NMI), ev(NMI, 2))  # fmt: skip
add("guest.interruptibility.enclave", p(guest_interruptibility_state=ENCLAVE))
add("guest.interruptibility.enclave", p(guest_interruptibility_state=ENCLAVE | MOV_SS),
    cpu=sgx, label="mov-ss")  # fmt: skip
add("guest.uinv.vector", s(ENTRY, b.ENTRY_LOAD_UINV), p(guest_uinv=0x100))
add("guest.fred.sti_blocking", fred, ring3, p(guest_rflags=0x202, guest_interruptibility_state=STI))
add("guest.pending_debug.reserved", p(guest_pending_debug_exceptions=1 << 4))
add("guest.pending_debug.bs_set", p(guest_rflags=0x302, guest_interruptibility_state=STI))
add("guest.pending_debug.bs_clear", p(guest_rflags=0x202, guest_interruptibility_state=STI,
    guest_pending_debug_exceptions=1 << 14))  # fmt: skip
add("guest.link_pointer.address", p(vmcs_link_pointer=0x1008))

# -- 26.3.1.6 PDPTEs ------------------------------------------------------------------
add("guest.pdpte.reserved", pae_protected_mode, ept, p(guest_pdpte0=0x1000 | 1 << 1 | 1))

CASES: tuple[Case, ...] = tuple(_CASES)
