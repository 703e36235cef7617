"""The exit handler of the seed and the state it works on."""

from pyflank.exit_handler.debug_ring import DebugRing
from pyflank.exit_handler.ept import Ept, EptAccess
from pyflank.exit_handler.exit_handler_intel_x64 import (
    EXIT_METHODS,
    ExitHandlerIntelX64,
    VmcallError,
    vmm_unittest,
)
from pyflank.exit_handler.memory_hooks import MemoryHook, MemoryHooks
from pyflank.exit_handler.state_save import StateSave

__all__ = [
    "EXIT_METHODS",
    "DebugRing",
    "Ept",
    "EptAccess",
    "ExitHandlerIntelX64",
    "MemoryHook",
    "MemoryHooks",
    "StateSave",
    "VmcallError",
    "vmm_unittest",
]
