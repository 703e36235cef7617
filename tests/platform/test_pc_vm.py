"""A Vm on the PC platform: the guest ends the run through the platform's devices."""

from __future__ import annotations

from pyflank.backends.base import StopReason
from pyflank.vmm import Vm


def test_a_guest_powers_off_through_isa_debug_exit(backend: str) -> None:
    vm = Vm(platform="pc", backend=backend)
    vm.load_asm("mov al, 3\nout 0xf4, al\nhlt")
    [result] = vm.run(timeout=10)
    assert result.reason is StopReason.POWER_OFF, result.message
    assert "isa-debug-exit" in result.message and "exit status 7" in result.message


def test_the_keyboard_controller_resets_the_machine(backend: str) -> None:
    vm = Vm(platform="pc", backend=backend)
    vm.load_asm("mov al, 0xfe\nout 0x64, al\nhlt")
    [result] = vm.run(timeout=10)
    assert result.reason is StopReason.RESET, result.message


def test_the_minimal_platform_has_com1_only(backend: str) -> None:
    vm = Vm(backend=backend)
    vm.load_asm("in al, 0x21\nmov bl, al\nmov dx, 0x3f8\nmov al, 0x41\nout dx, al\nhlt")
    [result] = vm.run(timeout=10)
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert result.state.rbx & 0xFF == 0xFF  # no PIC: the port floats high
    assert vm.serial_output == b"A"
