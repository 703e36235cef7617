"""A throw-away one-vCPU VM running a few bytes of 64-bit code: the probe's test bench.

No exit handler, no VMCS: just KVM_RUN until the first exit (or a timeout)
and the raw ``kvm_run`` page to look at.
"""

from __future__ import annotations

import threading
from types import TracebackType

from pyflank.backends.kvm import abi
from pyflank.backends.kvm.device import KvmSystem
from pyflank.backends.kvm.kick import Kicker, ensure_kick_handler
from pyflank.backends.kvm.longmode import FlatLayout, flat_long_mode_sregs, write_flat_long_mode
from pyflank.backends.kvm.structs import KvmRegs
from pyflank.memory import GuestPhysicalMemory

TSS_ADDRESS = 0xFFFB_D000  # three pages below 4 GiB that Intel's real-mode emulation needs
_RFLAGS_RESERVED = 1 << 1


class TinyGuest:
    """``code`` at ``layout.code`` in flat long mode, ring 0 (ring 3 with ``user``)."""

    def __init__(
        self,
        system: KvmSystem,
        code: bytes,
        *,
        layout: FlatLayout | None = None,
        user: bool = False,
    ) -> None:
        ensure_kick_handler()
        self.layout = layout or FlatLayout()
        self.memory = GuestPhysicalMemory(self.layout.ram)
        self.vm = system.create_vm()
        try:
            if system.check_extension(abi.KVM_CAP_SET_TSS_ADDR):
                self.vm.set_tss_addr(TSS_ADDRESS)
            self.vm.set_user_memory_region(0, 0, self.memory.size, self.memory.address)
            cr3 = write_flat_long_mode(self.memory, self.layout)
            self.memory.write(self.layout.code, code)
            self.vcpu = self.vm.create_vcpu(0)
            sregs = self.vcpu.get_sregs()
            flat_long_mode_sregs(sregs, cr3, self.layout, user=user)
            self.vcpu.set_sregs(sregs)
            regs = KvmRegs()
            regs.rip, regs.rsp, regs.rflags = (
                self.layout.code,
                self.layout.stack_top,
                _RFLAGS_RESERVED,
            )
            self.vcpu.set_regs(regs)
        except BaseException:
            self.vm.close()
            raise
        self.run_page = self.vcpu.run_page

    def run(self, timeout: float) -> int | None:
        """KVM_RUN to the next exit; None if it had not returned after ``timeout`` seconds."""
        kicker = Kicker(self.run_page)
        kicker.attach()
        timer = threading.Timer(timeout, kicker.kick)
        timer.start()
        try:
            while True:
                if self.vcpu.run():
                    return int(self.run_page.exit_reason)
                if kicker.kicked:
                    return None
        finally:
            timer.cancel()
            kicker.detach()
            kicker.reset()

    def regs(self) -> KvmRegs:
        return self.vcpu.get_regs()

    def close(self) -> None:
        self.vcpu.close()
        self.vm.close()
        self.memory.close()

    def __enter__(self) -> TinyGuest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
