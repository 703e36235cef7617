"""A vCPU's registers as user space sees them between two KVM_RUNs.

With KVM_CAP_SYNC_REGS the kernel stores the registers in ``kvm_run`` on every
exit and loads the ones marked dirty on the next KVM_RUN: no ioctl per exit,
which matters where an ioctl costs microseconds (a nested KVM).  Without it,
the same structures are filled with KVM_GET_REGS/SREGS and written back with
KVM_SET_*.
"""

from __future__ import annotations

from pyflank.backends.kvm import abi
from pyflank.backends.kvm.device import KvmVcpuFd
from pyflank.backends.kvm.structs import KvmRegs, KvmSregs

_WANTED = abi.KVM_SYNC_X86_REGS | abi.KVM_SYNC_X86_SREGS


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
        self._sregs_image = memoryview(self.sregs).cast("B")
        self._sregs_seen = b""

    def fetch(self) -> None:
        """After an exit: make ``regs``/``sregs`` current."""
        if not self.synced:
            self._fd.get_regs(self.regs)
            self._fd.get_sregs(self.sregs)

    def fetch_by_ioctl(self) -> None:
        """Current registers even when KVM_RUN failed (sync regs are stored on exits only)."""
        self._fd.get_regs(self.regs)
        self._fd.get_sregs(self.sregs)

    def sregs_changed(self) -> bool:
        """Whether ``sregs`` differ from the last time this answered True (a cheap memcmp)."""
        image = self._sregs_image.tobytes()
        if image == self._sregs_seen:
            return False
        self._sregs_seen = image
        return True

    def push(self, *, sregs: bool) -> None:
        """The next KVM_RUN uses ``regs`` (and ``sregs`` if asked)."""
        if self.synced:
            self._run.kvm_dirty_regs = _WANTED if sregs else abi.KVM_SYNC_X86_REGS
        else:
            self._fd.set_regs(self.regs)
            if sregs:
                self._fd.set_sregs(self.sregs)
        if sregs:
            self._sregs_seen = b""

    def push_now(self, *, sregs: bool) -> None:
        """Write through ioctls at once (setup, or before an ioctl that must see them)."""
        self._fd.set_regs(self.regs)
        if sregs:
            self._fd.set_sregs(self.sregs)
            self._sregs_seen = b""
        if self.synced:
            self._run.kvm_dirty_regs = 0
