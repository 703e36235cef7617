"""The MC146818 real-time clock and its CMOS RAM (index at offset 0, data at offset 1).

The time of day is ``start`` (seconds since the Unix epoch, given by the platform) plus the
virtual clock, never the host's clock.  Registers follow status register B's data mode
(BCD or binary) and hour format; A's update-in-progress bit is set in the 244 us before
each second's update; C's flags (periodic, alarm, update-ended) are set as time passes
and cleared by reading C; IRQ8 is raised while an enabled flag is set.  A guest may set
the time (B.SET holds updates while it writes).
"""

from __future__ import annotations

import calendar
import time
from typing import Final

from pyflank.platform.devices.clock import NS_PER_S, Clock, ceil_div
from pyflank.platform.devices.irq import IrqLine, disconnected

CMOS_SIZE: Final = 128
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = range(6)
WEEKDAY, DAY, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY: Final = 0x32
A_UIP, A_DIVIDER_MASK, A_DIVIDER_NORMAL, A_RATE_MASK = 0x80, 0x70, 0x20, 0x0F
B_SET, B_PIE, B_AIE, B_UIE, B_BINARY, B_24H = 0x80, 0x40, 0x20, 0x10, 0x04, 0x02
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
D_VRT: Final = 0x80
UIP_NS: Final = 244_000
_TIME_REGISTERS = (SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY)
_DONT_CARE = 0xC0


def _bcd(value: int) -> int:
    return value // 10 << 4 | value % 10


def _unbcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0xF)


class CmosRtc:
    def __init__(
        self, clock: Clock, start: int, irq: IrqLine | None = None, *, memory_size: int = 0
    ) -> None:
        self.clock = clock
        self.irq = irq or disconnected()
        self.offset_s = start  # guest time = offset_s + virtual seconds
        self.index = 0
        self.nmi_disabled = False
        self.cmos = bytearray(CMOS_SIZE)
        self.cmos[REG_A], self.cmos[REG_B], self.cmos[REG_D] = 0x26, B_24H, D_VRT
        self._held: dict[int, int] | None = None  # time registers while B.SET holds them
        self._flags_ns = clock.now_ns()  # C's flags account for time up to here
        if memory_size:
            self._memory_bytes(memory_size)

    def _memory_bytes(self, size: int) -> None:
        """What a PC BIOS leaves about RAM size, for guests that look (Linux does not)."""
        kib = size // 1024
        extended = min(max(kib - 1024, 0), 0xFFFF)
        above_16m = min(max(size - (16 << 20), 0) >> 16, 0xFFFF)
        for register, value in ((0x15, 640), (0x17, extended), (0x30, extended), (0x34, above_16m)):
            self.cmos[register : register + 2] = value.to_bytes(2, "little")

    # -- time ---------------------------------------------------------------------------
    def now_s(self) -> int:
        return self.offset_s + self.clock.now_ns() // NS_PER_S

    def _encode(self, value: int) -> int:
        return value if self.cmos[REG_B] & B_BINARY else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.cmos[REG_B] & B_BINARY else _unbcd(value)

    def _time_registers(self) -> dict[int, int]:
        if self._held is not None:
            return self._held
        t = time.gmtime(self.now_s())
        if self.cmos[REG_B] & B_24H:
            hours = self._encode(t.tm_hour)
        else:
            hours = self._encode(t.tm_hour % 12 or 12) | (0x80 if t.tm_hour >= 12 else 0)
        encode = self._encode
        return {
            SECONDS: encode(t.tm_sec),
            MINUTES: encode(t.tm_min),
            HOURS: hours,
            WEEKDAY: encode((t.tm_wday + 1) % 7 + 1),  # Sunday is 1
            DAY: encode(t.tm_mday),
            MONTH: encode(t.tm_mon),
            YEAR: encode(t.tm_year % 100),
            CENTURY: encode(t.tm_year // 100),
        }

    def _set_time(self, registers: dict[int, int]) -> None:
        decode = self._decode
        hour = decode(registers[HOURS] & 0x7F)
        if not self.cmos[REG_B] & B_24H:
            hour = hour % 12 + (12 if registers[HOURS] & 0x80 else 0)
        year = decode(registers[CENTURY]) * 100 + decode(registers[YEAR])
        month, day = decode(registers[MONTH]), decode(registers[DAY])
        minute, second = decode(registers[MINUTES]), decode(registers[SECONDS])
        valid = year >= 1 and 1 <= month <= 12 and day >= 1
        valid = valid and day <= calendar.monthrange(year, month)[1]
        if not (valid and hour < 24 and minute < 60 and second < 60):
            return  # an impossible time: the clock keeps its own
        when = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        self.offset_s = when - self.clock.now_ns() // NS_PER_S

    def _update_in_progress(self) -> bool:
        if self._held is not None or not self._running():
            return False
        return self.clock.now_ns() % NS_PER_S >= NS_PER_S - UIP_NS

    def _running(self) -> bool:
        return self.cmos[REG_A] & A_DIVIDER_MASK == A_DIVIDER_NORMAL

    # -- interrupts ---------------------------------------------------------------------
    def _periodic_ns(self) -> int | None:
        rate = self.cmos[REG_A] & A_RATE_MASK
        if not rate or not self._running():
            return None
        ticks = 1 << (rate + 6) if rate < 3 else 1 << (rate - 1)  # of the 32.768 kHz clock
        return ticks * NS_PER_S // 32768

    def _catch_up(self) -> None:
        """Set C's flags for everything that happened since they were last brought up to
        date."""
        now, last = self.clock.now_ns(), self._flags_ns
        if now <= last:
            return
        self._flags_ns = now
        flags = 0
        period = self._periodic_ns()
        if period and now // period > last // period:
            flags |= C_PF
        first, newest = last // NS_PER_S + 1, now // NS_PER_S
        if newest >= first and self._held is None and self._running():
            flags |= C_UF
            if self._alarm_between(max(first, newest - 86_400), newest):
                flags |= C_AF
        self.cmos[REG_C] |= flags
        self._update_irq()

    def _alarm_between(self, first: int, last: int) -> bool:
        wanted = [self.cmos[r] for r in (SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM)]
        for second in range(first, last + 1):
            t = time.gmtime(self.offset_s + second)
            actual = self._encode(t.tm_sec), self._encode(t.tm_min), self._encode(t.tm_hour)
            if all(w >= _DONT_CARE or w == a for w, a in zip(wanted, actual, strict=True)):
                return True
        return False

    def _update_irq(self) -> None:
        enabled = self.cmos[REG_B] & (B_PIE | B_AIE | B_UIE)
        raised = bool(self.cmos[REG_C] & enabled)  # C's flags sit where B's enables do
        if raised:
            self.cmos[REG_C] |= C_IRQF
        self.irq.set_level(raised)

    def next_deadline_ns(self) -> int | None:
        b = self.cmos[REG_B]
        if self.irq.level or not b & (B_PIE | B_AIE | B_UIE):
            return None
        now, candidates = self.clock.now_ns(), []
        period = self._periodic_ns()
        if b & B_PIE and period:
            candidates.append((now // period + 1) * period)
        if b & (B_AIE | B_UIE) and self._running():
            candidates.append(ceil_div(now + 1, NS_PER_S) * NS_PER_S)
        return min(candidates, default=None)

    def service(self) -> None:
        self._catch_up()

    # -- registers ----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF  # the index register is write-only
        index = self.index
        if index in _TIME_REGISTERS:
            return self._time_registers()[index]
        if index == REG_A:
            return self.cmos[REG_A] | (A_UIP if self._update_in_progress() else 0)
        if index == REG_C:
            self._catch_up()
            value = self.cmos[REG_C]
            self.cmos[REG_C] = 0
            self._update_irq()
            return value
        return self.cmos[index]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            self.index = value & 0x7F
            self.nmi_disabled = bool(value & 0x80)
            return
        index = self.index
        if index in _TIME_REGISTERS:
            registers = dict(self._time_registers())
            registers[index] = value
            if self._held is not None:
                self._held = registers
            else:
                self._set_time(registers)
        elif index == REG_A:
            self._catch_up()
            self.cmos[REG_A] = value & 0x7F
        elif index == REG_B:
            self._write_b(value)
        elif index not in (REG_C, REG_D):
            self.cmos[index] = value

    def _write_b(self, value: int) -> None:
        self._catch_up()
        if value & B_SET and self._held is None:
            self._held = dict(self._time_registers())
        elif not value & B_SET and self._held is not None:
            held, self._held = self._held, None
            self.cmos[REG_B] = value
            self._set_time(held)
        self.cmos[REG_B] = value
        self._update_irq()
