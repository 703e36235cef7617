"""gdb on Debian's kernel: stopping at its CPUID exits until one is in the kernel proper
(a guest-virtual RIP, the instruction read through the guest's page tables), a single
step off the exit, then the boot to its power-off.  Slow: one boot under gdb."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gdb_support import debug, gdb_binary
from pyflank.platform.linux.assets import LinuxAssets
from pyflank.platform.linux.initramfs import POWEROFF_FLAG
from pyflank.processor import StopReason
from pyflank.vmm import Vm

SCRIPT = """
monitor break-exit cpuid
continue
while $rip < 0xffffffff80000000
  continue
end
info registers rip
x/i $rip
stepi
info registers rip
monitor delete-exits
continue
"""


@pytest.mark.slow
def test_gdb_follows_linux_from_its_first_instruction_into_the_kernel(
    linux_assets: LinuxAssets, gdb_binary: str, tmp_path: Path
) -> None:
    script = tmp_path / "linux.gdb"
    script.write_text(SCRIPT)
    vm = Vm.boot_linux(linux_assets.kernel.bzimage, initrd=linux_assets.initramfs,
                       append=f"console=ttyS0 {POWEROFF_FLAG}", gdb=0)  # fmt: skip
    session = debug(gdb_binary, vm, [f"source {script}"], timeout=180)
    text = session.transcript
    rips = [int(v, 16) for v in re.findall(r"^rip\s+(0x[0-9a-f]+)", text, re.MULTILINE)]
    assert len(rips) == 2 and rips[0] >= 0xFFFF_FFFF_8000_0000, text
    assert re.search(rf"=> {rips[0]:#x}:\s+cpuid", text), text
    assert rips[1] == rips[0] + 2  # the step ran the handler's CPUID and the guest on
    assert "break on exit 10 (cpuid)" in text and "exited normally" in text
    [result] = session.results
    assert result.reason is StopReason.POWER_OFF


__all__ = ["gdb_binary"]  # (the fixture, from gdb_support)
