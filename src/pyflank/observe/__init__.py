"""Observe a run: exit statistics, exit traces, break on exit, offline replay, pictures.

Observers watch every exit of a ``Vm`` without the handler changing (hvpp's statistics
and debug-break handlers and its compositor, as ``Vm(observers=[...])``)::

    stats, trace = ExitStatistics(), ExitTrace("run.jsonl")
    Vm(MyHandler, observers=[stats, trace]).run()
    print(stats.table())
    print(replay("run.jsonl", MyChangedHandler).describe())   # no CPU needed
    Vm(MyHandler, observers=[Recorder("run.rec")]).run()      # record a run (software CPU)
    Vm(MyHandler, observers=[again := Replayer("run.rec")]).run(); print(again.report.describe())
    plot_exits(read_trace("run.jsonl"), "exits.png")          # pip install pyflank[plot]

``python -m pyflank.observe`` reads a trace from the command line (``stats``, ``plot``,
``replay``).
Without observers the exit path costs what it did before (``processor.observer``).  An
observer of your own subclasses ``Observer`` (``observe.base``), or implements
``VmObserver`` itself.
"""

import importlib
from typing import TYPE_CHECKING

from pyflank.observe.base import Observer
from pyflank.observe.breaks import BreakHit, BreakOnExit
from pyflank.observe.replay import Divergence, ReplayResult, replay
from pyflank.observe.statistics import ExitStatistics, ReasonStatistics
from pyflank.observe.trace import ExitTrace
from pyflank.observe.tracefile import Trace, TracedExit, TraceError, read_trace
from pyflank.processor.observer import ObservedVcpu, VcpuObserver, VmObserver

if TYPE_CHECKING:
    from pyflank.observe.record import Recorder
    from pyflank.observe.record_format import RecordingError, read_recording
    from pyflank.observe.replay_run import Replayer, ReplayReport

# Recording and replaying a run need the software CPU: imported when asked for, so that a
# process watching another engine (bfm's service on KVM) never loads it.
_LAZY = {
    "Recorder": "pyflank.observe.record",
    "RecordingError": "pyflank.observe.record_format",
    "read_recording": "pyflank.observe.record_format",
    "Replayer": "pyflank.observe.replay_run",
    "ReplayReport": "pyflank.observe.replay_run",
}

__all__ = [
    "BreakHit",
    "BreakOnExit",
    "Divergence",
    "ExitStatistics",
    "ExitTrace",
    "ObservedVcpu",
    "Observer",
    "ReasonStatistics",
    "Recorder",
    "RecordingError",
    "ReplayReport",
    "ReplayResult",
    "Replayer",
    "Trace",
    "TraceError",
    "TracedExit",
    "VcpuObserver",
    "VmObserver",
    "read_recording",
    "read_trace",
    "replay",
]


def __getattr__(name: str) -> object:
    # ``plot_exits`` (``observe.plot``) needs the optional matplotlib: imported when asked for,
    # and not in ``__all__``, so that ``import *`` and the API reference never need it.
    if name == "plot_exits":
        return importlib.import_module("pyflank.observe.plot").plot_exits
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pyflank.observe' has no attribute {name!r}")
