"""Hide the hypervisor from the guest and give it another CPU vendor."""

from pyflank.exit_handler import ExitHandlerIntelX64


class CpuidMasking(ExitHandlerIntelX64):
    VENDOR = b"FlankVirtual"  # 12 bytes: EBX, EDX, ECX

    def handle_cpuid(self) -> None:
        leaf = self.m_state_save.rax & 0xFFFFFFFF
        super().handle_cpuid()  # the CPU's answer; RIP advanced
        if leaf == 0:
            s, v = self.m_state_save, self.VENDOR
            s.rbx, s.rdx, s.rcx = (int.from_bytes(v[i : i + 4], "little") for i in (0, 4, 8))
        elif leaf == 1:
            self.m_state_save.rcx &= ~(1 << 31)  # no "hypervisor present" bit


if __name__ == "__main__":
    from pyflank.vmm import Vm

    vm = Vm(CpuidMasking)
    vm.load_asm("xor eax, eax\ncpuid\nmov eax, 1\ncpuid\nhlt")
    [result] = vm.run()
    print(f"the guest saw ecx={result.state.rcx:#x} after CPUID leaf 1")
