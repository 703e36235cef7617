"""COM1 as ``vmm.Vm`` builds it today: the device is ``devices.uart.Uart16550``."""

from __future__ import annotations

from pyflank.platform.devices.uart import Uart16550 as Serial16550

__all__ = ["Serial16550"]
