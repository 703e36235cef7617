"""KVM_EXIT_IO: the doorbell VMCALL, an I/O-instruction exit, or a platform device access.

This is the backend's hottest path (a doorbell loop, a guest hammering a
port), so it reads the exit as one 64-bit word of ``kvm_run`` (direction,
size, port, count) instead of four ctypes fields, finds the instruction in
the ``IoSites`` cache with one dict lookup, and uses only plain ints:
IntFlag/IntEnum arithmetic costs microseconds on a nested KVM.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from pyflank.backends.kvm import abi
from pyflank.backends.kvm.decode import GuestCode
from pyflank.backends.kvm.io_sites import IoSite, IoSites, access_of
from pyflank.backends.kvm.ports import PortIo
from pyflank.backends.kvm.result import KvmRunResult
from pyflank.backends.kvm.structs import ExitIo, KvmRun
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Primary
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import Vmcs

if TYPE_CHECKING:
    from pyflank.backends.kvm.vcpu import KvmVcpu

Outcome = KvmRunResult | None
_IO_EXITING = int(Primary.UNCONDITIONAL_IO_EXITING)
_IO_BITMAPS = int(Primary.USE_IO_BITMAPS)
_PRIMARY = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
_VMCALL = int(ExitReason.VMCALL)
_IO_INSTRUCTION = int(ExitReason.IO_INSTRUCTION)
_OUT = abi.KVM_EXIT_IO_OUT
# kvm_run's I/O exit as 64-bit words: [direction, size, port, count] then data_offset.
_IO_WORD = (KvmRun.exit.offset + ExitIo.direction.offset) // 8
_DATA_OFFSET_WORD = (KvmRun.exit.offset + ExitIo.data_offset.offset) // 8
_ACCESS = 0xFFFF_FFFF
_SIZE = 0xFF << 8
_ONE_BYTE_OUT_MASK = ~(0xFFFF << 16)  # all but the port
_ONE_BYTE_OUT = 1 << 32 | 1 << 8 | _OUT
# What the primary controls say about port I/O (SDM 25.1.3).
_NO_EXITS, _ALL_EXIT, _BITMAPS = "no exits", "all exit", "bitmaps"


def _policy(vmcs: Vmcs) -> str:
    # int(): a control the handler wrote as an IntFlag would make ``&`` slow.
    controls = int(vmcs.read(_PRIMARY))
    if controls & _IO_BITMAPS:
        return _BITMAPS
    return _ALL_EXIT if controls & _IO_EXITING else _NO_EXITS


class IoExits:
    """The KVM_EXIT_IO handling of one vCPU."""

    def __init__(self, vcpu: KvmVcpu, ports: PortIo, code: GuestCode) -> None:
        self.vcpu = vcpu
        self.handler = vcpu.handler
        self.ports = ports
        self._io_write = ports.io_write
        self.sites = IoSites(code)
        self._lookup = self.sites.lookup
        # The ctypes views of the registers never change: bound once, read per exit.
        self._regs, self._sregs = vcpu.registers.regs, vcpu.registers.sregs
        run_fd = vcpu.fd
        page = (ctypes.c_char * run_fd.mmap_size).from_address(ctypes.addressof(vcpu.run_page))
        self._bytes = memoryview(page).cast("B")  # the data of port I/O is in the mapping too
        self._words = self._bytes.cast("Q")
        self._run_address = ctypes.addressof(page)
        # What the primary controls of ``controls_of`` say about port I/O: only the
        # handler changes them, and then the vCPU's ``vmcs_written`` drops this.
        self.policy = _NO_EXITS
        self.controls_of: Vmcs | None = None
        doorbell = vcpu.machine.config.doorbell_port
        # The doorbell's exit word, any size: an OUT of one item to the port.
        self._doorbell = -1 if doorbell is None else 1 << 32 | access_of(doorbell, 0, out=True)

    def exit(self) -> Outcome:
        """One KVM_EXIT_IO.  The common cases are spelled out here: a frame costs."""
        io = self._words[_IO_WORD]
        regs = self._regs
        if io & ~_SIZE == self._doorbell:  # the guest's VMCALL; RDI carries what RDX would
            access = io & _ACCESS
            site = self._lookup((regs.rip, self._sregs.cr3, access)) or self._site(access, 1)
            vcpu = self.vcpu
            vcpu.dispatch(_VMCALL, site.start, site.length, rdx=regs.rdi)
            # An OUT that KVM did not emulate is skipped on the next KVM_RUN if RIP is unchanged.
            pending = site.pending and self.handler.m_state_save.rip == site.start
            return vcpu.resume(complete=pending)
        vmcs = self.handler.m_vmcs
        if vmcs is not self.controls_of:
            self.policy, self.controls_of = _policy(vmcs), vmcs
        policy = self.policy
        if policy is not _NO_EXITS and (
            policy is _ALL_EXIT or self._io_bitmap_says_exit(io >> 16 & 0xFFFF, io >> 8 & 0xFF)
        ):
            access = io & _ACCESS
            site = self._lookup((regs.rip, self._sregs.cr3, access)) or self._site(access, io >> 32)
            vcpu = self.vcpu
            vcpu.dispatch(_IO_INSTRUCTION, site.start, site.length, site.qualification)
            # KVM still owes an IN its data (or a VMX-path OUT its skip): complete, then impose.
            return vcpu.resume(complete=site.pending)
        if io & _ONE_BYTE_OUT_MASK == _ONE_BYTE_OUT:  # the serial port's case
            self._io_write(io >> 16 & 0xFFFF, 1, self._bytes[self._words[_DATA_OFFSET_WORD]])
        else:
            self._device(io >> 16 & 0xFFFF, io >> 8 & 0xFF, io >> 32, io & 0xFF == _OUT)
        return None

    def _site(self, access: int, count: int) -> IoSite:
        """Where the instruction is, decoded on a cache miss (callers try ``_lookup`` first)."""
        regs, sregs = self._regs, self._sregs
        site = self._lookup((regs.rip, sregs.cr3, access))
        if site is None:
            site = self.sites.find(regs, sregs, access=access, count=count,
                                   complete=self.vcpu.complete_pending)  # fmt: skip
        return site

    def _io_bitmap_says_exit(self, port: int, size: int) -> bool:
        """SDM 26.1.3: exit if any byte of the access has its bit set, or the range wraps."""
        vmcs, memory = self.vcpu.handler.m_vmcs, self.vcpu.machine.memory
        if port + size > 0x10000:
            return True
        for p in range(port, port + size):
            base = vmcs.read(f.ADDRESS_OF_IO_BITMAP_A if p < 0x8000 else f.ADDRESS_OF_IO_BITMAP_B)
            gpa = base + (p & 0x7FFF) // 8
            if not memory.contains(gpa) or memory.read_u8(gpa) >> (p % 8) & 1:
                return True
        return False

    def _device(self, port: int, size: int, count: int, out: bool) -> None:
        """No exit: the platform's devices take the access, as the hardware bus would."""
        offset = self._words[_DATA_OFFSET_WORD]
        if size == 1 and count == 1 and not out:  # the serial port's reads: no bytes objects
            self._bytes[offset] = self.ports.io_read(port, 1) & 0xFF
            return
        address = self._run_address + offset
        if out:
            data = ctypes.string_at(address, size * count)
            for i in range(0, size * count, size):
                self.ports.io_write(port, size, int.from_bytes(data[i : i + size], "little"))
        else:
            data = b"".join(
                self.ports.io_read(port, size).to_bytes(size, "little") for _ in range(count)
            )
            ctypes.memmove(address, data, len(data))
