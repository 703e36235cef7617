"""What a handler asks of the world during an exit, noted so that the exit can be replayed
without it: the guest memory it reads and writes, the CPU it asks (CPUID, MSRs).

Each recorder stands in for the real thing in the handler (``set_memory``/``set_cpu``)
and passes every access through; while ``recording`` (one ``dispatch()``) it also notes
them.  Outside a dispatch (the processor's VM-entry checks ask the CPU too) it only
passes them through.
"""

from __future__ import annotations

from pyflank.intel_x64.cpu import CpuidRegisters, MsrFault, PhysicalCpu
from pyflank.memory import GuestPhysicalMemory
from pyflank.memory.physical import Buffer
from pyflank.observe.format import CpuCall


class MemoryRecorder(GuestPhysicalMemory):
    """``memory`` itself, with a note of every read and write while ``recording``.

    ``reads``/``writes``: (guest-physical address, bytes) in the order they happened.
    The recorder owns no RAM: closing it leaves ``memory`` open.
    """

    def __init__(self, memory: GuestPhysicalMemory) -> None:  # the RAM stays memory's
        self.ram = memory
        self.size = memory.size
        self.view = memory.view
        self.address = memory.address
        self.recording = False
        self.reads: list[tuple[int, bytes]] = []
        self.writes: list[tuple[int, bytes]] = []

    def take(self) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        """The reads and writes noted so far, forgotten here."""
        noted = self.reads, self.writes
        self.reads, self.writes = [], []
        return noted

    def _read(self, gpa: int, length: int) -> None:
        if self.recording:
            self.reads.append((gpa, self.ram.read(gpa, length)))

    def _wrote(self, gpa: int, length: int) -> None:
        if self.recording:
            self.writes.append((gpa, self.ram.read(gpa, length)))

    def read(self, gpa: int, length: int) -> bytes:
        data = self.ram.read(gpa, length)
        if self.recording:
            self.reads.append((gpa, data))
        return data

    def write(self, gpa: int, data: Buffer) -> None:
        self.ram.write(gpa, data)
        self._wrote(gpa, len(memoryview(data).cast("B")))

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        self.ram.fill(gpa, length, byte)
        self._wrote(gpa, length)

    def read_u8(self, gpa: int) -> int:
        value = self.ram.read_u8(gpa)
        self._read(gpa, 1)
        return value

    def read_u16(self, gpa: int) -> int:
        value = self.ram.read_u16(gpa)
        self._read(gpa, 2)
        return value

    def read_u32(self, gpa: int) -> int:
        value = self.ram.read_u32(gpa)
        self._read(gpa, 4)
        return value

    def read_u64(self, gpa: int) -> int:
        value = self.ram.read_u64(gpa)
        self._read(gpa, 8)
        return value

    def write_u8(self, gpa: int, value: int) -> None:
        self.ram.write_u8(gpa, value)
        self._wrote(gpa, 1)

    def write_u16(self, gpa: int, value: int) -> None:
        self.ram.write_u16(gpa, value)
        self._wrote(gpa, 2)

    def write_u32(self, gpa: int, value: int) -> None:
        self.ram.write_u32(gpa, value)
        self._wrote(gpa, 4)

    def write_u64(self, gpa: int, value: int) -> None:
        self.ram.write_u64(gpa, value)
        self._wrote(gpa, 8)

    @property
    def closed(self) -> bool:
        return self.ram.closed

    def close(self) -> None:
        pass  # the RAM is ``ram``'s to close

    def __repr__(self) -> str:
        return f"MemoryRecorder({self.ram!r})"


class CpuRecorder:
    """``cpu`` itself, with a note of every call while ``recording`` (``calls``)."""

    def __init__(self, cpu: PhysicalCpu) -> None:
        self.cpu = cpu
        self.recording = False
        self.calls: list[CpuCall] = []

    def take(self) -> list[CpuCall]:
        """The calls noted so far, forgotten here."""
        calls, self.calls = self.calls, []
        return calls

    def cpuid(self, leaf: int, subleaf: int) -> CpuidRegisters:
        regs = self.cpu.cpuid(leaf, subleaf)
        if self.recording:
            self.calls.append(("cpuid", leaf, subleaf, tuple(regs)))
        return regs

    def rdmsr(self, msr: int) -> int:
        try:
            value = self.cpu.rdmsr(msr)
        except MsrFault:
            if self.recording:
                self.calls.append(("rdmsr", msr, None))
            raise
        if self.recording:
            self.calls.append(("rdmsr", msr, value))
        return value

    def wrmsr(self, msr: int, value: int) -> None:
        try:
            self.cpu.wrmsr(msr, value)
        except MsrFault:
            if self.recording:
                self.calls.append(("wrmsr", msr, value, True))
            raise
        if self.recording:
            self.calls.append(("wrmsr", msr, value, False))

    def wbinvd(self) -> None:
        self.cpu.wbinvd()
        if self.recording:
            self.calls.append(("wbinvd",))
