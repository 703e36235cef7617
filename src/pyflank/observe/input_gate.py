"""Host input for COM1 let into the guest only at points a recording can name, so that a
replay gives it at the same point of the guest's run.

Typed input arrives whenever the host has it; the guest would otherwise see it at the
next device access or service, wherever its run happens to be.  With a gate, the UART
hands ``feed`` to the gate (``Uart16550.input_gate``) and receives the bytes only when the
gate lets them in, at points that are the same in every run of the same guest:

* on a machine (the PC platform), where the processor looks for host input: its clock
  asks ``wakeup.is_set()`` at each exit and pause -- the gate stands in for the machine's
  ``wakeup`` event and counts those looks -- and a vCPU halted with nothing armed waits in
  ``wakeup.wait()``;
* without one, before the handler sees an exit (``at_exit``).

``RecordingGate`` lets in whatever arrived at the next such point and says where
(``note``); ``ReplayGate`` lets in the recorded bytes at their recorded points, ignores
the host, and reports a point that does not come as it should (``diverged``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from pyflank.observe.record_format import InputPoint, RecordedInput
from pyflank.platform.devices.uart import Uart16550

log = logging.getLogger("pyflank.observe")
Progress = Callable[[], tuple[int, int]]  # (guest code run, time idle), now


class _Gate(threading.Event):
    """The machine's ``wakeup``, standing between the host's input and COM1."""

    def __init__(self, serial: Uart16550, progress: Progress) -> None:
        super().__init__()
        self.serial = serial
        self.progress = progress
        self.looks = 0  # the machine's looks for host input so far

    def point(self, kind: str, at: int) -> InputPoint:
        executed, idle_ns = self.progress()
        return InputPoint(kind, at, executed, idle_ns)

    def install(self, machine: object | None) -> None:
        """Stand in for the machine's wakeup (if any) and take COM1's host input."""
        self.serial.input_gate = self.feed
        if machine is not None:
            machine.wakeup = self  # type: ignore[attr-defined]
            self.serial.wakeup = self

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def at_exit(self, index: int) -> None:
        raise NotImplementedError


class RecordingGate(_Gate):
    """Lets host input in at the next point, and notes where."""

    def __init__(
        self, serial: Uart16550, progress: Progress, note: Callable[[RecordedInput], None]
    ) -> None:
        super().__init__(serial, progress)
        self.note = note
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._arrived = threading.Event()

    def feed(self, data: bytes) -> None:
        """The host's input (any thread)."""
        with self._lock:
            self._pending += data
            self._arrived.set()

    def is_set(self) -> bool:
        self.looks += 1
        return self._let_in("check", self.looks)

    def wait(self, timeout: float | None = None) -> bool:
        self._arrived.wait(timeout)
        return self._let_in("idle", self.looks)

    def set(self) -> None:
        self._arrived.set()

    def clear(self) -> None:
        pass  # what is pending stays pending

    def at_exit(self, index: int) -> None:
        self._let_in("exit", index)

    def _let_in(self, kind: str, at: int) -> bool:
        with self._lock:
            data = bytes(self._pending)
            self._pending.clear()
            self._arrived.clear()
        if not data:
            return False
        self.note(RecordedInput(self.point(kind, at), data))
        self.serial.deliver(data)
        return True


class ReplayGate(_Gate):
    """Lets the recorded input in at its recorded points; the host's is ignored."""

    def __init__(
        self,
        serial: Uart16550,
        progress: Progress,
        inputs: Iterable[RecordedInput],
        diverged: Callable[[str, str, str], None],
    ) -> None:
        super().__init__(serial, progress)
        self.inputs = deque(inputs)
        self.diverged = diverged  # (what, recorded, replayed)

    def feed(self, data: bytes) -> None:
        log.warning("a replay takes its input from the recording: %d bytes ignored", len(data))

    def is_set(self) -> bool:
        self.looks += 1
        return self._due("check", self.looks)

    def wait(self, timeout: float | None = None) -> bool:
        if self._due("idle", self.looks):
            return True
        if self.inputs:  # the recording got input later, but here the guest waits for it
            here = self.point("idle", self.looks)
            self.diverged("input", self.inputs[0].point.describe(), f"{here.describe()}")
            self.inputs.clear()
        time.sleep(timeout or 0)
        return False

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass

    def at_exit(self, index: int) -> None:
        self._due("exit", index)

    def _due(self, kind: str, at: int) -> bool:
        if not self.inputs:
            return False
        recorded = self.inputs[0]
        if recorded.point.kind != kind or recorded.point.at > at:
            return False
        here = self.point(kind, at)
        self.inputs.popleft()
        if recorded.point != here:
            self.diverged("input", recorded.point.describe(), here.describe())
            return False
        self.serial.deliver(recorded.data)
        return True
