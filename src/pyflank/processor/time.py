"""Guest time on an engine that measures the guest's progress: virtual, so a run is
deterministic.

An engine reports how much guest code it has executed, in units of its own that repeat
exactly from run to run (the software CPU counts the bytes of the translation blocks it
runs).  Time moves with that count (``UNITS_PER_NS``: a 4-byte instruction per
nanosecond, roughly) and jumps while the guest is idle (HLT with interrupts enabled: the
processor advances it to the next timer deadline).  The TSC runs at ``TSC_HZ`` of that
time; CPUID leaves 0x15/0x16 and the platform (``tsc_early_khz``) tell Linux the same
rate, so its clocks agree with the devices'.
"""

from __future__ import annotations

from typing import Final

from pyflank.intel_x64.cpu import TSC_MHZ

UNITS_PER_NS: Final = 4
TSC_HZ: Final = TSC_MHZ * 1_000_000
_NS_PER_S: Final = 1_000_000_000


def guest_ns(executed: int, idle_ns: int) -> int:
    """Virtual time after ``executed`` units of guest code and ``idle_ns`` spent halted."""
    return executed // UNITS_PER_NS + idle_ns


def units_for(ns: int) -> int:
    """The units of guest code that take ``ns`` of virtual time (at least one)."""
    return max(1, ns * UNITS_PER_NS)


def tsc(ns: int) -> int:
    """The time-stamp counter at virtual time ``ns``."""
    return ns * TSC_HZ // _NS_PER_S
