"""pyflank: Bareflank's Intel x64 VM-exit handler in Python, over a software CPU and KVM.

The names a user starts with are importable from here::

    from pyflank import ExitHandlerIntelX64, Vm

They load on first use, so ``import pyflank.abi`` (or anything that needs only the ABI)
does not pull in the engines.
"""

from __future__ import annotations

import importlib
import logging as _logging
from typing import TYPE_CHECKING, Any

from pyflank.abi.version import VERSION, __version__

VERSION_MAJOR, VERSION_MINOR, VERSION_PATCH = VERSION

# A library stays quiet unless the application configures logging.
_logging.getLogger("pyflank").addHandler(_logging.NullHandler())

_EXPORTS = {
    "ExitHandlerIntelX64": "pyflank.exit_handler",
    "StateSave": "pyflank.exit_handler",
    "VmcallError": "pyflank.exit_handler",
    "vmm_unittest": "pyflank.exit_handler",
    "Vm": "pyflank.vmm",
    "Vcpu": "pyflank.vmm",
    "VcpuResult": "pyflank.vmm",
    "StopReason": "pyflank.vmm",
    "BackendUnavailable": "pyflank.vmm",
    "ExitHarness": "pyflank.testing",
}
__all__ = [
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "VERSION_PATCH",
    "BackendUnavailable",
    "ExitHandlerIntelX64",
    "ExitHarness",
    "StateSave",
    "StopReason",
    "Vcpu",
    "VcpuResult",
    "Vm",
    "VmcallError",
    "__version__",
    "vmm_unittest",
]

if TYPE_CHECKING:
    from pyflank.exit_handler import ExitHandlerIntelX64, StateSave, VmcallError, vmm_unittest
    from pyflank.testing import ExitHarness
    from pyflank.vmm import BackendUnavailable, StopReason, Vcpu, VcpuResult, Vm


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pyflank' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
