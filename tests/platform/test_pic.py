"""The 8259A pair, programmed the way Linux's i8259.c programs it."""

from __future__ import annotations

from pyflank.platform.devices.irq import IrqLine
from pyflank.platform.devices.pic import PicPair

MASTER_BASE, SLAVE_BASE = 0x30, 0x38


def linux_init(pair: PicPair, *, auto_eoi: bool = False) -> None:
    """init_8259A: mask all, ICW1-4 on both chips (slave on IR2), then unmask."""
    master, slave = pair.master_ports, pair.slave_ports
    master.write(1, 1, 0xFF)
    slave.write(1, 1, 0xFF)
    master.write(0, 1, 0x11)  # ICW1: edge, cascade, ICW4 follows
    master.write(1, 1, MASTER_BASE)
    master.write(1, 1, 1 << 2)  # ICW3: slave on IR2
    master.write(1, 1, 0x03 if auto_eoi else 0x01)  # ICW4: 8086 mode (and AEOI)
    slave.write(0, 1, 0x11)
    slave.write(1, 1, SLAVE_BASE)
    slave.write(1, 1, 2)  # ICW3: cascade identity
    slave.write(1, 1, 0x01)
    master.write(1, 1, 0x00)
    slave.write(1, 1, 0x00)


def initialised(**kwargs: bool) -> PicPair:
    pair = PicPair()
    linux_init(pair, **kwargs)
    return pair


def test_masking_all_reads_back_as_the_presence_probe_expects() -> None:
    pair = PicPair()
    pair.master_ports.write(1, 1, 0xFF)
    assert pair.master_ports.read(1, 1) == 0xFF  # probe_8259A
    pair.master_ports.write(1, 1, 0xFB)
    assert pair.master_ports.read(1, 1) == 0xFB


def test_an_edge_is_delivered_once_with_the_programmed_vector() -> None:
    pair = initialised()
    timer = IrqLine(pair, 0)
    assert not pair.interrupt_pending()
    timer.pulse()
    assert pair.interrupt_pending() and pair.pending_vector() == MASTER_BASE
    assert pair.acknowledge() == MASTER_BASE
    assert not pair.interrupt_pending()  # in service
    pair.master_ports.write(0, 1, 0x60)  # specific EOI for IRQ0
    assert not pair.interrupt_pending()  # an edge, not a level: nothing more
    timer.pulse()
    assert pair.acknowledge() == MASTER_BASE


def test_a_held_edge_line_does_not_request_again() -> None:
    pair = initialised()
    line = IrqLine(pair, 4)
    line.set_level(True)
    assert pair.acknowledge() == MASTER_BASE + 4
    pair.master_ports.write(0, 1, 0x20)  # non-specific EOI
    assert not pair.interrupt_pending()
    line.set_level(False)
    line.set_level(True)
    assert pair.interrupt_pending()


def test_priorities_and_nesting() -> None:
    pair = initialised()
    IrqLine(pair, 4).pulse()
    assert pair.acknowledge() == MASTER_BASE + 4
    IrqLine(pair, 6).pulse()
    assert not pair.interrupt_pending()  # lower priority than what is in service
    IrqLine(pair, 1).pulse()
    assert pair.acknowledge() == MASTER_BASE + 1  # higher priority nests
    pair.master_ports.write(0, 1, 0x20)  # EOI ends IRQ1, the highest in service
    assert not pair.interrupt_pending()
    pair.master_ports.write(0, 1, 0x20)  # ends IRQ4
    assert pair.acknowledge() == MASTER_BASE + 6


def test_the_slave_cascades_through_irq2() -> None:
    pair = initialised()
    rtc = IrqLine(pair, 8)
    rtc.set_level(True)
    assert pair.pending_vector() == SLAVE_BASE
    assert pair.acknowledge() == SLAVE_BASE
    assert pair.master.isr == 1 << 2 and pair.slave.isr == 1
    # Linux's EOI for a slave line: specific EOI to the slave, then to the master's IR2.
    pair.slave_ports.write(0, 1, 0x60)
    pair.master_ports.write(0, 1, 0x62)
    assert pair.master.isr == pair.slave.isr == 0
    rtc.set_level(False)
    IrqLine(pair, 12).pulse()
    assert pair.acknowledge() == SLAVE_BASE + 4


def test_masked_lines_wait_in_irr() -> None:
    pair = initialised()
    pair.master_ports.write(1, 1, 0x01)  # OCW1: mask IRQ0
    IrqLine(pair, 0).pulse()
    assert not pair.interrupt_pending()
    assert pair.master_ports.read(0, 1) == 0x01  # IRR is the default read
    pair.master_ports.write(1, 1, 0x00)
    assert pair.acknowledge() == MASTER_BASE


def test_ocw3_reads_isr_and_irr_as_i8259a_irq_real_does() -> None:
    pair = initialised()
    IrqLine(pair, 3).pulse()
    IrqLine(pair, 5).pulse()
    pair.acknowledge()
    pair.master_ports.write(0, 1, 0x0B)  # read ISR
    assert pair.master_ports.read(0, 1) == 1 << 3
    pair.master_ports.write(0, 1, 0x0A)  # back to IRR
    assert pair.master_ports.read(0, 1) == 1 << 5


def test_polling_acknowledges_the_highest_request() -> None:
    pair = initialised()
    IrqLine(pair, 5).pulse()
    pair.master_ports.write(0, 1, 0x0C)  # OCW3: poll
    assert pair.master_ports.read(0, 1) == 0x80 | 5
    assert pair.master.isr == 1 << 5 and not pair.interrupt_pending()
    pair.master_ports.write(0, 1, 0x0C)
    assert pair.master_ports.read(0, 1) == 0  # nothing requested


def test_a_request_gone_before_inta_gives_the_spurious_vectors() -> None:
    pair = initialised()
    level = IrqLine(pair, 9)
    pair.elcr_ports.write(1, 1, 1 << 1)  # IRQ9 level-triggered
    level.set_level(True)
    assert pair.interrupt_pending()
    level.set_level(False)  # the device dropped it; the CPU still runs INTA
    assert pair.acknowledge() == SLAVE_BASE + 7  # spurious IRQ15, master IR2 in service
    assert pair.master.isr == 1 << 2 and pair.slave.isr == 0
    pair.master_ports.write(0, 1, 0x20)
    assert pair.acknowledge() == MASTER_BASE + 7  # nothing at all: spurious IRQ7
    assert pair.master.isr == 0 and pair.spurious == 2


def test_level_triggered_lines_request_until_they_drop() -> None:
    pair = initialised()
    pair.elcr_ports.write(0, 2, 0xFFFF)
    assert pair.elcr_ports.read(0, 2) == 0xDEF8  # IRQ 0-2, 8 and 13 stay edge-triggered
    line = IrqLine(pair, 10)
    line.set_level(True)

    def handle(*, device_clears: bool) -> None:  # handle_level_irq: mask+EOI, run, unmask
        assert pair.acknowledge() == SLAVE_BASE + 2
        pair.slave_ports.write(1, 1, 1 << 2)
        pair.slave_ports.write(0, 1, 0x62)
        pair.master_ports.write(0, 1, 0x62)
        if device_clears:
            line.set_level(False)
        pair.slave_ports.write(1, 1, 0)

    handle(device_clears=False)
    assert pair.interrupt_pending()  # still high: it requests again
    handle(device_clears=True)
    assert not pair.interrupt_pending()


def test_auto_eoi_leaves_nothing_in_service() -> None:
    pair = initialised(auto_eoi=True)
    IrqLine(pair, 0).pulse()
    assert pair.acknowledge() == MASTER_BASE and pair.master.isr == 0


def test_rotation_makes_the_serviced_line_lowest() -> None:
    pair = initialised()
    for irq in (1, 3):
        IrqLine(pair, irq).pulse()
    assert pair.acknowledge() == MASTER_BASE + 1
    pair.master_ports.write(0, 1, 0xA0)  # rotate on non-specific EOI: IRQ1 is now lowest
    IrqLine(pair, 0).pulse()
    assert pair.acknowledge() == MASTER_BASE + 3  # 2..7 now rank above 0
    pair.master_ports.write(0, 1, 0x20)
    pair.master_ports.write(0, 1, 0xC7)  # set priority: IRQ7 lowest again
    assert pair.acknowledge() == MASTER_BASE


def test_special_mask_mode_lets_lower_lines_through() -> None:
    pair = initialised()
    IrqLine(pair, 1).pulse()
    pair.acknowledge()
    pair.master_ports.write(1, 1, 0x02)  # mask the line in service
    pair.master_ports.write(0, 1, 0x68)  # OCW3: set special mask mode
    IrqLine(pair, 5).pulse()
    assert pair.acknowledge() == MASTER_BASE + 5


def test_reinitialising_forgets_requests_and_masks() -> None:
    pair = initialised()
    IrqLine(pair, 3).pulse()
    linux_init(pair)
    assert not pair.interrupt_pending() and pair.master.imr == 0
