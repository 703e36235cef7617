"""The CMOS RTC as Linux's mc146818 code reads it, on a clock the platform gives."""

from __future__ import annotations

import calendar

from pyflank.platform.devices.clock import NS_PER_S, VirtualClock
from pyflank.platform.devices.irq import IrqLine
from pyflank.platform.devices.rtc import CmosRtc

START = calendar.timegm((2024, 2, 29, 23, 59, 58, 0, 0, 0))  # a Thursday


class Level:
    def __init__(self) -> None:
        self.level = False

    def set_irq(self, irq: int, level: bool) -> None:
        self.level = level


def cmos(rtc: CmosRtc, index: int, value: int | None = None) -> int:
    rtc.write(0, 1, index)
    if value is None:
        return rtc.read(1, 1)
    rtc.write(1, 1, value)
    return value


def test_time_of_day_in_bcd_follows_virtual_time_not_the_host() -> None:
    clock = VirtualClock()
    rtc = CmosRtc(clock, START)
    assert [cmos(rtc, r) for r in (0, 2, 4, 6, 7, 8, 9, 0x32)] == [
        0x58, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24, 0x20,
    ]  # fmt: skip
    assert cmos(rtc, 0x0D) == 0x80 and cmos(rtc, 0x0B) == 0x02 and cmos(rtc, 0x0A) == 0x26
    clock.advance(3 * NS_PER_S)
    assert [cmos(rtc, r) for r in (0, 2, 4, 7, 8)] == [0x01, 0x00, 0x00, 0x01, 0x03]


def test_binary_and_12_hour_modes() -> None:
    rtc = CmosRtc(VirtualClock(), START)
    cmos(rtc, 0x0B, 0x04)  # binary, 12-hour
    assert cmos(rtc, 0) == 58 and cmos(rtc, 4) == 0x80 | 11  # 11 PM
    assert cmos(rtc, 9) == 24


def test_update_in_progress_in_the_last_244_us_of_each_second() -> None:
    clock = VirtualClock()
    rtc = CmosRtc(clock, START)
    clock.advance_to(NS_PER_S - 244_001)
    assert not cmos(rtc, 0x0A) & 0x80
    clock.advance(1)
    assert cmos(rtc, 0x0A) & 0x80
    clock.advance_to(NS_PER_S)
    assert not cmos(rtc, 0x0A) & 0x80


def test_the_guest_sets_the_time_while_updates_are_held() -> None:
    clock = VirtualClock()
    rtc = CmosRtc(clock, START)
    cmos(rtc, 0x0B, 0x82)  # SET
    for register, value in ((9, 0x30), (8, 0x07), (7, 0x04), (4, 0x12), (2, 0x00), (0, 0x00)):
        cmos(rtc, register, value)
    clock.advance(5 * NS_PER_S)
    assert cmos(rtc, 0) == 0x00  # held
    cmos(rtc, 0x0B, 0x02)
    clock.advance(2 * NS_PER_S)
    assert rtc.now_s() == calendar.timegm((2030, 7, 4, 12, 0, 2, 0, 0, 0))
    cmos(rtc, 8, 0x13)  # an impossible month is refused
    assert cmos(rtc, 8) == 0x07


def test_update_and_periodic_interrupts_on_irq8_until_c_is_read() -> None:
    clock, line = VirtualClock(), Level()
    rtc = CmosRtc(clock, START, IrqLine(line, 8))
    assert rtc.next_deadline_ns() is None
    cmos(rtc, 0x0B, 0x12)  # UIE
    deadline = rtc.next_deadline_ns()
    assert deadline == NS_PER_S
    clock.advance_to(deadline)
    rtc.service()
    assert line.level and rtc.next_deadline_ns() is None  # raised: nothing more to time
    assert cmos(rtc, 0x0C) & 0x90 == 0x90  # IRQF, UF (PF ticks too, unasked); reading clears
    assert not line.level and cmos(rtc, 0x0C) == 0
    cmos(rtc, 0x0B, 0x42)  # PIE only, at the default rate 1024 Hz
    deadline = rtc.next_deadline_ns()
    assert deadline is not None and deadline - clock.now_ns() <= NS_PER_S // 1024
    clock.advance_to(deadline)
    rtc.service()
    assert line.level and cmos(rtc, 0x0C) & 0xC0 == 0xC0


def test_alarm_with_dont_care_fields() -> None:
    clock, line = VirtualClock(), Level()
    rtc = CmosRtc(clock, START, IrqLine(line, 8))
    cmos(rtc, 1, 0x05)  # alarm at second 5 of any minute, any hour
    cmos(rtc, 3, 0xFF)
    cmos(rtc, 5, 0xFF)
    cmos(rtc, 0x0B, 0x22)  # AIE
    clock.advance(6 * NS_PER_S)  # 23:59:58 -> 00:00:04: no alarm yet
    rtc.service()
    assert not line.level
    clock.advance(NS_PER_S)
    rtc.service()
    assert line.level and cmos(rtc, 0x0C) & 0x20


def test_nvram_and_the_index_register() -> None:
    rtc = CmosRtc(VirtualClock(), START, memory_size=256 << 20)
    cmos(rtc, 0x40, 0x5A)
    assert cmos(rtc, 0x40) == 0x5A
    rtc.write(0, 1, 0x80 | 0x40)  # bit 7: NMI off
    assert rtc.nmi_disabled and rtc.read(1, 1) == 0x5A and rtc.read(0, 1) == 0xFF
    assert cmos(rtc, 0x15) | cmos(rtc, 0x16) << 8 == 640
    assert cmos(rtc, 0x34) | cmos(rtc, 0x35) << 8 == (256 - 16) * 16
