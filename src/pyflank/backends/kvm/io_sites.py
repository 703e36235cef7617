"""Where the I/O instruction behind a KVM_EXIT_IO starts, and whether KVM still owes it a step.

An OUT that KVM's emulator ran has RIP past it at the exit; one that took the
VMX fast path has RIP at it and is skipped on the next KVM_RUN (unless RIP
changed).  An IN has RIP at it either way and is finished on the next
KVM_RUN.  Decoding forward and backward from RIP tells the cases apart; when
both readings fit (two identical OUTs in a row), KVM is asked to complete
the instruction and the RIP it lands on decides.

Answers are cached by (RIP, CR3, access), the access being the low 32 bits of
kvm_run's I/O exit (direction, size, port): a doorbell loop decodes once, and
an exit that hits the cache costs one dict lookup (``lookup``).  The cache
assumes code at a cached RIP does not change while the vCPU runs; ``clear``
it after loading new code there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyflank.backends.kvm.decode import IoMatch, guest_code, io_ending_at, parse_io
from pyflank.backends.kvm.structs import KvmRegs, KvmSregs
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.qualifications import IoDirection, IoInstruction, IoOperandEncoding
from pyflank.memory import GuestPhysicalMemory
from pyflank.processor import ExitInformation

_MAX_INSN = 15
_IO_INSTRUCTION = int(ExitReason.IO_INSTRUCTION)
_VMCALL = int(ExitReason.VMCALL)
_CACHE_LIMIT = 4096

SiteKey = tuple[int, int, int]  # (RIP, CR3, access)


def access_of(port: int, size: int, *, out: bool) -> int:
    """The low word of kvm_run's I/O exit: direction (OUT 1), size << 8, port << 16."""
    return int(out) | size << 8 | port << 16


@dataclass(frozen=True, slots=True)
class IoSite:
    start: int  # GUEST_RIP of the VMX exit
    length: int  # VM_EXIT_INSTRUCTION_LENGTH (0 when the instruction could not be found)
    string: bool
    rep: bool
    immediate: bool
    pending: bool  # KVM will still complete (and skip) the instruction on the next KVM_RUN
    qualification: int  # the I/O-instruction exit qualification, encoded once per site
    io: ExitInformation  # the exit information of an I/O-instruction exit here
    vmcall: ExitInformation  # ... and of the doorbell's VMCALL


def _site(start: int, match: IoMatch | None, access: int, *, pending: bool) -> IoSite:
    port, size, out = access >> 16 & 0xFFFF, access >> 8 & 0xFF, bool(access & 1)
    string = rep = immediate = False
    length = 0
    if match is not None:
        length, string, rep, immediate = match.length, match.string, match.rep, match.immediate
    qualification = IoInstruction(
        size=size,
        direction=IoDirection.OUT if out else IoDirection.IN,
        port=port,
        string=string,
        rep=rep,
        operand_encoding=IoOperandEncoding.IMMEDIATE if immediate else IoOperandEncoding.DX,
    ).encode()
    io = ExitInformation(_IO_INSTRUCTION, qualification, length)
    vmcall = ExitInformation(_VMCALL, 0, length)
    return IoSite(start, length, string, rep, immediate, pending, qualification, io, vmcall)


class IoSites:
    def __init__(self, memory: GuestPhysicalMemory) -> None:
        self._memory = memory
        self._cache: dict[SiteKey, IoSite] = {}
        # The exit path's first try: ``lookup((rip, cr3, access))``, no Python frame.
        self.lookup: Callable[[SiteKey], IoSite | None] = self._cache.get

    def clear(self) -> None:
        self._cache.clear()

    def find(
        self,
        regs: KvmRegs,
        sregs: KvmSregs,
        *,
        access: int,
        count: int,
        complete: Callable[[], None],
    ) -> IoSite:
        rip = regs.rip
        key = (rip, sregs.cr3, access)
        site = self._cache.get(key)
        if site is not None:
            return site
        port, size, out = access >> 16 & 0xFFFF, access >> 8 & 0xFF, bool(access & 1)
        code = guest_code(self._memory, sregs)
        facts = {"port": port, "size": size, "is_in": not out, "dx": regs.rdx}
        here = parse_io(code.read_available(rip, _MAX_INSN), **facts)
        if not out:
            return self._remember(key, _site(rip, here, access, pending=True))
        before = io_ending_at(code.read_before(rip, _MAX_INSN), count=count, **facts)
        if before is None:
            if here is None:
                return _site(rip, None, access, pending=False)  # not an I/O instruction we know
            return self._remember(key, _site(rip, here, access, pending=True))
        if here is None:
            return self._remember(key, _site(rip - before.length, before, access, pending=False))
        complete()  # both readings fit: let KVM finish the OUT and see where RIP lands
        if regs.rip == rip:
            return _site(rip - before.length, before, access, pending=False)
        return _site(rip, here, access, pending=False)

    def _remember(self, key: SiteKey, site: IoSite) -> IoSite:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = site
        return site
