"""What a processor lets an engine do by itself: exits the seed's handler would answer
without changing anything else (``exit_handler.fused``), carried out in the engine.

The engine may take the fused path right after the processor resumed the guest with its
reused plan (``resume``: nothing changed, nothing to check), and only while no Python ran
on the vCPU since.  It reports what it did with ``absorb`` before Python next runs there,
so the processor's counts, the VMCS, StateSave and the reason trace are then exactly what
the same exits through ``dispatch()`` would have left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyflank.exit_handler.fused import CpuidAnswer
from pyflank.processor.records import EntryPlan, ExitInformation

# absorb(count, info, rip, rflags, regs, rips): ``count`` exits of ``info``, the last at
# ``rip`` with ``rflags``; ``regs``: the 16 GPRs (SDM order) the handler left; ``rips``:
# every exit's RIP when a reason trace is kept, else None.
Absorb = Callable[[int, ExitInformation, int, int, tuple[int, ...], "list[int] | None"], None]


@dataclass(frozen=True)
class Fusion:
    resume: EntryPlan  # the plan of an exit that only resumes
    cpuid: CpuidAnswer  # the seed's CPUID answer, a pure function of (leaf, subleaf)
    absorb: Absorb
    trace: bool  # whether the exits' RIPs go to a reason trace
