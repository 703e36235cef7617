"""A Linux boot that must end in a clean power-off, as most Linux tests need one."""

from __future__ import annotations

from pathlib import Path

from pyflank.backends.base import StopReason
from pyflank.platform.linux.assets import LinuxAssets
from pyflank.platform.linux.initramfs import POWEROFF_FLAG
from pyflank.vmm import HandlerFactory, VcpuResult, Vm


def boot_to_power_off(
    assets: LinuxAssets,
    handler: HandlerFactory,
    *,
    kernel: Path | None = None,
    timeout: float = 300,
) -> tuple[Vm, VcpuResult, str]:
    """Boot ``kernel`` (default: the assets' bzImage) with the initramfs under ``handler``;
    the Vm, the vCPU's result and the console, asserting the power-off."""
    console = bytearray()
    vm = Vm.boot_linux(
        assets.kernel.bzimage if kernel is None else kernel,
        initrd=assets.initramfs,
        append=f"console=ttyS0 {POWEROFF_FLAG}",
        handler=handler,
        console=console.append,
    )
    [result] = vm.run(timeout=timeout)
    text = console.decode(errors="replace")
    assert result.reason is StopReason.POWER_OFF, (result.message, text[-2000:])
    return vm, result, text
