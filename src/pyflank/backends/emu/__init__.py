"""The software CPU: unicorn playing a processor in VMX non-root operation."""

from pyflank.backends.emu.policy import ExitPolicy, exit_policy, unsupported
from pyflank.backends.emu.vcpu import EmuVcpu

__all__ = ["EmuVcpu", "ExitPolicy", "exit_policy", "unsupported"]
