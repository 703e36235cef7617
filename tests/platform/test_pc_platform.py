"""The PC platform as a guest sees it through port I/O, and as a processor drives it."""

from __future__ import annotations

import pytest

from pyflank.platform.bus import PortBus as CompatPortBus
from pyflank.platform.devices.bus import BusError
from pyflank.platform.devices.clock import VirtualClock
from pyflank.platform.devices.pc import PC_PORTS, PcConfig, PcPlatform
from pyflank.platform.devices.pit import ns_of_tick
from pyflank.platform.devices.power import MachineEvent
from pyflank.platform.devices.uart import Uart16550


def platform() -> tuple[PcPlatform, VirtualClock]:
    clock = VirtualClock()
    return PcPlatform(clock, PcConfig(rtc_start=0)), clock


def outb(pc: PcPlatform, port: int, value: int) -> None:
    pc.io.io_write(port, 1, value)


def inb(pc: PcPlatform, port: int) -> int:
    return pc.io.io_read(port, 1)


def init_pics(pc: PcPlatform) -> None:
    for port, value in ((0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01)):
        outb(pc, port, value)
    for port, value in ((0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01)):
        outb(pc, port, value)


def test_timer_interrupts_arrive_at_the_deadlines_a_processor_stops_at() -> None:
    pc, clock = platform()
    init_pics(pc)
    for value in (0x34, 0xA4, 0x12):  # mode 2, LATCH for HZ=250 (0x12A4)
        outb(pc, 0x43 if value == 0x34 else 0x40, value)
    vectors = []
    while len(vectors) < 5:
        deadline = pc.next_deadline_ns()
        assert deadline is not None
        clock.advance_to(deadline)
        pc.service()
        while pc.interrupts.interrupt_pending():
            vectors.append(pc.interrupts.acknowledge())
            outb(pc, 0x20, 0x20)
    assert vectors == [0x30] * 5
    assert clock.now_ns() == ns_of_tick(1 + 5 * 0x12A4)  # five periods of 4 ms


def test_com1_interrupts_through_the_slave_free_path() -> None:
    pc, _ = platform()
    init_pics(pc)
    outb(pc, 0x3F8 + 4, 0x08)  # OUT2
    outb(pc, 0x3F8 + 1, 0x01)  # RX interrupts
    pc.com1.feed(b"x")
    pc.service()
    assert pc.interrupts.acknowledge() == 0x34
    assert inb(pc, 0x3FA) & 0x0F == 0x04 and inb(pc, 0x3F8) == ord("x")


def test_the_guest_ends_the_run_through_debug_exit_or_reset() -> None:
    pc, _ = platform()
    outb(pc, 0xF4, 0x10)
    assert pc.machine.request is not None
    assert pc.machine.request.event is MachineEvent.POWER_OFF
    assert pc.machine.request.exit_status == 0x21
    outb(pc, 0x64, 0xFE)
    assert pc.machine.request.event is MachineEvent.POWER_OFF  # the first request stands
    pc2, _ = platform()
    outb(pc2, 0x64, 0xFE)
    assert pc2.machine.request is not None and pc2.machine.request.event is MachineEvent.RESET


def test_probed_ports_nobody_claims_read_all_ones() -> None:
    pc, _ = platform()
    for port in (0x2E, 0x4E, 0x87, 0x2E9, 0x2F9, 0x3E9):
        assert inb(pc, port) == 0xFF
    assert pc.io.io_read(0xCFC, 4) == 0xFFFF_FFFF
    assert set(pc.io.unclaimed.counts) == {0x2E, 0x4E, 0x87, 0x2E9, 0x2F9, 0x3E9, 0xCFC}


def test_the_manager_refuses_a_second_device_on_com1() -> None:
    pc, _ = platform()
    with pytest.raises(BusError, match="overlaps com1"):
        pc.devices.add_io("other-uart", Uart16550(), 0x3F8, 8)


def test_without_debug_exit_port_f4_is_unclaimed() -> None:
    pc = PcPlatform(VirtualClock(), PcConfig(rtc_start=0, debug_exit=False))
    outb(pc, 0xF4, 0)
    assert pc.machine.request is None


def test_the_compatibility_bus_places_com1_where_vmm_expects_it() -> None:
    uart = Uart16550()
    bus = CompatPortBus(uart)
    bus.io_write(PC_PORTS["com1"][0], 1, ord("!"))
    assert uart.output == b"!" and bus.io_read(0x3FD, 1) & 0x60 == 0x60
