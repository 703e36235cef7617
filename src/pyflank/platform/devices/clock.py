"""Virtual time: what every device that needs time is given, instead of the host clock.

Devices read ``now_ns()`` and never the wall clock, so a run whose clock is derived from
the instruction count is deterministic.  A device with timers is a :class:`Timed`: it
says when it next needs service, so a processor can stop the engine exactly there, and
``service()`` raises whatever fell due.
"""

from __future__ import annotations

from typing import Protocol

NS_PER_S = 1_000_000_000


class Clock(Protocol):
    def now_ns(self) -> int: ...


class Timed(Protocol):
    def next_deadline_ns(self) -> int | None: ...  # None: nothing scheduled

    def service(self) -> None: ...  # act on every deadline at or before the clock's now


class VirtualClock:
    """Time that moves only when told to: by a processor (from the instruction count), or
    by a test."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def advance_to(self, now_ns: int) -> None:
        if now_ns < self._now:
            raise ValueError(f"virtual time runs forward: {now_ns} ns < {self._now} ns")
        self._now = now_ns

    def advance(self, delta_ns: int) -> None:
        self.advance_to(self._now + delta_ns)


def ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)
