"""Where the I/O instruction behind a KVM_EXIT_IO starts, and whether KVM still owes it a step.

An OUT that KVM's emulator ran has RIP past it at the exit; one that took the
VMX fast path has RIP at it and is skipped on the next KVM_RUN (unless RIP
changed).  An IN has RIP at it either way and is finished on the next
KVM_RUN.  Decoding forward and backward from RIP tells the cases apart; when
both readings fit (two identical OUTs in a row), KVM is asked to complete
the instruction and the RIP it lands on decides.  Answers are cached by
(RIP, CR3, port, size, direction): a doorbell loop decodes once.  The cache
assumes code at a cached RIP does not change while the vCPU runs; ``clear``
it after loading new code there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyflank.backends.kvm.decode import GuestCode, IoMatch, io_ending_at, parse_io
from pyflank.backends.kvm.structs import KvmRegs, KvmSregs

_MAX_INSN = 15
_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class IoSite:
    start: int  # GUEST_RIP of the VMX exit
    length: int  # VM_EXIT_INSTRUCTION_LENGTH (0 when the instruction could not be found)
    string: bool
    rep: bool
    immediate: bool
    pending: bool  # KVM will still complete (and skip) the instruction on the next KVM_RUN


def _site(start: int, match: IoMatch | None, pending: bool) -> IoSite:
    if match is None:
        return IoSite(start, 0, False, False, False, pending)
    return IoSite(start, match.length, match.string, match.rep, match.immediate, pending)


class IoSites:
    def __init__(self, code: GuestCode) -> None:
        self._code = code
        self._cache: dict[tuple[int, int, int, int, bool], IoSite] = {}

    def clear(self) -> None:
        self._cache.clear()

    def find(
        self,
        regs: KvmRegs,
        sregs: KvmSregs,
        *,
        port: int,
        size: int,
        count: int,
        out: bool,
        complete: Callable[[], None],
    ) -> IoSite:
        rip = regs.rip
        key = (rip, sregs.cr3, port, size, out)
        site = self._cache.get(key)
        if site is not None:
            return site
        paging = {"cr0": sregs.cr0, "cr3": sregs.cr3, "efer": sregs.efer}
        facts = {"port": port, "size": size, "is_in": not out, "dx": regs.rdx}
        here = parse_io(self._code.read(rip, _MAX_INSN, **paging), **facts)
        if not out:
            return self._remember(key, _site(rip, here, pending=True))
        before = io_ending_at(
            self._code.read_before(rip, _MAX_INSN, **paging), count=count, **facts
        )
        if before is None:
            if here is None:
                return _site(rip, None, pending=False)  # not an I/O instruction we know
            return self._remember(key, _site(rip, here, pending=True))
        if here is None:
            return self._remember(key, _site(rip - before.length, before, pending=False))
        complete()  # both readings fit: let KVM finish the OUT and see where RIP lands
        if regs.rip == rip:
            return _site(rip - before.length, before, pending=False)
        return _site(rip, here, pending=False)

    def _remember(self, key: tuple[int, int, int, int, bool], site: IoSite) -> IoSite:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = site
        return site
