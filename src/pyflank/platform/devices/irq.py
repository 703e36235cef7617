"""Interrupt lines and what an interrupt controller offers the processor.

A device is handed an :class:`IrqLine`, a wire to one input of an interrupt controller,
and drives its level (``set_level``) or gives an edge (``pulse``).  Whether the
controller latches edges or follows levels is the controller's business (the 8259's
ICW1.LTIM and ELCR), as on the PC.  The processor sees an :class:`InterruptController`:
is the INTR pin asserted, and the INTA cycle that returns the vector.
"""

from __future__ import annotations

from typing import Protocol


class IrqSink(Protocol):
    """A controller's inputs, as the wires see them."""

    def set_irq(self, irq: int, level: bool) -> None: ...


class InterruptController(Protocol):
    """The processor's view: external-interrupt exiting and injection are built on it."""

    def interrupt_pending(self) -> bool: ...  # INTR asserted (IMR and priorities applied)

    def acknowledge(self) -> int: ...  # INTA: the vector (a spurious one if nothing is left)


class IrqLine:
    """One wire from a device to controller input ``irq``; unconnected when ``sink`` is None
    (a device tested alone, or a UART whose IRQ is not wired)."""

    __slots__ = ("_sink", "irq", "level")

    def __init__(self, sink: IrqSink | None, irq: int) -> None:
        self._sink = sink
        self.irq = irq
        self.level = False

    def set_level(self, level: bool) -> None:
        if level != self.level:
            self.level = level
            if self._sink is not None:
                self._sink.set_irq(self.irq, level)

    def pulse(self) -> None:
        """A rising edge now; the line is left at the level it had."""
        resting = self.level
        if resting:
            self.set_level(False)
        self.set_level(True)
        if not resting:
            self.set_level(False)


def disconnected() -> IrqLine:
    return IrqLine(None, -1)
