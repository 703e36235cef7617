"""The 8254 on virtual time: modes, latches, read-back, IRQ0 deadlines, port 0x61."""

from __future__ import annotations

from pyflank.platform.devices.clock import VirtualClock
from pyflank.platform.devices.irq import IrqLine
from pyflank.platform.devices.pit import PIT_HZ, Pit8254, SystemControlB, ns_of_tick, tick_at

LATCH = 1193182 // 250  # Linux's LATCH for HZ=250


class Edges:
    """An interrupt-controller input that counts rising edges."""

    def __init__(self) -> None:
        self.rises = 0
        self.level = False

    def set_irq(self, irq: int, level: bool) -> None:
        self.rises += level and not self.level
        self.level = level


def pit_with_irq0() -> tuple[Pit8254, VirtualClock, Edges]:
    clock, edges = VirtualClock(), Edges()
    return Pit8254(clock, IrqLine(edges, 0)), clock, edges


def program(pit: Pit8254, control: int, count: int, channel: int = 0) -> None:
    pit.write(3, 1, control)
    pit.write(channel, 1, count & 0xFF)
    pit.write(channel, 1, count >> 8)


def read_count(pit: Pit8254, channel: int = 0) -> int:
    return pit.read(channel, 1) | pit.read(channel, 1) << 8


def run_to_deadlines(pit: Pit8254, clock: VirtualClock, until_ns: int) -> int:
    services = 0
    while (deadline := pit.next_deadline_ns()) is not None and deadline <= until_ns:
        clock.advance_to(deadline)
        pit.service()
        services += 1
    clock.advance_to(until_ns)
    pit.service()
    return services


def test_ticks_and_nanoseconds_agree() -> None:
    assert tick_at(1_000_000_000) == PIT_HZ
    for tick in (1, 7, LATCH, 10**9):
        assert tick_at(ns_of_tick(tick)) == tick
        assert tick_at(ns_of_tick(tick) - 1) == tick - 1


def test_mode_2_interrupts_every_period_at_its_deadline() -> None:
    pit, clock, edges = pit_with_irq0()
    program(pit, 0x34, LATCH)  # Linux's periodic clockevent: channel 0, lo/hi, mode 2
    first = pit.next_deadline_ns()
    assert first == ns_of_tick(1 + LATCH)
    assert run_to_deadlines(pit, clock, 1_000_000_000) == 250
    assert edges.rises == 1 + 250  # OUT rose when mode 2 was set, then once a period
    assert edges.level  # OUT is high between the one-tick low pulses


def test_missed_periods_are_one_request() -> None:
    pit, clock, edges = pit_with_irq0()
    program(pit, 0x34, LATCH)
    clock.advance(100_000_000)  # 25 periods, serviced late
    pit.service()
    assert edges.rises == 1 + 1
    deadline = pit.next_deadline_ns()
    assert deadline is not None and deadline > clock.now_ns()


def test_mode_0_is_one_shot() -> None:
    pit, clock, edges = pit_with_irq0()
    program(pit, 0x30, 1000)  # oneshot clockevent: mode 0
    deadline = pit.next_deadline_ns()
    assert deadline == ns_of_tick(1 + 1000) and not edges.level
    clock.advance_to(deadline - 1)
    pit.service()
    assert edges.rises == 0
    clock.advance_to(deadline)
    pit.service()
    assert edges.rises == 1 and edges.level and pit.next_deadline_ns() is None
    clock.advance(10**9)
    pit.service()
    assert edges.rises == 1
    program(pit, 0x30, 10)  # re-arming drops OUT and schedules the next edge
    assert not edges.level and pit.next_deadline_ns() is not None


def test_live_and_latched_reads() -> None:
    pit, clock, _ = pit_with_irq0()
    program(pit, 0x34, 0x1000)
    clock.advance_to(ns_of_tick(1 + 0x10))
    assert read_count(pit) == 0x1000 - 0x10
    pit.write(3, 1, 0x00)  # counter latch, channel 0
    clock.advance_to(ns_of_tick(1 + 0x20))
    assert read_count(pit) == 0x1000 - 0x10  # the latched value
    assert read_count(pit) == 0x1000 - 0x20  # live again


def test_read_back_latches_status_then_count() -> None:
    pit, clock, _ = pit_with_irq0()
    program(pit, 0xB0, 0x100, channel=2)  # channel 2, lo/hi, mode 0 (gate low)
    clock.advance(ns_of_tick(2))  # the count is loaded on the next tick
    pit.write(3, 1, 0xC0 | 0x08)  # read-back, count and status, channel 2
    status = pit.read(2, 1)
    assert status == 0x30 | 0 << 1  # OUT low, lo/hi access, mode 0, binary
    assert read_count(pit, 2) == 0x100  # gate low: not counting
    pit.write(3, 1, 0xC0 | 0x20 | 0x02)  # read-back, status only, channel 0 (unprogrammed)
    assert pit.read(0, 1) & 0x40  # null count: no count written yet


def test_channel_2_gate_and_out_through_port_61() -> None:
    """pit_calibrate_tsc: gate on, mode 0 on channel 2, poll bit 5 of port 0x61."""
    clock = VirtualClock()
    pit = Pit8254(clock)
    port_b = SystemControlB(pit, clock)
    port_b.write(0, 1, (port_b.read(0, 1) & ~0x02) | 0x01)
    program(pit, 0xB0, 0xFFFF, channel=2)
    assert not port_b.read(0, 1) & 0x20
    clock.advance_to(ns_of_tick(tick_at(0) + 1 + 0xFFFF) - 1)
    assert not port_b.read(0, 1) & 0x20
    clock.advance(1)
    assert port_b.read(0, 1) & 0x20
    assert port_b.read(0, 1) & 0x01  # the gate bit reads back


def test_a_low_gate_holds_mode_0_and_restarts_mode_2() -> None:
    clock = VirtualClock()
    pit = Pit8254(clock)
    port_b = SystemControlB(pit, clock)
    program(pit, 0xB0, 100, channel=2)
    clock.advance(ns_of_tick(50))
    assert read_count(pit, 2) == 100  # gate low: held
    port_b.write(0, 1, 1)
    start = tick_at(clock.now_ns())
    clock.advance_to(ns_of_tick(start + 40))
    assert read_count(pit, 2) == 100 - 40
    port_b.write(0, 1, 0)
    clock.advance(ns_of_tick(1000))
    assert read_count(pit, 2) == 100 - 40
    pit.write(3, 1, 0xB4)  # mode 2
    program(pit, 0xB4, 100, channel=2)
    assert pit.out(2)  # mode 2 with a low gate: OUT high, waiting
    port_b.write(0, 1, 1)
    start = tick_at(clock.now_ns())
    clock.advance_to(ns_of_tick(start + 1 + 99))
    assert not pit.out(2)  # count 1: the low tick
    clock.advance_to(ns_of_tick(start + 1 + 100))
    assert pit.out(2)


def test_mode_3_square_wave() -> None:
    pit, clock, edges = pit_with_irq0()
    program(pit, 0x36, 10)
    start = 1
    clock.advance_to(ns_of_tick(start + 4))
    assert pit.out(0)
    clock.advance_to(ns_of_tick(start + 5))
    assert not pit.out(0)
    assert run_to_deadlines(pit, clock, ns_of_tick(start + 100)) == 10
    assert edges.rises == 1 + 10


def test_mode_1_waits_for_a_gate_trigger_and_mode_4_strobes() -> None:
    clock = VirtualClock()
    pit = Pit8254(clock)
    port_b = SystemControlB(pit, clock)
    program(pit, 0xB2, 20, channel=2)  # mode 1
    clock.advance(ns_of_tick(100))
    assert pit.out(2)  # no trigger yet
    port_b.write(0, 1, 1)
    start = tick_at(clock.now_ns())
    clock.advance_to(ns_of_tick(start + 2))
    assert not pit.out(2)
    clock.advance_to(ns_of_tick(start + 1 + 20))
    assert pit.out(2)
    program(pit, 0xB8, 5, channel=2)  # mode 4, gate high
    start = tick_at(clock.now_ns())
    clock.advance_to(ns_of_tick(start + 1 + 5))
    assert not pit.out(2)
    clock.advance_to(ns_of_tick(start + 2 + 5))
    assert pit.out(2)


def test_lsb_only_msb_only_and_bcd_counts() -> None:
    pit, clock, _ = pit_with_irq0()
    pit.write(3, 1, 0x14)  # lsb only, mode 2
    pit.write(0, 1, 0x80)
    assert pit.read(0, 1) == 0x80 and pit.read(0, 1) == 0x80
    pit.write(3, 1, 0x24)  # msb only
    pit.write(0, 1, 0x12)
    assert pit.read(0, 1) == 0x12
    pit.write(3, 1, 0x31)  # lo/hi, mode 0, BCD
    pit.write(0, 1, 0x00)
    pit.write(0, 1, 0x10)  # 1000 decimal
    clock.advance_to(ns_of_tick(tick_at(clock.now_ns()) + 1 + 1))
    assert read_count(pit) == 0x0999
    assert pit.read(3, 1) == 0xFF
