"""Guest time on an engine that counts instructions: virtual, so a run is deterministic.

Time moves with the instructions the guest retires (``NS_PER_INSTRUCTION`` each) and
jumps while the guest is idle (HLT with interrupts enabled: the processor advances it to
the next timer deadline).  The TSC runs at ``TSC_HZ`` of that time; the platform tells
Linux the same rate (``tsc_early_khz``), so its clocks agree with the devices'.
"""

from __future__ import annotations

from typing import Final

NS_PER_INSTRUCTION: Final = 1  # a 1 GHz, one-instruction-per-cycle guest
TSC_HZ: Final = 2_600_000_000
_NS_PER_S: Final = 1_000_000_000


def guest_ns(instructions: int, idle_ns: int) -> int:
    """Virtual time after ``instructions`` retired and ``idle_ns`` spent halted."""
    return instructions * NS_PER_INSTRUCTION + idle_ns


def instructions_for(ns: int) -> int:
    """The instructions that take at least ``ns`` of virtual time (at least one)."""
    return max(1, -(-ns // NS_PER_INSTRUCTION))


def tsc(ns: int) -> int:
    """The time-stamp counter at virtual time ``ns``."""
    return ns * TSC_HZ // _NS_PER_S
