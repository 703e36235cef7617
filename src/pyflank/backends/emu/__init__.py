"""The software CPU: unicorn playing a processor in VMX non-root operation."""

from pyflank.backends.emu.policy import unsupported
from pyflank.backends.emu.vcpu import EmuVcpu

__all__ = ["EmuVcpu", "unsupported"]
