"""Small handlers to compose with your own (hvpp's layering) when you turn exits on that a
guest OS cannot do without: each does what a VMM must so that the guest runs on.

- ``IoPassThrough``: an I/O exit reaches the machine's device (``m_ports``), as a
  Bareflank handler passed port I/O through to the hardware.
- ``HltToIdle``: an HLT exit resumes the guest in activity state HLT: the processor idles
  until an interrupt, as the CPU would have.
- ``ForwardedInterrupts``: turns on external-interrupt exiting with "acknowledge interrupt
  on exit", and injects each interrupt the guest can take, waiting for its interrupt
  window when it cannot (KVM's way with a user-space interrupt controller).

``class Watching(IoPassThrough, HltToIdle, ForwardedInterrupts): ...`` sees every exit
of all three and the guest goes on; override a method and call ``super()`` to watch one.
"""

from __future__ import annotations

from collections import deque

from pyflank.exit_handler.exit_handler_intel_x64 import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import ActivityState, InterruptibilityState
from pyflank.intel_x64.controls import PinBasedControls as Pin
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.controls import VmExitControls as ExitControls
from pyflank.intel_x64.qualifications import InterruptionType, IoDirection, IoInstruction
from pyflank.intel_x64.registers import RFLAGS_IF
from pyflank.intel_x64.vmcs import Vmcs

_VALID = 1 << 31
_PRIMARY = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
_BLOCKED = InterruptibilityState.BLOCKING_BY_STI | InterruptibilityState.BLOCKING_BY_MOV_SS


class IoPassThrough(ExitHandlerIntelX64):
    """IN and OUT exits (exit 30) carried out on the machine's ports."""

    def setup(self, vmcs: Vmcs) -> None:
        vmcs.write(_PRIMARY, vmcs.read(_PRIMARY) | Proc.UNCONDITIONAL_IO_EXITING)
        super().setup(vmcs)

    def handle_io_instruction(self) -> None:
        io = IoInstruction.decode(self.m_vmcs.read(f.EXIT_QUALIFICATION))
        if io.string or self.m_ports is None:
            what = "string I/O" if io.string else "I/O without a machine"
            self.log(f"IoPassThrough: {what} at port {io.port:#x} is not passed through")
            self.halt()
            return
        state = self.m_state_save
        mask = (1 << 8 * io.size) - 1
        if io.direction is IoDirection.IN:
            value = self.m_ports.io_read(io.port, io.size) & mask
            kept = 0 if io.size == 4 else state.rax & ~mask  # a 32-bit IN zero-extends
            state.rax = kept | value
        else:
            self.m_ports.io_write(io.port, io.size, state.rax & mask)
        self.advance_rip()


class HltToIdle(ExitHandlerIntelX64):
    """HLT exits (exit 12) resumed in activity state HLT, past the instruction."""

    def setup(self, vmcs: Vmcs) -> None:
        vmcs.write(_PRIMARY, vmcs.read(_PRIMARY) | Proc.HLT_EXITING)
        super().setup(vmcs)

    def handle_hlt(self) -> None:
        self.m_vmcs.write(f.GUEST_ACTIVITY_STATE, ActivityState.HLT)
        self.advance_rip()


class ForwardedInterrupts(ExitHandlerIntelX64):
    """External interrupts (exit 1) taken at the exit and injected when the guest allows
    (at once, or at its next interrupt-window exit, exit 7)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending_vectors: deque[int] = deque()

    def setup(self, vmcs: Vmcs) -> None:
        pin = f.PIN_BASED_VM_EXECUTION_CONTROLS
        vmcs.write(pin, vmcs.read(pin) | Pin.EXTERNAL_INTERRUPT_EXITING)
        exits = f.VM_EXIT_CONTROLS
        vmcs.write(exits, vmcs.read(exits) | ExitControls.ACKNOWLEDGE_INTERRUPT_ON_EXIT)
        super().setup(vmcs)

    def handle_external_interrupt(self) -> None:
        info = self.m_vmcs.read(f.VM_EXIT_INTERRUPTION_INFORMATION)
        if info & _VALID:  # acknowledged at the exit: the vector is ours to deliver
            self.pending_vectors.append(info & 0xFF)
        self._inject_or_wait()

    def handle_interrupt_window(self) -> None:
        self._inject_or_wait()

    def _inject_or_wait(self) -> None:
        vmcs = self.m_vmcs
        if self.pending_vectors and self._can_take_one():
            vector = self.pending_vectors.popleft()
            kind = InterruptionType.EXTERNAL_INTERRUPT << 8
            vmcs.write(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD, vector | kind | _VALID)
        window = Proc.INTERRUPT_WINDOW_EXITING
        controls = vmcs.read(_PRIMARY)
        wanted = controls | window if self.pending_vectors else controls & ~window
        if wanted != controls:
            vmcs.write(_PRIMARY, wanted)

    def _can_take_one(self) -> bool:
        vmcs = self.m_vmcs
        if not vmcs.read(f.GUEST_RFLAGS) & RFLAGS_IF:
            return False
        return not vmcs.read(f.GUEST_INTERRUPTIBILITY_STATE) & _BLOCKED
