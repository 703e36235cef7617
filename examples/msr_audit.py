"""Log every MSR the guest reads or writes, then let the seed's handler do the rest."""

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64.msrs import MSR_NAMES


class MsrAudit(ExitHandlerIntelX64):
    def handle_rdmsr(self) -> None:
        super().handle_rdmsr()
        s = self.m_state_save
        self.audit("rdmsr", s.rcx & 0xFFFFFFFF, (s.rdx << 32) | s.rax)

    def handle_wrmsr(self) -> None:
        s = self.m_state_save
        self.audit("wrmsr", s.rcx & 0xFFFFFFFF, (s.rdx << 32) | (s.rax & 0xFFFFFFFF))
        super().handle_wrmsr()

    def audit(self, op: str, msr: int, value: int) -> None:
        self.log(f"{op} {MSR_NAMES.get(msr, hex(msr))} = {value:#x}")


if __name__ == "__main__":
    from pyflank.vmm import Vm

    vm = Vm(MsrAudit)
    vm.load_asm("mov ecx, 0xC0000080\nrdmsr\nor eax, 1\nwrmsr\nhlt")
    print(vm.run()[0].debug_ring)
