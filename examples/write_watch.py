"""Watch a running guest program's writes: a write hook on the page its stack pointer is in
when it first runs CPUID in user mode reports each write (address, value, RIP); the
memory hooks step the write and let the program go on."""

from pyflank.exit_handler import EptAccess, MemoryHook, MemoryHooks
from pyflank.intel_x64.fields import GUEST_CS_SELECTOR


class WriteWatch(MemoryHooks):
    writes: list[tuple[int, int, int]] = []
    watched: MemoryHook | None = None

    def handle_cpuid(self) -> None:
        if self.m_vmcs.read(GUEST_CS_SELECTOR) & 3 and self.watched is None:  # ring 3
            stack = self.guest_linear().physical(self.m_state_save.rsp)
            self.watched = self.hook(stack, write=True, after=self.wrote)
        super().handle_cpuid()

    def wrote(self, access: EptAccess) -> None:
        WriteWatch.writes.append((access.gla, value := self.value(access), access.rip))
        print(f"write {value:#x} to {access.gla:#x} at rip {access.rip:#x}")


if __name__ == "__main__":
    from pyflank import Vm
    from pyflank.platform.linux.assets import ensure

    found = ensure()  # Debian's kernel and a busybox initramfs: /init's stack is watched
    vm = Vm.boot_linux(found.kernel.bzimage, initrd=found.initramfs,
                       append="console=ttyS0 pyflank.poweroff", handler=WriteWatch)  # fmt: skip
    print(vm.run(timeout=None)[0].reason.value, len(WriteWatch.writes), "writes")
