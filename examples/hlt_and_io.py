"""Choose your exits: HLT and port I/O exit to this handler, which plays a tiny device."""

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.qualifications import IoDirection, IoInstruction
from pyflank.intel_x64.vmcs import Vmcs


class HltAndIo(ExitHandlerIntelX64):
    def setup(self, vmcs: Vmcs) -> None:
        primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        vmcs.write(primary, vmcs.read(primary) | Proc.HLT_EXITING | Proc.UNCONDITIONAL_IO_EXITING)

    def handle_io_instruction(self) -> None:
        io = IoInstruction.decode(self.m_vmcs.read(f.EXIT_QUALIFICATION))
        if io.direction is IoDirection.IN:
            self.m_state_save.rax = 42  # every port reads 42
        else:
            self.log(f"OUT {io.port:#x} <- {self.m_state_save.rax & 0xFF:#x}")
        self.advance_rip()

    def handle_hlt(self) -> None:
        self.log("the guest executed HLT")
        self.halt()


if __name__ == "__main__":
    from pyflank.vmm import Vm

    vm = Vm(HltAndIo)
    vm.load_asm("in al, 0x60\nadd al, 1\nout 0x80, al\nhlt")
    [result] = vm.run()
    print(result.debug_ring)
