"""The guest's paging, from its control registers: guest-linear memory as it sees it."""

from __future__ import annotations

from pyflank.intel_x64.registers import CR0_PG, CR0_WP, EFER_LMA, EFER_NXE
from pyflank.memory import GuestLinear, GuestPhysicalMemory


def guest_linear(memory: GuestPhysicalMemory, *, cr0: int, cr3: int, efer: int) -> GuestLinear:
    """``memory`` as a guest with these CR0, CR3 and EFER values addresses it."""
    return GuestLinear(
        memory,
        paging=bool(cr0 & CR0_PG),
        cr3=cr3,
        long_mode=bool(efer & EFER_LMA),
        wp=bool(cr0 & CR0_WP),
        nxe=bool(efer & EFER_NXE),
    )
