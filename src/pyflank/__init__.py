"""pyflank: Bareflank's Intel x64 VM-exit handler in Python, over a software CPU and KVM.

The names a user starts with are importable from here::

    from pyflank import ExitHandlerIntelX64, Vm

They load on first use, so ``import pyflank.abi`` (or anything that needs only the ABI)
does not pull in the engines, and ``bfm``'s quick commands import only the standard
library.
"""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

    from pyflank.exit_handler import ExitHandlerIntelX64, StateSave, VmcallError, vmm_unittest
    from pyflank.testing import ExitHarness
    from pyflank.vmm import BackendUnavailable, StopReason, Vcpu, VcpuResult, Vm


def _quiet(logging: ModuleType) -> None:
    # A library stays quiet unless the application configures logging.
    logging.getLogger("pyflank").addHandler(logging.NullHandler())


class _QuietWhenLoggingLoads:
    """Gives pyflank's loggers their NullHandler the moment ``logging`` is imported.

    Importing ``logging`` here would cost every ``bfm vmcall`` a third of its run time;
    only modules that log import it, and this finder (first on ``sys.meta_path`` until
    then) finishes that import with the handler added.
    """

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != "logging":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                _quiet_after(spec.loader)
                return spec
        return None


def _quiet_after(loader: Any) -> None:
    run = loader.exec_module

    def exec_module(module: ModuleType) -> None:
        run(module)
        _quiet(module)

    loader.exec_module = exec_module  # this spec's own loader object


if "logging" in sys.modules:
    _quiet(sys.modules["logging"])
else:
    sys.meta_path.insert(0, _QuietWhenLoggingLoads())

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
_VERSION_PARTS = {"VERSION_MAJOR": 0, "VERSION_MINOR": 1, "VERSION_PATCH": 2}
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
    from pyflank.abi.version import VERSION, __version__

    VERSION_MAJOR, VERSION_MINOR, VERSION_PATCH = VERSION


def __getattr__(name: str) -> Any:
    if name in ("__version__", "VERSION") or name in _VERSION_PARTS:
        version = importlib.import_module("pyflank.abi.version")
        value = (
            version.VERSION[_VERSION_PARTS[name]]
            if name in _VERSION_PARTS
            else getattr(version, name)
        )
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'pyflank' has no attribute {name!r}")
    globals()[name] = value
    return value
