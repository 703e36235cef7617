"""The VM-exit information fields, written as the processor writes them on each exit.

The handler cannot VMWRITE these read-only fields, so the last values written are known;
only fields that differ from the previous exit are stored (a run of CPUID exits writes
none at all).
"""

from __future__ import annotations

from typing import Final

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.vmcs import Vmcs

EXIT_INFORMATION_FIELDS: Final = (
    f.VM_EXIT_REASON,
    f.EXIT_QUALIFICATION,
    f.VM_EXIT_INSTRUCTION_LENGTH,
    f.VM_EXIT_INSTRUCTION_INFORMATION,
    f.GUEST_LINEAR_ADDRESS,
    f.VM_EXIT_INTERRUPTION_INFORMATION,
    f.VM_EXIT_INTERRUPTION_ERROR_CODE,
    f.IDT_VECTORING_INFORMATION_FIELD,
    f.IDT_VECTORING_ERROR_CODE,
)
_UNSET = (-1,) * len(EXIT_INFORMATION_FIELDS)


class ExitRecorder:
    """Stores one exit's information fields into ``vmcs``.

    Fields an exit does not define are written as 0, so a handler never reads a stale
    value from an earlier exit.
    """

    def __init__(self, vmcs: Vmcs) -> None:
        self._write = vmcs.processor_write
        self.last: tuple[int, ...] = _UNSET  # the values in the VMCS (hot paths compare)

    def exit(
        self,
        reason: int,
        qualification: int = 0,
        length: int = 0,
        information: int = 0,
        linear_address: int = 0,
        interruption: int = 0,
        interruption_error: int = 0,
        vectoring: int = 0,
        vectoring_error: int = 0,
    ) -> None:
        self.store(
            (
                reason, qualification, length, information, linear_address,
                interruption, interruption_error, vectoring, vectoring_error,
            )
        )  # fmt: skip

    def store(self, new: tuple[int, ...]) -> None:
        """``exit`` with the nine values prebuilt (the hot path keeps them per length)."""
        last = self.last
        if new is last or new == last:
            return
        write = self._write
        for encoding, value, old in zip(EXIT_INFORMATION_FIELDS, new, last, strict=True):
            if value != old:
                write(encoding, value)
        self.last = new
