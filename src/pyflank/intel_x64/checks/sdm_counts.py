"""How many rules the SDM lists per group, and which of them pyflank cannot check.

How the rules were counted, in the 2016-era edition (sections 26.2.1.1 to
26.3.1.6, read through a public mirror of its pages):

* one rule per bullet or dash that states a requirement; a bullet whose dashes
  each state a separate requirement counts once per dash, and a bullet that only
  introduces its dashes ("the following must hold") does not count itself;
* for an address the SDM splits "bits 11:0 (or 3:0, 5:0) must be 0" and "no bits
  beyond the physical-address width" into two dashes; they count as one rule,
  because they are one check of one field;
* sub-items that spell out a consequence ("this implies the following", the list
  of events each activity state allows) do not count separately;
* "may" statements (a processor may require ...) and rules that exist only for
  processors without Intel 64 architecture, or only inside SMM, are not counted.

Per section: 26.2.1.1 32, 26.2.1.2 4, 26.2.1.3 10; 26.2.2 8, 26.2.3 4, 26.2.4 8;
26.3.1.1 16; 26.3.1.2 43 (selectors 3, bases 5, limits 1, access rights: 1 for
virtual-8086, 17 for CS-GS, 9 for TR, 7 for LDTR); 26.3.1.3 2; 26.3.1.4 5;
26.3.1.5 21 (activity 5, interruptibility 9, pending debug exceptions 4, VMCS
link pointer 3); 26.3.1.6 2.

Where the mirror's page text was cut short the remaining bullets were counted
from the section's structure in later editions; the CONTROLS and
GUEST_NON_REGISTER_STATE counts carry that uncertainty (a bullet or two).

pyflank also implements rules added after that edition (sections 27.x: CET, FRED,
PKRS, architectural LBRs, user interrupts, sub-page permissions, tertiary and
secondary VM-exit controls, ...); they are not in these counts, because no
edition-independent count of them exists.  ``UNIMPLEMENTED_RULES`` lists the rules
of both kinds that pyflank does not check, each prefixed with its section: only the
26.x entries count against ``SDM_RULE_COUNTS``.
"""

from __future__ import annotations

from typing import Final

from pyflank.intel_x64.checks.registry import CheckGroup

SDM_RULE_COUNTS: Final[dict[CheckGroup, int]] = {
    CheckGroup.CONTROLS: 46,
    CheckGroup.HOST_STATE: 20,
    CheckGroup.GUEST_CONTROL_REGISTERS: 16,
    CheckGroup.GUEST_SEGMENT_REGISTERS: 43,
    CheckGroup.GUEST_DESCRIPTOR_TABLES: 2,
    CheckGroup.GUEST_RIP_RFLAGS: 5,
    CheckGroup.GUEST_NON_REGISTER_STATE: 21,
    CheckGroup.GUEST_PDPTES: 2,
}

UNIMPLEMENTED_RULES: Final[dict[CheckGroup, tuple[str, ...]]] = {
    CheckGroup.CONTROLS: (
        "26.2.1.1: TPR threshold bits 3:0 not above VTPR bits 7:4 (VTPR is in guest memory)",
        '26.2.1.3: "entry to SMM" and "deactivate dual-monitor treatment" not both 1 '
        "(subsumed: outside SMM both must be 0, see controls.entry.smm)",
        '27.2.1.1: the "enable HLAT" rules (HLAT pointer, prefix size, EPT)',
        '27.2.1.1: what "EPT paging-write control" and "guest-paging verification" need',
        '27.2.1.1: the "IPI virtualization" PID-pointer table and last-PID-pointer index',
        '27.2.1.1: the "PASID translation" PASID-directory addresses',
        "27.2.1.1: EPTP bit 7 (supervisor shadow-stack control) is checked as reserved",
    ),
    CheckGroup.GUEST_CONTROL_REGISTERS: (
        "27.3.1.1: reserved IA32_RTIT_CTL bits (they follow a dozen Intel PT capability "
        "bits of CPUID leaf 14H that the processor model does not describe)",
    ),
    CheckGroup.GUEST_NON_REGISTER_STATE: (
        "26.3.1.5: the RTM bit (16) of the pending debug exceptions and its conditions",
        "26.3.1.5: the VMCS revision identifier at the VMCS link pointer (guest memory)",
        "26.3.1.5: the shadow-VMCS indicator at the VMCS link pointer (guest memory)",
    ),
    CheckGroup.GUEST_PDPTES: ('26.3.1.6: PDPTEs read from guest memory when "enable EPT" is 0',),
}
