"""Observe a run: exit statistics, exit traces, break on exit, offline replay.

Observers watch every exit of a ``Vm`` without the handler changing (hvpp's statistics
and debug-break handlers and its compositor, as ``Vm(observers=[...])``)::

    stats, trace = ExitStatistics(), ExitTrace("run.jsonl")
    Vm(MyHandler, observers=[stats, trace]).run()
    print(stats.table())
    print(replay("run.jsonl", MyChangedHandler).describe())   # no CPU needed

``python -m pyflank.observe`` reads a trace from the command line (``stats``, ``replay``).
Without observers the exit path costs what it did before (``processor.observer``); a
user's own observer implements ``VmObserver``.
"""

from pyflank.observe.breaks import BreakHit, BreakOnExit
from pyflank.observe.replay import Divergence, ReplayResult, replay
from pyflank.observe.statistics import ExitStatistics, ReasonStatistics
from pyflank.observe.trace import ExitTrace
from pyflank.observe.tracefile import Trace, TracedExit, TraceError, read_trace
from pyflank.processor.observer import ObservedVcpu, VcpuObserver, VmObserver

__all__ = [
    "BreakHit",
    "BreakOnExit",
    "Divergence",
    "ExitStatistics",
    "ExitTrace",
    "ObservedVcpu",
    "ReasonStatistics",
    "ReplayResult",
    "Trace",
    "TraceError",
    "TracedExit",
    "VcpuObserver",
    "VmObserver",
    "read_trace",
    "replay",
]
