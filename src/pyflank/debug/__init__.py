"""Stopping running vCPUs and working on them: where a stopped guest's state is
(``views``), parking a vCPU at a consistent point (``parking``), breaking into a debugger
at a VM exit (``exit_breaks``).  The gdb stub (``pyflank.gdbstub``) and snapshots
(``pyflank.snapshot``) are built on them."""

from pyflank.debug.exit_breaks import DebuggerExits, ExitBreaks
from pyflank.debug.parking import Parking, ParkingClosed, Resume, Stopped, StopPoint
from pyflank.debug.views import EngineView, ExitView, RegisterView

__all__ = [
    "DebuggerExits",
    "EngineView",
    "ExitBreaks",
    "ExitView",
    "Parking",
    "ParkingClosed",
    "RegisterView",
    "Resume",
    "StopPoint",
    "Stopped",
]
