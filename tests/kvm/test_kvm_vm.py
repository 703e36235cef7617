"""``Vm(backend="kvm")``: vmcall loops through the guest SDK, the probe's report, the demo
guest next to its software-CPU run."""

from __future__ import annotations

import re

import pytest

from kvm_support import kvm_marks
from pyflank import demo
from pyflank.backends.base import StopReason
from pyflank.backends.kvm import KvmCapabilities
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.testing import versions_loop
from pyflank.vmm import Vm

pytestmark = kvm_marks()


def _run_loop(count: int, timeout: float) -> None:
    vm = Vm(backend="kvm")
    vm.load_asm(versions_loop(count))
    [result] = vm.run(timeout=timeout)
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert result.state.r12 == count
    assert result.state.r13 == 0, f"{result.state.r13} wrong replies"
    assert result.exits == count  # every vmcall an exit; CPUID never is on KVM


@pytest.mark.parametrize("count", [1000], ids=["1000 vmcalls"])
def test_vmcall_loop_through_vm(count: int) -> None:
    _run_loop(count, timeout=60)


@pytest.mark.slow
def test_hundred_thousand_vmcalls_through_vm() -> None:
    _run_loop(100_000, timeout=600)


def test_the_vm_reports_the_probe_and_refuses_what_kvm_cannot_exit_on() -> None:
    vm = Vm(backend="kvm")
    assert isinstance(vm.capabilities, KvmCapabilities)
    assert vm.capabilities.usable and "KVM" in vm.capabilities.describe()
    with pytest.raises(ValueError, match=r"RDTSC_EXITING \(RDTSC/RDTSCP complete inside KVM"):
        vm.configure(
            lambda vmcs: vmcs.write(
                f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
                vmcs.read(f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS) | Proc.RDTSC_EXITING,
            )
        )
    vm.close()


def _without_kvm_differences(text: str) -> list[str]:
    """The demo's output less what the KVM run explains: CPUID/INVD exits (no such exits on
    KVM), vmcall addresses (the doorbell's OUT, not VMCALL), the exit count, the notes."""
    kept = []
    for line in text.splitlines():
        if line.startswith("where KVM differs"):
            break
        if re.search(r"0x[0-9a-f]{8}  (cpuid|invd) ", line) or line.startswith("vCPU 0 stopped"):
            continue
        line = re.sub(r"^  0x[0-9a-f]{8}  vmcall ", "  vmcall ", line)
        kept.append(line.replace("on the kvm backend", "on the emu backend"))
    return kept


def test_the_demo_guest_matches_the_software_cpu_but_where_the_report_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert demo.main(["--guest-only", "--backend", "emu"]) == 0
    emu = capsys.readouterr().out
    assert demo.main(["--guest-only", "--backend", "kvm"]) == 0
    kvm = capsys.readouterr().out
    assert _without_kvm_differences(kvm) == _without_kvm_differences(emu)
    emu_exits = int(re.search(r"promoted after (\d+) exits", emu)[1])  # type: ignore[index]
    assert f"promoted after {emu_exits - 4} exits" in kvm  # 3 CPUIDs and an INVD fewer
    notes = kvm.split("where KVM differs from the software CPU (its capability report):\n")[1]
    assert "cpuid NO, invd NO" in notes
    assert "- guest VMCALL: " in notes
