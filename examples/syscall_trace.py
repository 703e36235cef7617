"""Trace a Linux guest's system calls: an EPT execute hook on the address the kernel wrote
to IA32_LSTAR (its SYSCALL entry) reports each call's number, name and calling task."""

from pyflank.exit_handler import EptAccess, MemoryHooks
from pyflank.intel_x64.msrs import IA32_LSTAR
from pyflank.introspect import LinuxGuest, SystemCall


class SyscallTrace(MemoryHooks):
    calls: list[SystemCall] = []

    def handle_wrmsr(self) -> None:
        if self.m_state_save.rcx == IA32_LSTAR:  # the kernel says where SYSCALL enters it
            self.linux, self.entry = LinuxGuest(self.m_memory), self.m_state_save.edx_eax()
            entry_page = self.guest_linear().physical(self.entry, execute=True)
            self.hook(entry_page, execute=True, on_access=self.entered)
        super().handle_wrmsr()

    def entered(self, access: EptAccess) -> None:
        if access.rip == self.entry:  # (other code on the page runs too)
            SyscallTrace.calls.append(call := self.linux.system_call(self))
            print(call)


if __name__ == "__main__":
    from pyflank import Vm
    from pyflank.platform.linux.assets import ensure

    found = ensure()  # Debian's kernel and a busybox initramfs, fetched once and cached
    vm = Vm.boot_linux(found.kernel.bzimage, initrd=found.initramfs,
                       append="console=ttyS0 pyflank.poweroff", handler=SyscallTrace)  # fmt: skip
    print(vm.run(timeout=None)[0].reason.value)
