"""The VMX processor every engine shares: exits in as records, entries out as plans.

An engine (``pyflank.backends``) runs guest code and reports each VM exit as an
``ExitRecord``; ``VmxProcessor`` stores it in the VMCS and StateSave, runs the exit
handler's ``dispatch()``, and answers with the ``EntryPlan`` of the next VM entry, or a
``Stop``.  See ``records`` for the values, ``vmx`` for the transitions.
"""

from pyflank.processor.delivery import Delivery
from pyflank.processor.policy import ExitPolicy, exit_policy, unsupported_controls
from pyflank.processor.records import (
    EXIT_INFORMATION_FIELDS,
    EntryPlan,
    Event,
    ExitInformation,
    ExitRecord,
    Pause,
    Stop,
    StopReason,
)
from pyflank.processor.vmx import MAX_ENTRY_FAILURES, VmxProcessor

__all__ = [
    "EXIT_INFORMATION_FIELDS",
    "MAX_ENTRY_FAILURES",
    "Delivery",
    "EntryPlan",
    "Event",
    "ExitInformation",
    "ExitPolicy",
    "ExitRecord",
    "Pause",
    "Stop",
    "StopReason",
    "VmxProcessor",
    "exit_policy",
    "unsupported_controls",
]
