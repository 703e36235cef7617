"""The 8254 programmable interval timer: three counters at 1.193182 MHz, on virtual time.

Offsets 0-2 are the counters, offset 3 the control word (counter latch and read-back
included).  Counters count ticks of one global clock, tick ``k`` falling at
``ceil(k * 1e9 / PIT_HZ)`` ns of virtual time, so reads and edges are exact and
deterministic.  All six modes are modelled; counter 0's OUT drives IRQ0 (``Timed``: the
next rising edge is its deadline), counter 2's gate and OUT are port 0x61's
(``SystemControlB``).  Two simplifications: a new count written in mode 2 or 3 restarts
the period at once (as QEMU does, not at the end of the current one), and in mode 3 the
value read decrements by two through each half period without the odd-count detail.
"""

from __future__ import annotations

from typing import Final

from pyflank.platform.devices.clock import NS_PER_S, Clock, ceil_div
from pyflank.platform.devices.irq import IrqLine

PIT_HZ: Final = 1_193_182
CONTROL: Final = 3
_LATCH, _LSB, _MSB, _LSB_MSB = range(4)
_READ_BACK: Final = 3


def tick_at(now_ns: int) -> int:
    return now_ns * PIT_HZ // NS_PER_S


def ns_of_tick(tick: int) -> int:
    return ceil_div(tick * NS_PER_S, PIT_HZ)


def _to_bcd(value: int) -> int:
    return int(str(value % 10000), 16)


def _from_bcd(value: int) -> int:
    return sum(((value >> (4 * i)) & 0xF) * 10**i for i in range(4))


class PitChannel:
    def __init__(self, *, gate: bool) -> None:
        self.gate = gate
        self.mode = 0
        self.access = _LSB_MSB
        self.bcd = False
        self.reload: int | None = None  # the count written (None: none since the mode)
        self.loaded_tick: int | None = None  # the count is N at this tick, N-1 one later
        self.paused_elapsed: int | None = None  # gate low in modes 0/4: counting held
        self.serviced_tick = 0  # rising edges up to this tick have been delivered
        self._write_msb = self._read_msb = False
        self._partial = 0
        self._latched: list[int] = []  # bytes still to read: status first, then count

    @property
    def period(self) -> int:
        modulus = 10000 if self.bcd else 0x10000
        count = self.reload or modulus
        return max(count, 2) if self.mode in (2, 3) else count

    def elapsed(self, tick: int) -> int | None:
        if self.loaded_tick is None:
            return None
        if self.paused_elapsed is not None:
            return self.paused_elapsed
        return max(0, tick - self.loaded_tick)

    def out(self, tick: int) -> bool:
        mode, elapsed, period = self.mode, self.elapsed(tick), self.period
        if mode in (2, 3) and not self.gate:
            return True
        if elapsed is None:
            return mode != 0
        if mode in (0, 1):
            return elapsed >= period
        if mode == 2:
            return elapsed % period != period - 1
        if mode == 3:
            return elapsed % period < (period + 1) // 2
        return elapsed != period  # modes 4 and 5: one tick low at terminal count

    def count(self, tick: int) -> int:
        elapsed, period = self.elapsed(tick), self.period
        modulus = 10000 if self.bcd else 0x10000
        if elapsed is None:
            value = (self.reload or 0) % modulus
        elif self.mode == 2:
            value = period - elapsed % period
        elif self.mode == 3:
            phase = elapsed % period
            half = (period + 1) // 2
            value = max((period & ~1) - 2 * (phase if phase < half else phase - half), 2)
        else:
            value = (period - elapsed) % modulus
        return _to_bcd(value) if self.bcd else value

    def next_edge(self, after: int) -> int | None:
        """The first tick after ``after`` at which OUT rises."""
        if self.loaded_tick is None or self.paused_elapsed is not None:
            return None
        if self.mode in (2, 3):
            if not self.gate:
                return None
            k = max(1, (after - self.loaded_tick) // self.period + 1)
            return self.loaded_tick + k * self.period
        edge = self.loaded_tick + self.period + (1 if self.mode in (4, 5) else 0)
        return edge if edge > after else None

    # -- programming --------------------------------------------------------------------
    def set_mode(self, control: int, tick: int) -> None:
        self.access = control >> 4 & 3
        mode = control >> 1 & 7
        self.mode = mode & 3 if mode >= 6 else mode  # 6 and 7 are 2 and 3
        self.bcd = bool(control & 1)
        self.reload = self.loaded_tick = self.paused_elapsed = None
        self._write_msb = self._read_msb = False
        self._latched.clear()
        self.serviced_tick = tick

    def _load(self, value: int, tick: int) -> None:
        self.reload = _from_bcd(value) if self.bcd else value
        self.paused_elapsed = None
        self.serviced_tick = tick
        if self.mode in (1, 5) or (self.mode in (2, 3) and not self.gate):
            self.loaded_tick = None  # waits for a rising edge of the gate
        else:
            self.loaded_tick = tick + 1
            if not self.gate:  # modes 0 and 4 hold while the gate is low
                self.paused_elapsed = 0

    def write_count(self, value: int, tick: int) -> None:
        value &= 0xFF
        if self.access == _LSB:
            self._load(value, tick)
        elif self.access == _MSB:
            self._load(value << 8, tick)
        elif not self._write_msb:
            self._partial = value
            self._write_msb = True
        else:
            self._write_msb = False
            self._load(self._partial | value << 8, tick)

    def set_gate(self, level: bool, tick: int) -> None:
        if level == self.gate:
            return
        if not level:
            if self.mode in (0, 4):
                elapsed = self.elapsed(tick)
                if elapsed is not None:
                    self.paused_elapsed = elapsed
        elif self.mode in (0, 4):
            if self.paused_elapsed is not None and self.loaded_tick is not None:
                self.loaded_tick = tick - self.paused_elapsed
                self.paused_elapsed = None
        elif self.reload is not None:  # modes 1, 2, 3, 5: a rising gate (re)starts
            self.loaded_tick = tick + 1
            self.serviced_tick = tick
        self.gate = level

    # -- reading ------------------------------------------------------------------------
    def _count_bytes(self, tick: int) -> list[int]:
        value = self.count(tick)
        if self.access == _LSB:
            return [value & 0xFF]
        if self.access == _MSB:
            return [value >> 8 & 0xFF]
        return [value & 0xFF, value >> 8 & 0xFF]

    def latch_count(self, tick: int) -> None:
        if not self._latched:
            self._latched = self._count_bytes(tick)

    def latch_status(self, tick: int, *, with_count: bool) -> None:
        null_count = self.loaded_tick is None or tick < self.loaded_tick
        status = self.out(tick) << 7 | null_count << 6 | self.access << 4
        status |= self.mode << 1 | self.bcd
        self._latched = [status, *(self._count_bytes(tick) if with_count else [])]

    def read(self, tick: int) -> int:
        if self._latched:
            return self._latched.pop(0)
        value = self._count_bytes(tick)
        if self.access != _LSB_MSB:
            return value[0]
        self._read_msb = not self._read_msb
        return value[0] if self._read_msb else value[1]


class Pit8254:
    """Counters 0-2 (offsets 0-2) and the control word (offset 3)."""

    def __init__(self, clock: Clock, irq0: IrqLine | None = None) -> None:
        self.clock = clock
        self.irq0 = irq0
        self.channels = (PitChannel(gate=True), PitChannel(gate=True), PitChannel(gate=False))

    def _tick(self) -> int:
        return tick_at(self.clock.now_ns())

    def read(self, offset: int, size: int) -> int:
        if offset >= CONTROL:
            return 0xFF  # the control word cannot be read
        return self.channels[offset].read(self._tick())

    def write(self, offset: int, size: int, value: int) -> None:
        tick = self._tick()
        if offset < CONTROL:
            self.channels[offset].write_count(value, tick)
        else:
            self._control(value & 0xFF, tick)
        self._drive_irq0(tick)

    def _control(self, value: int, tick: int) -> None:
        select = value >> 6
        if select == _READ_BACK:
            for number, channel in enumerate(self.channels):
                if value >> (number + 1) & 1:
                    if not value & 0x10:
                        channel.latch_status(tick, with_count=not value & 0x20)
                    elif not value & 0x20:
                        channel.latch_count(tick)
        elif value >> 4 & 3 == _LATCH:
            self.channels[select].latch_count(tick)
        else:
            self.channels[select].set_mode(value, tick)

    # -- counter 2's gate and OUT (port 0x61) --------------------------------------------
    def set_gate(self, channel: int, level: bool) -> None:
        self.channels[channel].set_gate(level, self._tick())

    def out(self, channel: int) -> bool:
        return self.channels[channel].out(self._tick())

    # -- IRQ0 ---------------------------------------------------------------------------
    def next_deadline_ns(self) -> int | None:
        if self.irq0 is None:
            return None
        counter = self.channels[0]
        edge = counter.next_edge(counter.serviced_tick)
        return None if edge is None else ns_of_tick(edge)

    def service(self) -> None:
        self._drive_irq0(self._tick())

    def _drive_irq0(self, tick: int) -> None:
        """Deliver the rising edges up to ``tick`` (several missed ones are one request,
        as the PIC's IRR holds one), then leave the line at OUT's level."""
        line = self.irq0
        if line is None:
            return
        counter = self.channels[0]
        edge = counter.next_edge(counter.serviced_tick)
        if edge is not None and edge <= tick:
            counter.serviced_tick = tick
            line.set_level(False)
            line.set_level(True)
        line.set_level(counter.out(tick))


class SystemControlB:
    """Port 0x61: counter 2's gate (bit 0) and speaker enable (bit 1) in, and out the
    refresh toggle (bit 4, every 15.085 us) and counter 2's OUT (bit 5)."""

    REFRESH_NS: Final = 15_085

    def __init__(self, pit: Pit8254, clock: Clock) -> None:
        self.pit = pit
        self.clock = clock
        self.control = 0

    def read(self, offset: int, size: int) -> int:
        refresh = self.clock.now_ns() // self.REFRESH_NS & 1
        return self.control | refresh << 4 | self.pit.out(2) << 5

    def write(self, offset: int, size: int, value: int) -> None:
        self.control = value & 0x0F
        self.pit.set_gate(2, bool(value & 1))
