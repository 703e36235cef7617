"""Linux on KVM here: how far it gets, and the instruction KVM's emulator stops at (gap
'linux'), never a hang.  Slow: the nested emulator takes most of a minute."""

from __future__ import annotations

import pytest

from kvm_support import kvm_marks
from pyflank.backends.base import StopReason
from pyflank.backends.kvm import GAPS, measured_capabilities
from pyflank.platform.linux.assets import LinuxAssets
from pyflank.vmm import Vm

pytestmark = [*kvm_marks(), pytest.mark.slow]


def test_linux_on_kvm_stops_at_the_emulators_gap(linux_assets: LinuxAssets) -> None:
    if not measured_capabilities().cpl0_emulated:
        pytest.skip(f"KVM gap 'linux': {GAPS['linux']}")
    console = bytearray()
    vm = Vm.boot_linux(
        linux_assets.kernel.bzimage,
        initrd=linux_assets.initramfs,
        append="console=ttyS0 earlyprintk=serial,ttyS0,115200",
        backend="kvm",
        console=console.append,
    )
    [result] = vm.run(timeout=600)
    assert result.reason is StopReason.EMULATION_FAILURE, result.message
    assert "cmpxchg16b" in result.message
    assert b"Booting paravirtualized kernel" in console  # well into start_kernel
