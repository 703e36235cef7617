"""KVM's registers at an exit, made into the processor's exit record.

The general registers come out of ``kvm_regs`` with one ``struct`` call and are put in
the SDM's order with one ``itemgetter`` call; ``kvm_sregs`` is compared as bytes (a
memcmp) and turned into guest-state fields only when it changed since the last record.
"""

from __future__ import annotations

from operator import itemgetter

from pyflank.backends.kvm.guest_state import DOORBELL_ORDER, SDM_ORDER, sregs_fields
from pyflank.backends.kvm.regs import VcpuRegisters
from pyflank.processor import ExitInformation, ExitRecord

NO_EXIT = ExitInformation(-1)  # the information of a record that stands for no exit
_make = ExitRecord._make


class ExitRecords:
    """Builds the exit records of one vCPU; ``noted``: fields the engine changed itself."""

    def __init__(self, registers: VcpuRegisters) -> None:
        self.registers = registers
        self.sdm_order = itemgetter(*SDM_ORDER)
        self.doorbell_order = itemgetter(*DOORBELL_ORDER)  # a doorbell: RDX travels in RDI
        self.noted: dict[int, int] = {}

    def make(self, info: ExitInformation, start: int) -> ExitRecord:
        """The record of an exit at ``start``."""
        regs = self.registers
        values = regs.read_gprs()
        guest = None
        image = regs.sregs_image()
        if image != regs.sregs_seen:  # the guest rarely changes them between exits
            guest = self.moved(image)
        return _make((info, self.sdm_order(values), start, values[17], guest, "", -1))

    def moved(self, image: bytes) -> dict[int, int]:
        """The sregs changed (``image``: their bytes now): the fields, and what was noted."""
        self.registers.sregs_seen = image
        guest = sregs_fields(self.registers.sregs)
        if self.noted:
            guest.update(self.noted)
            self.noted = {}
        return guest

    def snapshot(self) -> ExitRecord:
        """The current state, for a stop between exits (KVM_RUN may have failed: ioctls)."""
        self.registers.fetch_by_ioctl()
        self.registers.sregs_seen = b""
        return self.make(NO_EXIT, self.registers.regs.rip)

    def forget(self) -> None:
        """The sregs were loaded anew: report them afresh."""
        self.registers.sregs_seen = b""
