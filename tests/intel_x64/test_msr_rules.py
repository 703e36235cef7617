"""The WRMSR rules of intel_x64/msrs.py: what the hardware refuses, and that VM entry agrees.

A VMCS-backed MSR's field holds what a WRMSR could have written, so a value is
refused by WRMSR exactly when the VM-entry check on that field refuses it (with
the control that makes VM entry load the field set).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflank.intel_x64 import checks, msrs
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.valid_state import default_controls, long_mode_guest_state
from pyflank.intel_x64.cpu import ModelCpu, MsrFault, canonical, wrmsr_fault
from pyflank.intel_x64.vmcs import Vmcs

# The VM-entry check that judges each VMCS-backed field, and the entry control it needs.
ENTRY_CHECK = {
    msrs.IA32_DEBUGCTL: ("guest.debugctl.reserved", b.ENTRY_LOAD_DEBUG),
    msrs.IA32_PAT: ("guest.pat.memory_types", b.ENTRY_LOAD_PAT),
    msrs.IA32_EFER: ("guest.efer.reserved", b.ENTRY_LOAD_EFER),
    msrs.IA32_PERF_GLOBAL_CTRL: ("guest.perf_global_ctrl.reserved", b.ENTRY_LOAD_PERF_GLOBAL),
    msrs.IA32_SYSENTER_ESP: ("guest.sysenter.canonical", 0),
    msrs.IA32_SYSENTER_EIP: ("guest.sysenter.canonical", 0),
    msrs.IA32_FS_BASE: ("guest.base.canonical", 0),
    msrs.IA32_GS_BASE: ("guest.base.canonical", 0),
}
CHECKED = sorted(ENTRY_CHECK)

_values = st.one_of(
    st.integers(0, (1 << 64) - 1),
    st.integers(0, 63).map(lambda bit: 1 << bit),
    st.integers(0, (1 << 47) - 1),
    st.integers(0, (1 << 47) - 1).map(lambda low: (((1 << 17) - 1) << 47) | low),
    st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]), min_size=8, max_size=8).map(
        lambda types: sum(t << (8 * i) for i, t in enumerate(types))
    ),
)


def test_the_table_names_every_field_once() -> None:
    fields = [backed.field for backed in msrs.VMCS_BACKED_MSRS.values()]
    assert len(set(fields)) == len(fields) == 9
    assert set(msrs.VMCS_BACKED_MSRS) - set(ENTRY_CHECK) == {msrs.IA32_SYSENTER_CS}
    for msr, backed in msrs.VMCS_BACKED_MSRS.items():
        assert msrs.WRMSR_RULES[msr] is backed.rule


def test_canonical() -> None:
    assert canonical(0x0000_7FFF_FFFF_FFFF, 48) and canonical(0xFFFF_8000_0000_0000, 48)
    assert not canonical(0x0000_8000_0000_0000, 48)
    assert canonical(0x0000_8000_0000_0000, 57) and not canonical(0x0100_0000_0000_0000, 57)


def test_fault_names_the_msr_and_the_problem() -> None:
    fault = wrmsr_fault(ModelCpu(), msrs.IA32_SYSENTER_ESP, 1 << 47)
    assert isinstance(fault, MsrFault) and fault.write and fault.msr == msrs.IA32_SYSENTER_ESP
    assert "IA32_SYSENTER_ESP" in str(fault) and "non-canonical" in str(fault)
    assert wrmsr_fault(ModelCpu(), msrs.IA32_STAR, 1 << 63) is None  # no rule: any value


@pytest.mark.parametrize("msr", CHECKED)
@given(value=_values)
def test_wrmsr_refuses_exactly_what_vm_entry_refuses(msr: int, value: int) -> None:
    cpu = ModelCpu()
    vmcs = Vmcs()
    default_controls(vmcs, cpu)
    long_mode_guest_state(vmcs, cr3=0x1000, rip=0x1000, rsp=0x2000, gdt_base=0, gdt_limit=0x1F)
    check_id, control = ENTRY_CHECK[msr]
    vmcs.write(f.VM_ENTRY_CONTROLS, vmcs.read(f.VM_ENTRY_CONTROLS) | control)
    vmcs.write(msrs.VMCS_BACKED_MSRS[msr].field, value)
    refused_by_entry = check_id in {v.check_id for v in checks.check_guest_state(vmcs, cpu)}
    assert (wrmsr_fault(cpu, msr, value) is not None) == refused_by_entry
