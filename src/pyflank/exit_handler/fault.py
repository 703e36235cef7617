"""What an exit handler that raised leaves behind, and how its vCPU is stopped.

``dispatch()`` guards every exception a handler can raise (``SystemExit`` and
``KeyboardInterrupt`` included: a vCPU thread never receives a real Ctrl-C, so one
there is the extension's own).  Building the report must not fail either: an
exception's ``__str__`` may raise, the handler may have dropped its debug ring, its
``halt()`` may be the broken method.  Whatever happens, the vCPU ends halted and the
fault is kept on the handler (``handler_fault``) for the VMM to report as the stop.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from pyflank.intel_x64 import exit_reasons
from pyflank.intel_x64 import fields as vmcs_fields
from pyflank.intel_x64.vmcs import VmcsState

_ATTRIBUTE: Final = "m_fault"
_MAX_TEXT: Final = 400
# Frames of the dispatcher itself: the handler frame is the first one below them.
_DISPATCH_FRAMES: Final = frozenset({"dispatch", "handle_exit"})
_DISPATCH_FILE: Final = "exit_handler_intel_x64.py"


@dataclass(frozen=True)
class HandlerFault:
    """An exception an exit handler raised: what, where, and on which exit."""

    exit_reason: int  # the VM_EXIT_REASON field being handled (-1 if unreadable)
    exception: str  # "ValueError: boom"
    handler_frame: str  # "handle_cpuid (ext.py:12)": the handler method that was running
    raised_at: str  # the innermost frame, where the exception was raised
    traceback: str  # the whole traceback, for the debug ring

    def describe(self) -> str:
        """One line: the stop message of the vCPU (and what bfm prints)."""
        where = f"in {self.handler_frame}"
        if self.raised_at and self.raised_at != self.handler_frame:
            where += f", raised at {self.raised_at}"
        return f"the exit handler raised {self.exception} {where} on exit {self._exit()}"

    def _exit(self) -> str:
        if self.exit_reason < 0:
            return "(unknown)"
        return f"{self.exit_reason & 0xFFFF} ({exit_reasons.description(self.exit_reason)})"


def _safe_text(exc: BaseException) -> str:
    try:
        name = type(exc).__qualname__
    except BaseException:  # noqa: BLE001 - a metaclass can make even the name raise
        name = "<exception>"
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not hide the fault
        text = "<__str__ raised>"
    text = " ".join(text.split())
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT] + "..."
    return f"{name}: {text}" if text else name


def _frame(tb: TracebackType) -> str:
    code = tb.tb_frame.f_code
    return f"{code.co_name} ({Path(code.co_filename).name}:{tb.tb_lineno})"


def _frames(exc: BaseException) -> tuple[str, str]:
    """The handler frame (first below the dispatcher) and the innermost one."""
    tb, handler, inner = exc.__traceback__, "", ""
    while tb is not None:
        code = tb.tb_frame.f_code
        own = code.co_name in _DISPATCH_FRAMES and code.co_filename.endswith(_DISPATCH_FILE)
        if not handler and not own:
            handler = _frame(tb)
        inner = _frame(tb)
        tb = tb.tb_next
    return handler or inner or "<no frame>", inner


def _traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:  # noqa: BLE001 - formatting calls __str__ and reads source files
        return _safe_text(exc)


def capture(exc: BaseException, exit_reason: int = -1) -> HandlerFault:
    """The fault report of ``exc``; never raises."""
    try:
        handler_frame, raised_at = _frames(exc)
    except BaseException:  # noqa: BLE001
        handler_frame, raised_at = "<no frame>", ""
    return HandlerFault(exit_reason, _safe_text(exc), handler_frame, raised_at, _traceback(exc))


def handler_fault(handler: object) -> HandlerFault | None:
    """The fault that stopped ``handler``'s vCPU, if one did."""
    fault = getattr(handler, _ATTRIBUTE, None)
    return fault if isinstance(fault, HandlerFault) else None


def halt_on_fault(handler: Any, exc: BaseException) -> HandlerFault:
    """Record ``exc`` on ``handler``, log it to its debug ring if it still has one, halt."""
    vmcs: Any = getattr(handler, "m_vmcs", None)
    reason = -1
    with contextlib.suppress(BaseException):
        reason = int(vmcs.read(vmcs_fields.VM_EXIT_REASON)) if vmcs is not None else -1
    fault = capture(exc, reason)
    with contextlib.suppress(BaseException):
        setattr(handler, _ATTRIBUTE, fault)
    with contextlib.suppress(BaseException):
        handler.log(f"{fault.describe()}\n{fault.traceback}", logging.ERROR)
    try:
        handler.halt()
    except BaseException:  # noqa: BLE001 - halt() itself may be what is broken
        with contextlib.suppress(BaseException):
            vmcs.halt()
    # The vCPU must not resume into the instruction whose handler failed, whatever the
    # methods above did: resuming would re-run it and fault again, forever.
    with contextlib.suppress(BaseException):
        if vmcs.state is VmcsState.LAUNCHED:
            vmcs.state = VmcsState.HALTED
    return fault
