"""A software VMCS: every field of SDM Vol. 3 Appendix B, addressed by encoding.

The exit path reads and writes fields millions of times, so ``read``/``write``
are one dict lookup each; HIGH halves, unknown encodings and refusals take the
slow path.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from enum import Enum

from pyflank.intel_x64 import instruction_errors
from pyflank.intel_x64.fields import (
    ALL_FIELDS,
    EPT_POINTER,
    FIELD_BY_ENCODING,
    VM_INSTRUCTION_ERROR,
    FieldType,
)


class VmcsError(Exception):
    """A VMCS access or VMX instruction that the processor would refuse."""


class VmcsState(Enum):
    """Launch state of the VMCS and what became of the vCPU that owns it."""

    CLEAR = "clear"
    LAUNCHED = "launched"
    HALTED = "halted"
    PROMOTED = "promoted"


_FULL_FIELDS = tuple(f for f in ALL_FIELDS if not f.is_high)
_HIGH_TO_FULL = {f.encoding: f.encoding - 1 for f in ALL_FIELDS if f.is_high}
_MASKS = {f.encoding: f.mask for f in _FULL_FIELDS}
_READ_ONLY = frozenset(f.encoding for f in ALL_FIELDS if f.type is FieldType.READ_ONLY_DATA)
_GUEST_WRITABLE_MASKS = {enc: m for enc, m in _MASKS.items() if enc not in _READ_ONLY}
_MASK32 = 0xFFFF_FFFF


_LAUNCHED = VmcsState.LAUNCHED


class Vmcs:
    """One vCPU's VMCS.

    ``write`` is what VMWRITE does for the exit handler: the read-only
    VM-exit information fields are refused.  The processor model (a backend)
    fills them with ``processor_write``.  Every field the handler writes is
    remembered in ``dirty`` so the backend loads back only what changed.
    """

    __slots__ = ("_values", "current", "dirty", "entries", "state")

    def __init__(self) -> None:
        self._values: dict[int, int] = dict.fromkeys(_MASKS, 0)
        self.state = VmcsState.CLEAR
        self.current = False
        self.entries = 0
        self.dirty: set[int] = set()

    # -- field access ------------------------------------------------------
    def read(self, encoding: int) -> int:
        try:
            return self._values[encoding]
        except KeyError:
            full = self._full_of_high(encoding)
            return self._values[full] >> 32

    def write(self, encoding: int, value: int) -> None:
        mask = _GUEST_WRITABLE_MASKS.get(encoding)
        if mask is None:
            self._write_slow(encoding, value)
            return
        self._values[encoding] = value & mask
        self.dirty.add(encoding)

    def processor_write(self, encoding: int, value: int) -> None:
        """Store a field as the processor does on VM exit (read-only fields too)."""
        self._values[encoding] = value & _MASKS[encoding]

    def exists(self, encoding: int) -> bool:
        return encoding in FIELD_BY_ENCODING

    def fields(self) -> dict[int, int]:
        """A copy of every full-width field value, by encoding."""
        return dict(self._values)

    def view(self) -> Mapping[int, int]:
        """Every full-width field value, by encoding: read-only, and always current."""
        return types.MappingProxyType(self._values)

    def _full_of_high(self, encoding: int) -> int:
        full = _HIGH_TO_FULL.get(encoding)
        if full is None:
            raise VmcsError(f"unsupported VMCS component encoding {encoding:#06x}")
        return full

    def _write_slow(self, encoding: int, value: int) -> None:
        if encoding in _READ_ONLY:
            name = FIELD_BY_ENCODING[encoding].name
            raise VmcsError(f"VMWRITE to read-only VMCS component {name} ({encoding:#06x})")
        full = self._full_of_high(encoding)
        low = self._values[full] & _MASK32
        self._values[full] = ((value & _MASK32) << 32) | low
        self.dirty.add(full)

    # -- lifecycle (VMCLEAR, VMPTRLD, VMLAUNCH, VMRESUME, VMXOFF) -----------
    def clear(self) -> None:
        """VMCLEAR: launch state becomes clear, the VMCS is no longer current."""
        self.state = VmcsState.CLEAR
        self.current = False

    def load(self) -> None:
        """VMPTRLD: make this VMCS the current one of its vCPU."""
        self.current = True

    def launch(self) -> None:
        """VMLAUNCH: the first VM entry; the launch state must be clear."""
        self._require_current()
        if self.state is not VmcsState.CLEAR:
            self._fail(4)
        self.state = VmcsState.LAUNCHED
        self.entries += 1

    def resume(self) -> None:
        """VMRESUME: enter the guest again after an exit."""
        if self.state is _LAUNCHED and self.current:  # the exit path: keep it short
            self.entries += 1
            return
        self._require_current()
        if self.state in (VmcsState.HALTED, VmcsState.PROMOTED):
            raise VmcsError(f"VMRESUME refused: the vCPU is {self.state.value}")
        if self.state is not VmcsState.LAUNCHED:
            self._fail(5)
        self.entries += 1

    def invept(self) -> None:
        """INVEPT (single- or all-context: the processor holds one EPT per vCPU): cached
        EPT translations are dropped, so the next VM entry walks the EPT again."""
        self.dirty.add(EPT_POINTER)

    def promote(self) -> None:
        """Leave VMX operation: the guest state becomes the host's; no more exits."""
        self.state = VmcsState.PROMOTED

    def halt(self) -> None:
        """The vCPU stops for good; it is never resumed."""
        self.state = VmcsState.HALTED

    @property
    def running(self) -> bool:
        return self.state is VmcsState.LAUNCHED

    def _require_current(self) -> None:
        if not self.current:
            raise VmcsError("no current VMCS: VMPTRLD (load) first")

    def _fail(self, error: int) -> None:
        self._values[VM_INSTRUCTION_ERROR] = error
        raise VmcsError(f"VM instruction error {error}: {instruction_errors.description(error)}")
