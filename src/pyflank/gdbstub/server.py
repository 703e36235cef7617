"""A gdb remote stub for guests on the software CPU: ``Vm(gdb=PORT)``, then
``gdb -ex 'target remote :PORT'``.

The stub listens on the loopback only and serves one debugger at a time.  Each vCPU is a
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
import ipaddress
import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pyflank.backends.emu.debug import StopCause, WatchKind
from pyflank.debug.exit_breaks import ExitBreaks
from pyflank.debug.parking import Parking, ParkingClosed, Resume, Stopped, StopPoint
from pyflank.debug.views import RegisterView, read_memory, write_memory
from pyflank.gdbstub import monitor
from pyflank.gdbstub.packets import INTERRUPT, Connection, ConnectionClosed
from pyflank.gdbstub.target import TARGET_XML, decode, encode
from pyflank.intel_x64.register_set import REGISTERS

if TYPE_CHECKING:
    from collections.abc import Iterable

log = logging.getLogger("pyflank.gdbstub")
SIGINT, SIGTRAP = 2, 5
_CALL_TIMEOUT = 30.0
_WATCH_KINDS = {2: WatchKind.WRITE, 3: WatchKind.READ, 4: WatchKind.ACCESS}
_STOP_WORDS = {
    StopCause.BREAKPOINT: "swbreak:;",
    StopCause.HARDWARE_BREAKPOINT: "hwbreak:;",
}
DETACH: Final = object()  # the session ends (``D``, ``k``)
Reply = str | bytes | object | None  # a payload, DETACH, or None: a stop reply follows
_SUPPORTED = (
    "PacketSize=20000;qXfer:features:read+;QStartNoAckMode+;swbreak+;hwbreak+;"
    "vContSupported+"
)


def loopback(spec: int | str) -> tuple[str, int]:
    """(host, port) of a stub address: a port (the loopback), ``HOST:PORT`` or ``:PORT``.
    ``ValueError`` for a host that is not the loopback: the stub gives whoever connects
    the whole guest."""
    host, port_text = "127.0.0.1", str(spec)
    if isinstance(spec, str) and ":" in spec:
        host, _, port_text = spec.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"gdb stub address {spec!r}: the port is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"gdb stub address {spec!r}: port {port} is out of range")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except socket.gaierror as exc:
        raise ValueError(f"gdb stub address {spec!r}: {exc}") from None
    if not all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses):
        raise ValueError(
            f"gdb stub address {spec!r}: {host} is not a loopback address (the stub listens "
            "on 127.0.0.1 or ::1 only: whoever connects controls the guest)"
        )
    return str(sorted(addresses, key=str)[0]), port


class GdbStub:
    """The stub of one Vm: listening from its creation, serving from ``start()``."""

    def __init__(self, address: tuple[str, int], *, wait: bool = True) -> None:
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
        self._current = 0  # the thread g, p, m ... work on (Hg)
        self._last_reply = ""
        self._closing = threading.Event()
        self._running = False  # gdb waits for a stop reply
        self._end_reported = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
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
        live = self._live()
        self._current = live[0].vcpuid if live else 0
        self._last_reply = self._stop_reply(live[0], None, SIGTRAP) if live else "W00"
        while not self._closing.is_set():
            packet = conn.read(timeout=0.2)
            if packet is None:
                continue
            if packet == INTERRUPT:
                continue  # already stopped
            text = packet.decode("latin-1")
            log.debug("gdb -> %s", text)
            reply = self._handle(text)
            if reply is None:
                continue  # a resume: its stop reply was sent
            if reply is DETACH:
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
        for parking in self._live():
            if parking.stopped is not None:
                with contextlib.suppress(ParkingClosed, TimeoutError):
                    parking.call(lambda _, p=parking: p.debug.clear_all(), _CALL_TIMEOUT)  # type: ignore[misc]
                parking.resume()
        self._pending.clear()

    # -- packets --------------------------------------------------------------------------
    def _handle(self, text: str) -> Reply:
        handler = _COMMANDS.get(text[:1])
        if handler is not None:
            reply: Reply = handler(self, text[1:])
            return reply
        return self._query(text)

    def _query(self, text: str) -> Reply:
        if text.startswith("qSupported"):
            return _SUPPORTED
        if text.startswith("QStartNoAckMode"):
            return "OK"
        if text.startswith("qXfer:features:read:target.xml:"):
            offset, length = (int(x, 16) for x in text.rsplit(":", 1)[1].split(","))
            chunk = TARGET_XML[offset : offset + length]
            more = offset + length < len(TARGET_XML)
            return (b"m" if more else b"l") + chunk
        if text == "qfThreadInfo":
            return "m" + ",".join(f"{p.vcpuid + 1:x}" for p in self._live())
        if text == "qsThreadInfo":
            return "l"
        if text == "qC":
            return f"QC{self._current + 1:x}"
        if text == "qAttached":
            return "1"
        if text.startswith("qThreadExtraInfo,"):
            return self._thread_info(int(text.split(",")[1], 16) - 1).encode().hex()
        if text.startswith("qRcmd,"):
            return self._monitor(bytes.fromhex(text[6:]).decode(errors="replace"))
        if text == "vCont?":
            return "vCont;c;C;s;S;t"
        if text.startswith("vCont;"):
            self._vcont(text[6:])
            return None
        if text.startswith("vKill"):
            return self._kill()
        return ""  # not supported: gdb does without

    def _cmd_stop_reason(self, _: str) -> str:
        return self._last_reply

    def _cmd_thread(self, text: str) -> str:
        if text[:1] in "gc":
            tid = int(text[1:], 16)
            if tid > 0:
                if tid - 1 not in self.vcpus or self.vcpus[tid - 1].ended:
                    return "E01"
                if text[0] == "g":
                    self._current = tid - 1
            return "OK"
        return ""

    def _cmd_alive(self, text: str) -> str:
        parking = self.vcpus.get(int(text, 16) - 1)
        return "OK" if parking is not None and not parking.ended else "E01"

    def _cmd_read_registers(self, _: str) -> str:
        def read_all(view: RegisterView) -> str:
            return "".join(encode(r, _value(view, r.name)) for r in REGISTERS)

        return self._on_current(read_all)

    def _cmd_write_registers(self, text: str) -> str:
        def write_all(view: RegisterView) -> str:
            offset = 0
            for register in REGISTERS:
                size = register.bits // 4
                chunk = text[offset : offset + size]
                offset += size
                if not chunk or "x" in chunk:
                    continue
                value = decode(register, chunk)
                if value != _value(view, register.name):
                    view.write(register.name, value)
            return "OK"

        return self._on_current(write_all)

    def _cmd_read_register(self, text: str) -> str:
        number = int(text, 16)
        if number >= len(REGISTERS):
            return "E01"
        register = REGISTERS[number]
        return self._on_current(lambda view: encode(register, _value(view, register.name)))

    def _cmd_write_register(self, text: str) -> str:
        number_text, _, value_text = text.partition("=")
        number = int(number_text, 16)
        if number >= len(REGISTERS):
            return "E01"
        register = REGISTERS[number]
        value = decode(register, value_text)

        def write(view: RegisterView) -> str:
            view.write(register.name, value)
            return "OK"

        return self._on_current(write)

    def _cmd_read_memory(self, text: str) -> str:
        address_text, _, length_text = text.partition(",")
        address, length = int(address_text, 16), min(int(length_text, 16), 0x8000)
        physical = self.physical

        def read(view: RegisterView) -> str:
            data = read_memory(view, address, length, physical=physical)
            return data.hex() if data else "E14"

        return self._on_current(read)

    def _cmd_write_memory(self, text: str) -> str:
        where, _, data_text = text.partition(":")
        address = int(where.split(",")[0], 16)
        data = bytes.fromhex(data_text)
        physical = self.physical

        def write(view: RegisterView) -> str:
            return "OK" if write_memory(view, address, data, physical=physical) else "E14"

        reply = self._on_current(write)
        if reply == "OK":
            for parking in self._live():
                parking.debug.memory_written()
        return reply

    def _cmd_insert(self, text: str) -> str:
        return self._breakpoint(text, insert=True)

    def _cmd_remove(self, text: str) -> str:
        return self._breakpoint(text, insert=False)

    def _breakpoint(self, text: str, *, insert: bool) -> str:
        kind_text, address_text, length_text = text.split(";")[0].split(",")[:3]
        kind, address, length = int(kind_text), int(address_text, 16), int(length_text, 16)
        if kind not in (0, 1) and kind not in _WATCH_KINDS:
            return ""

        def change(debug: Any) -> None:
            if kind in (0, 1) and insert:
                debug.set_breakpoint(address, hardware=kind == 1)
            elif kind in (0, 1):
                debug.clear_breakpoint(address)
            elif insert:
                debug.set_watchpoint(_WATCH_KINDS[kind], address, length)
            else:
                debug.clear_watchpoint(_WATCH_KINDS[kind], address, length)

        for parking in self._live():
            parking.call(lambda _, p=parking: change(p.debug), _CALL_TIMEOUT)  # type: ignore[misc]
        return "OK"

    def _cmd_continue(self, _: str) -> None:
        return self._resume({None: "c"})

    def _cmd_continue_signal(self, _: str) -> None:
        return self._resume({None: "c"})

    def _cmd_step(self, _: str) -> None:
        return self._resume({self._current: "s"})

    def _cmd_detach(self, _: str) -> Reply:
        return DETACH

    def _cmd_kill(self, _: str) -> Reply:
        self._kill()
        return DETACH

    # -- running --------------------------------------------------------------------------
    def _vcont(self, text: str) -> None:
        actions: dict[int | None, str] = {}
        for part in text.split(";"):
            action, _, thread = part.partition(":")
            letter = action[:1].lower()
            if letter not in ("c", "s"):
                continue
            target = None if not thread or thread == "-1" else int(thread, 16) - 1
            actions.setdefault(target, letter)
        return self._resume(actions)

    def _resume(self, actions: dict[int | None, str]) -> None:
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
        for parking in self._live():
            letter = actions.get(parking.vcpuid, actions.get(None))
            if letter is not None and parking.stopped is not None:
                parking.resume(Resume(step=letter == "s"))
                resumed.append(parking)
        if not resumed:
            conn.send(self._last_reply)
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
                    live = self._live()
                    if live:
                        self._report(self._current_or(live), None, SIGINT)
                        return
                if self._closing.is_set():
                    return
                continue
            if stopped is None:
                if not self._live():
                    self._exited(conn)
                    return
                continue
            self._stop_all()
            self._collect_pending(parking)
            self._report(parking, stopped)
            return

    def _stop_all(self) -> None:
        """Park every vCPU that still runs (all-stop)."""
        live = self._live()
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
        self._current = parking.vcpuid
        if stopped is not None and stopped.why:
            log.debug("gdb <- O %s", stopped.why)
            conn.send("O" + (stopped.why + "\n").encode().hex())
        self._last_reply = self._stop_reply(parking, stopped, signal)
        log.debug("gdb <- %s", self._last_reply)
        conn.send(self._last_reply)

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
        self._last_reply = "W00"
        conn.send("W00")
        self._end_reported.set()

    def _kill(self) -> str:
        for parking in self._live():
            self._stops[parking.vcpuid]()
        return "OK"

    # -- helpers --------------------------------------------------------------------------
    def _live(self) -> list[Parking]:
        return [p for _, p in sorted(self.vcpus.items()) if not p.ended]

    def _current_or(self, live: Iterable[Parking]) -> Parking:
        chosen = self.vcpus.get(self._current)
        if chosen is not None and not chosen.ended:
            return chosen
        return next(iter(live))

    def _on_current(self, fn: Callable[[RegisterView], str]) -> str:
        parking = self.vcpus.get(self._current)
        if parking is None or parking.ended:
            return "E01"
        try:
            return parking.call(fn, _CALL_TIMEOUT)
        except (ParkingClosed, TimeoutError):
            return "E01"
        except (PermissionError, ValueError, KeyError) as exc:
            log.info("gdb request refused: %s", exc)
            return "E01"

    def _thread_info(self, vcpuid: int) -> str:
        parking = self.vcpus.get(vcpuid)
        if parking is None:
            return f"vCPU {vcpuid}: none"
        if parking.ended:
            return f"vCPU {vcpuid}: {self.endings.get(vcpuid, 'stopped')}"
        stopped = parking.stopped
        where = "running" if stopped is None else f"stopped ({stopped.point.value})"
        return f"vCPU {vcpuid}, {where}"

    def _monitor(self, command: str) -> str:
        conn = self._conn
        assert conn is not None
        output = monitor.run(self, command)
        if output:
            conn.send("O" + output.encode().hex())
        return "OK"


def _value(view: RegisterView, name: str) -> int | None:
    try:
        return view.read(name)
    except (KeyError, ValueError):
        return None


_COMMANDS: dict[str, Callable[[GdbStub, str], Any]] = {
    "?": GdbStub._cmd_stop_reason,
    "H": GdbStub._cmd_thread,
    "T": GdbStub._cmd_alive,
    "g": GdbStub._cmd_read_registers,
    "G": GdbStub._cmd_write_registers,
    "p": GdbStub._cmd_read_register,
    "P": GdbStub._cmd_write_register,
    "m": GdbStub._cmd_read_memory,
    "M": GdbStub._cmd_write_memory,
    "Z": GdbStub._cmd_insert,
    "z": GdbStub._cmd_remove,
    "c": GdbStub._cmd_continue,
    "C": GdbStub._cmd_continue_signal,
    "s": GdbStub._cmd_step,
    "S": GdbStub._cmd_step,
    "D": GdbStub._cmd_detach,
    "k": GdbStub._cmd_kill,
}
