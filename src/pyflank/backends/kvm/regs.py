"""A vCPU's registers as user space sees them between two KVM_RUNs.

With KVM_CAP_SYNC_REGS the kernel stores the registers in ``kvm_run`` on every
exit and loads the ones marked dirty on the next KVM_RUN: no ioctl per exit,
which matters where an ioctl costs microseconds (a nested KVM).  Without it,
the same structures are filled with KVM_GET_REGS/SREGS and written back with
KVM_SET_*.

The exit path moves all general registers at once through ``read_gprs`` and
``write_gprs``: one ``struct`` call on a buffer made here once, where reading
ctypes fields one by one, or exporting a new buffer per exit, costs several
times more.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

from pyflank.backends.kvm import abi
from pyflank.backends.kvm.device import KvmVcpuFd
from pyflank.backends.kvm.guest_state import GPRS, GPRS_TO_RIP
from pyflank.backends.kvm.structs import KvmRegs, KvmSregs

_WANTED = abi.KVM_SYNC_X86_REGS | abi.KVM_SYNC_X86_SREGS
_ONLY_REGS = abi.KVM_SYNC_X86_REGS


def _bytes_of(obj: ctypes.Structure) -> memoryview:
    """A plain byte view of a ctypes structure (its own format is not castable)."""
    raw = (ctypes.c_char * ctypes.sizeof(obj)).from_buffer(obj)
    return memoryview(raw).cast("B")


class VcpuRegisters:
    """``regs``/``sregs`` of the last exit; ``push`` makes changes to them take effect."""

    def __init__(self, fd: KvmVcpuFd, sync_caps: int) -> None:
        self._fd = fd
        self._run = fd.run_page
        self.synced = sync_caps & _WANTED == _WANTED
        if self.synced:
            self._run.kvm_valid_regs = _WANTED
            self.regs: KvmRegs = self._run.s.regs.regs
            self.sregs: KvmSregs = self._run.s.regs.sregs
        else:
            self.regs, self.sregs = KvmRegs(), KvmSregs()
        gprs = _bytes_of(self.regs)
        # ``read_gprs()`` -> the 18 values of kvm_regs; ``write_gprs(rax, ..., rip)``.
        self.read_gprs: Callable[[], tuple[int, ...]] = functools.partial(GPRS.unpack_from, gprs)
        self.write_gprs: Callable[..., None] = functools.partial(GPRS_TO_RIP.pack_into, gprs, 0)
        # ``sregs_seen``: the ``sregs_image()`` the VMCS guest-state area was last filled
        # from; the exit path compares (a memcmp) instead of converting every time.
        self.sregs_image: Callable[[], bytes] = _bytes_of(self.sregs).tobytes
        self.sregs_seen = b""

    def fetch(self) -> None:
        """After an exit: make ``regs``/``sregs`` current."""
        if not self.synced:
            self._fd.get_regs(self.regs)
            self._fd.get_sregs(self.sregs)

    def fetch_by_ioctl(self) -> None:
        """Current registers even when KVM_RUN failed (sync regs are stored on exits only)."""
        self._fd.get_regs(self.regs)
        self._fd.get_sregs(self.sregs)

    def push(self, *, sregs: bool) -> None:
        """The next KVM_RUN uses ``regs`` (and ``sregs`` if asked)."""
        if self.synced:
            self._run.kvm_dirty_regs = _WANTED if sregs else _ONLY_REGS
        else:
            self._fd.set_regs(self.regs)
            if sregs:
                self._fd.set_sregs(self.sregs)
        if sregs:
            self.sregs_seen = b""

    def push_now(self, *, sregs: bool) -> None:
        """Write through ioctls at once (setup, or before an ioctl that must see them)."""
        self._fd.set_regs(self.regs)
        if sregs:
            self._fd.set_sregs(self.sregs)
            self.sregs_seen = b""
        if self.synced:
            self._run.kvm_dirty_regs = 0
