"""The 8259A programmable interrupt controller, and the PC's master/slave pair.

One chip (``Pic8259``) answers two registers: offset 0 takes ICW1, OCW2 and OCW3 and
reads IRR, ISR or a poll result; offset 1 takes ICW2-4 during initialisation and OCW1
(the IMR) after it.  ``PicPair`` cascades the slave's INT into the master's IR2, takes
the 16 ISA lines (``set_irq``), and gives the processor INTR and the INTA cycle,
including the spurious IRQ7/IRQ15 vectors a real pair returns when the request went away.
Only the 8086 mode (ICW4.uPM = 1) is modelled: vectors are ``base + irq``.
"""

from __future__ import annotations

from typing import Final

CASCADE_IRQ: Final = 2
SPURIOUS_IRQ: Final = 7

_ICW1, _ICW1_IC4, _ICW1_SNGL, _ICW1_LTIM = 0x10, 0x01, 0x02, 0x08
_ICW4_AEOI, _ICW4_SFNM = 0x02, 0x10
_OCW3, _OCW3_POLL, _OCW3_RR, _OCW3_RIS = 0x08, 0x04, 0x02, 0x01
_OCW3_ESMM, _OCW3_SMM = 0x40, 0x20
_READY, _WANT_ICW2, _WANT_ICW3, _WANT_ICW4 = range(4)


class Pic8259:
    """One chip: request, in-service and mask registers, priorities, initialisation."""

    def __init__(self, *, master: bool) -> None:
        self.master = master
        self.levels = 0  # the input wires as they are now
        self.elcr = 0  # inputs set level-triggered through the ELCR
        self._reset()

    def _reset(self) -> None:
        self.irr = self.isr = self.imr = 0
        self.vector_base = 0
        self.icw3 = 0
        self.level_all = False  # ICW1.LTIM
        self.auto_eoi = self.rotate_on_auto_eoi = False
        self.special_fully_nested = self.special_mask = False
        self.lowest = 7  # the lowest-priority input (rotation moves it)
        self.read_isr = self.poll = False
        self.init_state = _READY
        self.icw4_needed = self.single = False

    # -- inputs -------------------------------------------------------------------------
    def level_triggered(self, irq: int) -> bool:
        return self.level_all or bool(self.elcr >> irq & 1)

    def set_input(self, irq: int, level: bool) -> None:
        # An edge input requests on a rise only: one that was high at ICW1 must fall first.
        mask = 1 << irq
        if level:
            if self.level_triggered(irq) or not self.levels & mask:
                self.irr |= mask
            self.levels |= mask
        else:
            self.levels &= ~mask
            if self.level_triggered(irq):
                self.irr &= ~mask

    def set_elcr(self, value: int) -> None:
        self.elcr = value
        level = 0xFF if self.level_all else value
        self.irr = (self.irr & ~level) | (self.levels & level)

    # -- priorities ---------------------------------------------------------------------
    def _rank(self, bits: int) -> int:
        """Priority rank (0 highest) of the highest-priority input in ``bits``; 8 if none."""
        for rank in range(8):
            if bits >> ((self.lowest + 1 + rank) & 7) & 1:
                return rank
        return 8

    def _irq_of(self, rank: int) -> int:
        return (self.lowest + 1 + rank) & 7

    def highest_request(self) -> int | None:
        """The input INTA would deliver now, or None (nothing above what is in service)."""
        request = self._rank(self.irr & ~self.imr)
        if request == 8:
            return None
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr
        if self.special_fully_nested and self.master:
            in_service &= ~(1 << CASCADE_IRQ)  # the slave may nest a higher request
        return self._irq_of(request) if request < self._rank(in_service) else None

    @property
    def output(self) -> bool:
        return self.highest_request() is not None

    def acknowledge(self, irq: int) -> None:
        mask = 1 << irq
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.lowest = irq
        else:
            self.isr |= mask
        if not self.level_triggered(irq):
            self.irr &= ~mask

    # -- registers ----------------------------------------------------------------------
    def read(self, offset: int) -> int:
        if self.poll:
            self.poll = False
            irq = self.highest_request()
            if irq is None:
                return 0
            self.acknowledge(irq)
            return 0x80 | irq
        if offset & 1:
            return self.imr
        return self.isr if self.read_isr else self.irr

    def write(self, offset: int, value: int) -> None:
        value &= 0xFF
        if offset & 1:
            self._write_data(value)
        elif value & _ICW1:
            self._icw1(value)
        elif value & _OCW3:
            self._ocw3(value)
        else:
            self._ocw2(value)

    def _icw1(self, value: int) -> None:
        elcr = self.elcr
        self._reset()
        self.elcr = elcr
        self.level_all = bool(value & _ICW1_LTIM)
        self.icw4_needed = bool(value & _ICW1_IC4)
        self.single = bool(value & _ICW1_SNGL)
        self.set_elcr(elcr)  # level inputs that are high request at once; edges must rise
        self.init_state = _WANT_ICW2

    def _write_data(self, value: int) -> None:
        state = self.init_state
        if state == _WANT_ICW2:
            self.vector_base = value & 0xF8
            self.init_state = _READY if self.single else _WANT_ICW3
            if self.single and self.icw4_needed:
                self.init_state = _WANT_ICW4
        elif state == _WANT_ICW3:
            self.icw3 = value
            self.init_state = _WANT_ICW4 if self.icw4_needed else _READY
        elif state == _WANT_ICW4:
            self.auto_eoi = bool(value & _ICW4_AEOI)
            self.special_fully_nested = bool(value & _ICW4_SFNM)
            self.init_state = _READY
        else:
            self.imr = value

    def _ocw2(self, value: int) -> None:
        command, level = value >> 5, value & 7
        if command in (0b001, 0b101):  # non-specific EOI, and rotate on it
            rank = self._rank(self.isr)
            if rank < 8:
                irq = self._irq_of(rank)
                self.isr &= ~(1 << irq)
                if command == 0b101:
                    self.lowest = irq
        elif command in (0b011, 0b111):  # specific EOI, and rotate on it
            self.isr &= ~(1 << level)
            if command == 0b111:
                self.lowest = level
        elif command == 0b110:  # set priority: ``level`` becomes the lowest
            self.lowest = level
        elif command in (0b100, 0b000):  # rotate in automatic-EOI mode: set, clear
            self.rotate_on_auto_eoi = command == 0b100

    def _ocw3(self, value: int) -> None:
        if value & _OCW3_POLL:
            self.poll = True
        if value & _OCW3_RR:
            self.read_isr = bool(value & _OCW3_RIS)
        if value & _OCW3_ESMM:
            self.special_mask = bool(value & _OCW3_SMM)


class PicPair:
    """The PC's two 8259As: the slave's INT on the master's IR2.

    As an ``IrqSink`` it takes ISA lines 0-15; as an ``InterruptController`` it gives the
    processor INTR and INTA.  ``master_ports``, ``slave_ports`` (two registers each) and
    ``elcr_ports`` (PIIX's edge/level control, 0x4D0/0x4D1) are what the bus places.
    """

    ELCR_MASKS: Final = (0xF8, 0xDE)  # IRQ 0-2, 8 and 13 are edge-triggered on every PC

    def __init__(self) -> None:
        self.master = Pic8259(master=True)
        self.slave = Pic8259(master=False)
        self.master_ports = _ChipPorts(self, self.master)
        self.slave_ports = _ChipPorts(self, self.slave)
        self.elcr_ports = _ElcrPorts(self)
        self.spurious = 0  # INTA cycles that found no request

    def set_irq(self, irq: int, level: bool) -> None:
        if not 0 <= irq < 16:
            raise ValueError(f"the PIC pair has ISA lines 0-15, not {irq}")
        chip = self.slave if irq & 8 else self.master
        chip.set_input(irq & 7, level)
        self._cascade()

    def _cascade(self) -> None:
        slave_int = self.slave.output
        if slave_int != bool(self.master.levels >> CASCADE_IRQ & 1):
            self.master.set_input(CASCADE_IRQ, slave_int)

    def interrupt_pending(self) -> bool:
        return self.master.output

    def pending_vector(self) -> int | None:
        """The vector INTA would return now, without acknowledging it."""
        irq = self.master.highest_request()
        if irq is None:
            return None
        if irq == CASCADE_IRQ:
            slave_irq = self.slave.highest_request()
            return self.slave.vector_base + (SPURIOUS_IRQ if slave_irq is None else slave_irq)
        return self.master.vector_base + irq

    def acknowledge(self) -> int:
        irq = self.master.highest_request()
        if irq is None:
            self.spurious += 1
            return self.master.vector_base + SPURIOUS_IRQ
        self.master.acknowledge(irq)
        if irq != CASCADE_IRQ:
            vector = self.master.vector_base + irq
        else:
            slave_irq = self.slave.highest_request()
            if slave_irq is None:  # the master's IR2 stays in service, as on hardware
                self.spurious += 1
                vector = self.slave.vector_base + SPURIOUS_IRQ
            else:
                self.slave.acknowledge(slave_irq)
                vector = self.slave.vector_base + slave_irq
        self._cascade()
        return vector


class _ChipPorts:
    __slots__ = ("_chip", "_pair")

    def __init__(self, pair: PicPair, chip: Pic8259) -> None:
        self._pair = pair
        self._chip = chip

    def read(self, offset: int, size: int) -> int:
        value = self._chip.read(offset)
        self._pair._cascade()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self._chip.write(offset, value)
        self._pair._cascade()


class _ElcrPorts:
    __slots__ = ("_pair",)

    def __init__(self, pair: PicPair) -> None:
        self._pair = pair

    def _chips(self) -> tuple[Pic8259, Pic8259]:
        return self._pair.master, self._pair.slave

    def read(self, offset: int, size: int) -> int:
        chips = self._chips()
        value = 0
        for n, i in enumerate(range(offset, offset + size)):
            value |= (chips[i].elcr if i < 2 else 0xFF) << (8 * n)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        chips = self._chips()
        for n, i in enumerate(range(offset, min(offset + size, 2))):
            chips[i].set_elcr(value >> (8 * n) & PicPair.ELCR_MASKS[i])
        self._pair._cascade()
