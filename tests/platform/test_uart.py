"""The 16550A: registers as Linux's 8250 driver probes them, FIFOs, interrupts through a PIC."""

from __future__ import annotations

import threading

from test_pic import MASTER_BASE, initialised

from pyflank.platform.devices.clock import VirtualClock
from pyflank.platform.devices.irq import IrqLine
from pyflank.platform.devices.pic import PicPair
from pyflank.platform.devices.uart import (
    IER,
    IIR_FCR,
    LCR,
    LSR,
    MCR,
    MSR,
    RBR_THR,
    SCR,
    Uart16550,
)

IRQ4 = MASTER_BASE + 4


def wired() -> tuple[Uart16550, PicPair, VirtualClock]:
    pic, clock = initialised(), VirtualClock()
    return Uart16550(IrqLine(pic, 4), clock), pic, clock


def test_input_output_and_the_divisor_latch() -> None:
    uart = Uart16550()
    uart.feed(b"k")
    assert uart.read(LSR, 1) & 0x61 == 0x61  # data ready, transmitter empty
    assert uart.read(RBR_THR, 1) == ord("k")
    assert uart.read(LSR, 1) & 1 == 0
    uart.write(LCR, 1, 0x80)  # DLAB
    uart.write(RBR_THR, 1, 0x0C)
    uart.write(IER, 1, 0x00)
    assert uart.read(RBR_THR, 1) == 0x0C and uart.output == b""
    uart.write(LCR, 1, 0x03)
    assert uart.char_time_ns() == 10 * 12 * 10**9 // 115_200  # 9600 baud, 8N1
    uart.write(RBR_THR, 1, ord("x"))
    assert uart.text == "x"


def test_registers_read_back_as_autoconfig_expects_of_a_16550a() -> None:
    uart = Uart16550()
    uart.write(IER, 1, 0xFF)
    assert uart.read(IER, 1) == 0x0F  # the upper bits do not exist (no XScale UUE bit)
    uart.write(IER, 1, 0)
    uart.write(SCR, 1, 0xA5)
    assert uart.read(SCR, 1) == 0xA5
    uart.write(IIR_FCR, 1, 0x01)
    assert uart.read(IIR_FCR, 1) >> 6 == 3  # FIFOs enabled: a 16550A
    uart.write(MCR, 1, 0xFF)
    assert uart.read(MCR, 1) == 0x1F


def test_thre_interrupt_reaches_irq4_only_with_out2() -> None:
    uart, pic, _ = wired()
    uart.write(IER, 1, 0x02)  # THRI: THR is empty, so the interrupt is pending at once
    assert not pic.interrupt_pending()  # OUT2 clear: the PC's IRQ driver is off
    uart.write(MCR, 1, 0x0B)  # DTR, RTS, OUT2
    assert pic.acknowledge() == IRQ4
    assert uart.read(IIR_FCR, 1) == 0x02  # THRE; reading IIR clears it
    assert uart.read(IIR_FCR, 1) == 0x01
    pic.master_ports.write(0, 1, 0x20)
    uart.write(RBR_THR, 1, ord("a"))  # sent at once: THR empty again, interrupt again
    assert pic.acknowledge() == IRQ4 and uart.output == b"a"


def test_the_8250_thre_test_sees_a_real_16550() -> None:
    """serial8250_do_startup: a UART that re-asserts THRE when THRI is re-enabled."""
    uart = Uart16550()
    uart.write(IER, 1, 0x02)
    iir1 = uart.read(IIR_FCR, 1)
    uart.write(IER, 1, 0)
    uart.write(IER, 1, 0x02)
    iir = uart.read(IIR_FCR, 1)
    uart.write(IER, 1, 0)
    assert not iir1 & 1 and not iir & 1


def test_receive_interrupt_at_the_trigger_level_or_after_the_character_timeout() -> None:
    uart, pic, clock = wired()
    uart.write(IIR_FCR, 1, 0x87)  # FIFO on, cleared, trigger at 8 bytes (Linux's choice)
    uart.write(MCR, 1, 0x08)
    uart.write(IER, 1, 0x01)
    uart.feed(b"abc")
    assert uart.next_deadline_ns() == clock.now_ns()  # input waits: service me now
    uart.service()
    assert not pic.interrupt_pending()  # 3 < 8
    deadline = uart.next_deadline_ns()
    assert deadline == 4 * uart.char_time_ns()
    clock.advance_to(deadline)
    uart.service()
    assert pic.acknowledge() == IRQ4
    assert uart.read(IIR_FCR, 1) == 0xCC  # character timeout
    assert bytes(uart.read(RBR_THR, 1) for _ in range(3)) == b"abc"
    assert uart.read(IIR_FCR, 1) == 0xC1 and not pic.master.irr
    pic.master_ports.write(0, 1, 0x20)
    uart.feed(b"0123456789")
    uart.service()
    assert pic.acknowledge() == IRQ4
    assert uart.read(IIR_FCR, 1) == 0xC4  # received data available


def test_long_input_waits_for_room_instead_of_overrunning() -> None:
    uart = Uart16550()
    uart.write(IIR_FCR, 1, 0x01)
    data = bytes(range(40))
    uart.feed(data)
    received = bytearray()
    while uart.read(LSR, 1) & 1:
        received.append(uart.read(RBR_THR, 1))
    assert bytes(received) == data
    assert not uart.read(LSR, 1) & 0x02  # no overrun


def test_loopback_mirrors_mcr_in_msr_and_keeps_bytes_inside() -> None:
    uart, pic, _ = wired()
    uart.write(MCR, 1, 0x10 | 0x0A)  # loop, RTS, OUT2
    assert uart.read(MSR, 1) & 0xF0 == 0x90  # CTS (RTS), DCD (OUT2)
    uart.write(IER, 1, 0x01)
    uart.write(RBR_THR, 1, 0x5A)
    assert uart.output == b"" and uart.read(RBR_THR, 1) == 0x5A
    assert not pic.interrupt_pending()  # in loopback the IRQ driver is off
    uart.write(MCR, 1, 0x00)
    assert uart.read(MSR, 1) == 0xB0 | 0x02  # a terminal: CTS, DSR (changed), DCD
    assert uart.read(MSR, 1) == 0xB0  # reading clears the delta bits


def test_host_input_from_another_thread_rings_the_wakeup() -> None:
    wakeup = threading.Event()
    seen: list[int] = []
    uart = Uart16550(sink=seen.append, wakeup=wakeup)
    thread = threading.Thread(target=uart.feed, args=(b"echo $((6*7))\n",))
    thread.start()
    thread.join()
    assert wakeup.is_set()
    text = bytearray()
    while uart.read(LSR, 1) & 1:
        text.append(uart.read(RBR_THR, 1))
    assert text == b"echo $((6*7))\n"
    for byte in b"42\n":
        uart.write(RBR_THR, 1, byte)
    assert bytes(seen) == b"42\n" == uart.output
