"""A gdb remote stub for guests on the software CPU: ``Vm(gdb=PORT)``, then
``gdb -ex 'target remote :PORT'``.

The stub listens on the loopback only and serves one debugger at a time, of its own user
(another user's connection is refused, where the kernel says whose it is).  Each vCPU is a
gdb thread (thread id = vCPU id + 1), stopped all together (gdb's all-stop mode): when one
stops -- a breakpoint, a single step, a watchpoint, a break on a VM exit, gdb's interrupt
-- the others are parked (``debug.parking``) and gdb is told.  What gdb gets:

* registers (``g``/``G``/``p``/``P``) as the target description names them (``target``):
  the general registers, RIP, EFLAGS, selectors, x87, SSE, FS/GS bases, CR0-CR8, EFER;
* guest memory (``m``/``M``) at guest-virtual addresses through the guest's paging at
  that moment, guest-physical where paging is off (``monitor physical on`` for physical
  addresses always);
* software and hardware breakpoints (``Z0``/``Z1``) and write, read and access
  watchpoints (``Z2``-``Z4``), single steps and continues, per thread (``vCont``);
* stops on VM exits: an observer that breaks (``observe.BreakOnExit``) or ``monitor
  break-exit`` parks the vCPU at the exit, before the handler; continuing dispatches the
  exit to the handler, once.  gdb prints the stop's description (an ``O`` packet).

``wait`` (the default, QEMU's ``-S``) stops every vCPU before its first instruction until
gdb says to go on; without it the guest runs and gdb attaching interrupts it.  When every
vCPU has stopped for good gdb is told the process exited (``W``), with each vCPU's reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Final

from pyflank.backends.emu.debug import StopCause
from pyflank.debug.exit_breaks import ExitBreaks
from pyflank.debug.parking import Parking, ParkingClosed, Resume, Stopped, StopPoint
from pyflank.debug.views import RegisterView
from pyflank.gdbstub import commands
from pyflank.gdbstub.address import loopback as loopback
from pyflank.gdbstub.address import peer_uid
from pyflank.gdbstub.packets import INTERRUPT, Connection, ConnectionClosed

log = logging.getLogger("pyflank.gdbstub")
SIGINT, SIGTRAP = 2, 5
_STOP_WORDS: Final = {
    StopCause.BREAKPOINT: "swbreak:;",
    StopCause.HARDWARE_BREAKPOINT: "hwbreak:;",
}


class GdbStub:
    """The stub of one Vm: listening from its creation, serving from ``start()``."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        wait: bool = True,
        snapshot: Callable[[str], str] | None = None,
    ) -> None:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((host, port))
        except OSError as exc:
            self._listener.close()
            raise OSError(f"gdb stub cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._listener.listen(1)
        self.host: str = self._listener.getsockname()[0]
        self.port: int = self._listener.getsockname()[1]
        """Where gdb connects (``target remote HOST:PORT``)."""
        self.wait = wait
        self.snapshot = snapshot
        """Saves the stopped VM to a file, for ``monitor snapshot FILE`` (the Vm's)."""
        self.breaks = ExitBreaks()
        """The exits gdb breaks on (``monitor break-exit``), besides the observers'."""
        self.physical = False
        """Memory addresses are guest-physical (``monitor physical on``)."""
        self.vcpus: dict[int, Parking] = {}
        self.endings: dict[int, str] = {}  # vCPU -> why it stopped for good
        self._stops: dict[int, Callable[[], None]] = {}
        self._events: queue.SimpleQueue[tuple[Parking, Stopped | None]] = queue.SimpleQueue()
        self._pending: list[tuple[Parking, Stopped]] = []
        self._conn: Connection | None = None
        self.current = 0
        """The vCPU that g, p, m ... work on (``Hg``)."""
        self.last_reply = ""
        """The stop reply of the last stop (``?``)."""
        self._closing = threading.Event()
        self._running = False  # gdb waits for a stop reply
        self._end_reported = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``HOST:PORT`` for gdb's ``target remote``."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # -- wiring (Vm) ----------------------------------------------------------------------
    def attach(self, parking: Parking, ended: Callable[[], str], stop: Callable[[], None]) -> None:
        """Debug this vCPU; ``ended`` says why it stopped, once it has; ``stop`` stops it
        for good (gdb's kill)."""
        self.vcpus[parking.vcpuid] = parking
        self._stops[parking.vcpuid] = stop

        def listen(p: Parking, stopped: Stopped | None) -> None:
            if stopped is None:
                self.endings[p.vcpuid] = ended()
            self._events.put((p, stopped))

        parking.listeners.append(listen)
        if self.wait:
            parking.debug.set_stepping(True)  # stop before the first instruction

    def start(self) -> None:
        """Serve debuggers (the Vm's run has begun)."""
        self._thread = threading.Thread(target=self._serve, name="gdb-stub", daemon=True)
        self._thread.start()

    def finish(self, timeout: float = 5.0) -> None:
        """The run is over: let a debugger waiting for the guest hear that it exited."""
        if self._conn is not None and self._running:
            self._end_reported.wait(timeout)

    def close(self) -> None:
        """Stop serving (the run is over)."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._conn is not None:
            self._conn.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    # -- sessions -------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                self._listener.settimeout(0.2)
                sock, peer = self._listener.accept()
            except TimeoutError:
                if all(p.ended for p in self.vcpus.values()):
                    return
                continue
            except OSError:
                return
            owner = peer_uid(sock)
            if owner is not None and owner != os.getuid():
                log.warning("refused a debugger of user %d from %s: the stub serves its own "
                            "user (%d) only", owner, peer, os.getuid())  # fmt: skip
                sock.close()
                continue
            log.info("gdb connected from %s", peer)
            sock.settimeout(None)
            self._conn = Connection(sock)
            try:
                self._session(self._conn)
            except ConnectionClosed as exc:
                log.info("gdb went away: %s", exc)
            except Exception:  # a stub failure must not take the VM with it
                log.exception("gdb stub failed; releasing the guest")
            finally:
                self._release()
                self._conn.close()
                self._conn = None

    def _session(self, conn: Connection) -> None:
        self._stop_all()
        self._drain()
        live = self.live()
        self.current = live[0].vcpuid if live else 0
        self.last_reply = self._stop_reply(live[0], None, SIGTRAP) if live else "W00"
        while not self._closing.is_set():
            packet = conn.read(timeout=0.2)
            if packet is None:
                continue
            if packet == INTERRUPT:
                continue  # already stopped
            text = packet.decode("latin-1")
            log.debug("gdb -> %s", text)
            reply = commands.handle(self, text)
            if reply is None:
                continue  # a resume: its stop reply was sent
            if reply is commands.DETACH:
                conn.send("OK")
                return
            assert isinstance(reply, str | bytes)
            log.debug("gdb <- %r", reply[:200])
            conn.send(reply)
            if text.startswith("QStartNoAckMode"):
                conn.acknowledge = False

    def _release(self) -> None:
        """The debugger left: clear what it set, let every vCPU go on."""
        self.breaks.clear()
        self.physical = False
        for parking in self.live():
            if parking.stopped is not None:
                with contextlib.suppress(ParkingClosed, TimeoutError):
                    parking.call(lambda _, p=parking: p.debug.clear_all(), commands.CALL_TIMEOUT)  # type: ignore[misc]
                parking.resume()
        self._pending.clear()

    # -- running --------------------------------------------------------------------------
    def resume(self, actions: dict[int | None, str]) -> None:
        """Let the vCPUs go on as ``actions`` says (vCPU -> "c" or "s"; None: the rest);
        reply when the next stop comes (or at once, with a stop not yet reported)."""
        conn = self._conn
        assert conn is not None
        self._collect_pending(None)
        for index, (parking, stopped) in enumerate(self._pending):
            # A stop not yet reported, of a thread gdb resumes now: it happens at once.
            if actions.get(parking.vcpuid, actions.get(None)) is not None:
                del self._pending[index]
                self._report(parking, stopped)
                return None
        resumed = []
        for parking in self.live():
            letter = actions.get(parking.vcpuid, actions.get(None))
            if letter is not None and parking.stopped is not None:
                parking.resume(Resume(step=letter == "s"))
                resumed.append(parking)
        if not resumed:
            conn.send(self.last_reply)
            return None
        self._wait_for_stop(conn)
        return None

    def _wait_for_stop(self, conn: Connection) -> None:
        self._running = True
        try:
            self._wait(conn)
        finally:
            self._running = False

    def _wait(self, conn: Connection) -> None:
        while True:
            try:
                parking, stopped = self._events.get(timeout=0.05)
            except queue.Empty:
                if conn.read(timeout=0) == INTERRUPT:
                    self._stop_all()
                    self._drain()
                    live = self.live()
                    if live:
                        self._report(self._current_or(live), None, SIGINT)
                        return
                if self._closing.is_set():
                    return
                continue
            if stopped is None:
                if not self.live():
                    self._exited(conn)
                    return
                continue
            self._stop_all()
            self._collect_pending(parking)
            self._report(parking, stopped)
            return

    def _stop_all(self) -> None:
        """Park every vCPU that still runs (all-stop)."""
        live = self.live()
        for parking in live:
            parking.request()
        for parking in live:
            while not parking.wait(0.2):
                if parking.ended or self._closing.is_set():
                    break

    def _collect_pending(self, reported: Parking | None) -> None:
        """Stops of their own that other vCPUs made meanwhile: reported at the next resume."""
        while True:
            try:
                parking, stopped = self._events.get_nowait()
            except queue.Empty:
                return
            if stopped is None or parking is reported:
                continue
            if stopped.point is StopPoint.EXIT or (
                stopped.engine is not None and stopped.engine.cause is not StopCause.REQUEST
            ):
                self._pending.append((parking, stopped))

    def _drain(self) -> None:
        while True:
            try:
                self._events.get_nowait()
            except queue.Empty:
                return

    def _report(self, parking: Parking, stopped: Stopped | None, signal: int = SIGTRAP) -> None:
        conn = self._conn
        assert conn is not None
        self.current = parking.vcpuid
        if stopped is not None and stopped.why:
            log.debug("gdb <- O %s", stopped.why)
            conn.send("O" + (stopped.why + "\n").encode().hex())
        self.last_reply = self._stop_reply(parking, stopped, signal)
        log.debug("gdb <- %s", self.last_reply)
        conn.send(self.last_reply)

    def _stop_reply(self, parking: Parking, stopped: Stopped | None, signal: int) -> str:
        words = ""
        engine = stopped.engine if stopped is not None else None
        if engine is not None:
            words = _STOP_WORDS.get(engine.cause, "")
            if engine.watch is not None:
                words = f"{engine.watch.value}:{engine.address:x};"
        return f"T{signal:02x}{words}thread:{parking.vcpuid + 1:x};"

    def _exited(self, conn: Connection) -> None:
        for vcpuid in sorted(self.endings):
            conn.send("O" + f"vCPU {vcpuid}: {self.endings[vcpuid]}\n".encode().hex())
        self.last_reply = "W00"
        conn.send("W00")
        self._end_reported.set()

    def kill(self) -> None:
        """Stop every vCPU for good (gdb's ``k``)."""
        for parking in self.live():
            self._stops[parking.vcpuid]()

    def console(self, text: str) -> None:
        """Print ``text`` in gdb (an ``O`` packet)."""
        assert self._conn is not None
        self._conn.send("O" + text.encode().hex())

    # -- helpers --------------------------------------------------------------------------
    def live(self) -> list[Parking]:
        """The vCPUs that have not stopped for good, by id."""
        return [p for _, p in sorted(self.vcpus.items()) if not p.ended]

    def _current_or(self, live: Iterable[Parking]) -> Parking:
        chosen = self.vcpus.get(self.current)
        if chosen is not None and not chosen.ended:
            return chosen
        return next(iter(live))

    def on_current(self, fn: Callable[[RegisterView], str]) -> str:
        """``fn`` on the current vCPU's thread, with its stopped state; ``E01`` if it
        cannot (not parked, or the change is refused)."""
        parking = self.vcpus.get(self.current)
        if parking is None or parking.ended:
            return "E01"
        try:
            return parking.call(fn, commands.CALL_TIMEOUT)
        except (ParkingClosed, TimeoutError):
            return "E01"
        except (PermissionError, ValueError, KeyError) as exc:
            log.info("gdb request refused: %s", exc)
            return "E01"

    def thread_info(self, vcpuid: int) -> str:
        """A vCPU in words, for ``info threads``."""
        parking = self.vcpus.get(vcpuid)
        if parking is None:
            return f"vCPU {vcpuid}: none"
        if parking.ended:
            return f"vCPU {vcpuid}: {self.endings.get(vcpuid, 'stopped')}"
        stopped = parking.stopped
        where = "running" if stopped is None else f"stopped ({stopped.point.value})"
        return f"vCPU {vcpuid}, {where}"
