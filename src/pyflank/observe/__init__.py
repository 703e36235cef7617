"""Observe a run: exit statistics, exit traces, break on exit.

Observers watch every exit of a ``Vm`` without the handler changing (hvpp's statistics
and debug-break handlers and its compositor, as ``Vm(observers=[...])``)::

    stats, trace = ExitStatistics(), ExitTrace("run.jsonl")
    Vm(MyHandler, observers=[stats, trace]).run()
    print(stats.table())

Without observers the exit path costs what it did before (``processor.observer``); a
user's own observer implements ``VmObserver``.
"""

from pyflank.observe.breaks import BreakHit, BreakOnExit
from pyflank.observe.statistics import ExitStatistics, ReasonStatistics
from pyflank.observe.trace import ExitTrace
from pyflank.observe.tracefile import Trace, TracedExit, TraceError, read_trace
from pyflank.processor.observer import ObservedVcpu, VcpuObserver, VmObserver

__all__ = [
    "BreakHit",
    "BreakOnExit",
    "ExitStatistics",
    "ExitTrace",
    "ObservedVcpu",
    "ReasonStatistics",
    "Trace",
    "TraceError",
    "TracedExit",
    "VcpuObserver",
    "VmObserver",
    "read_trace",
]
