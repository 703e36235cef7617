"""Getting a vCPU thread out of KVM_RUN from another thread, reliably.

KVM_RUN returns EINTR when a signal arrives for the thread inside it; a signal
that comes just *before* the thread enters KVM_RUN would be lost, so
``immediate_exit`` in ``kvm_run`` is set first: KVM_RUN then returns EINTR at
once (after finishing any pending I/O completion).  The signal needs a
handler, or its default action kills the process; the handler does nothing,
and Python only lets the main thread install one.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from pyflank.backends.kvm.structs import KvmRun

DEFAULT_KICK_SIGNAL = signal.SIGUSR1


def _ignore_kick(signum: int, frame: FrameType | None) -> None:
    """Runs in the main thread some time after a kick; the EINTR already did the work."""


def ensure_kick_handler(signum: int = DEFAULT_KICK_SIGNAL) -> None:
    """Make sure ``signum`` has a Python handler so a kick interrupts instead of killing.

    A handler somebody else installed is kept: any handler makes KVM_RUN return EINTR.
    """
    current = signal.getsignal(signum)
    if callable(current):
        return
    if threading.current_thread() is not threading.main_thread():
        name = signal.Signals(signum).name
        raise RuntimeError(
            f"the KVM backend needs a handler for {name} to interrupt KVM_RUN; create the first "
            f"KVM VM from the main thread, or install one there: signal.signal({name}, ...)"
        )
    signal.signal(signum, _ignore_kick)


class Kicker:
    """Interrupts one vCPU's KVM_RUN from any thread; ``kicked`` stays set until ``rearm``."""

    def __init__(self, run_page: KvmRun, signum: int = DEFAULT_KICK_SIGNAL) -> None:
        self._run_page = run_page
        self._signum = signum
        self._thread_id: int | None = None
        self._lock = threading.Lock()
        self.kicked = False

    def attach(self) -> None:
        """Called on the vCPU thread before it starts entering KVM_RUN."""
        with self._lock:
            self._thread_id = threading.get_ident()

    def detach(self) -> None:
        with self._lock:
            self._thread_id = None

    def kick(self) -> None:
        # The order matters: flag, then immediate_exit, then the signal, so the vCPU
        # thread can never clear immediate_exit and miss the flag.
        with self._lock:
            self.kicked = True
            self._run_page.immediate_exit = 1
            if self._thread_id is not None:
                signal.pthread_kill(self._thread_id, self._signum)

    def rearm(self) -> None:
        """After an interrupted KVM_RUN: clear ``immediate_exit`` (then check ``kicked``)."""
        self._run_page.immediate_exit = 0

    def reset(self) -> None:
        with self._lock:
            self.kicked = False
            self._run_page.immediate_exit = 0
