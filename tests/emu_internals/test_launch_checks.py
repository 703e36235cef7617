"""VMLAUNCH's own checks: bad controls or host state fail the instruction, never the guest
(on each backend: the ``backend`` fixture of tests/conftest.py)."""

import pytest

from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.vmm import Vm


@pytest.mark.parametrize(
    ("change", "error", "check_id"),
    [
        (lambda v: v.write(f.HOST_CR0, 0), 8, "host.cr0.fixed_bits"),
        (lambda v: v.write(f.PIN_BASED_VM_EXECUTION_CONTROLS, 0), 7, "controls.pin_based.reserved"),
    ],
)
def test_launch_refused(backend: str, change: object, error: int, check_id: str) -> None:
    vm = Vm(backend=backend)
    vm.load_asm("mov r8, 1\nhlt")
    vmcs: Vmcs = vm.vcpus[0].vmcs
    change(vmcs)  # type: ignore[operator]
    [result] = vm.run(timeout=5)
    assert result.reason is StopReason.ERROR
    assert f"VM-instruction error {error}" in result.message
    assert check_id in result.debug_ring
    assert result.vmcs.read(f.VM_INSTRUCTION_ERROR) == error
    assert result.state.r08 == 0  # the guest never ran
