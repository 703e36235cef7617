"""The VMM service's socket server: who may connect, how many at once, for how long.

One thread serves every connection through a selector -- never a thread per connection.
It accepts, reads and parses requests and hands each to the service; whoever settles a
request sends its reply straight to the client: the server thread for a control message,
the vCPU thread that ran a vmcall (so no other thread wakes up in between).  Only a
reply the socket cannot take at once is finished by the server thread.

Two kinds of connection:

- a JSON line (``ping``, ``dump``, ``stop``, or a vmcall in JSON) gets one reply, then
  the connection is closed;
- a connection that starts with a vmcall frame (``cli.wire``) stays open for as many
  vmcalls as its client sends, one at a time.

A peer of another user is refused; past ``MAX_CONNECTIONS`` open connections a new one
gets a one-line refusal at once; a connection that sends no complete request within
``READ_TIMEOUT`` seconds of being accepted (or of its last reply) is closed -- told so in
one line if it never sent a request; every malformed message gets a one-line error;
running out of file descriptors pauses accepting instead of spinning.  Errors are
logged as one line each.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from pyflank.cli import wire
from pyflank.cli.connection import peer_credentials
from pyflank.cli.protocol import MAX_MESSAGE, ProtocolError, dumps, parse_message

log = logging.getLogger("pyflank.service")

MAX_CONNECTIONS = 64
READ_TIMEOUT = 5.0
ACCEPT_BACKOFF = 0.1  # seconds the accept loop rests when the process is out of descriptors
SWEEP_INTERVAL = 0.1  # how often idle connections and overdue vmcalls are looked for
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RECEIVE = 256 * 1024
_MAX_PENDING_INPUT = wire.HEADER.size + wire.MAX_PAYLOAD + MAX_MESSAGE  # read ahead, at most


def error_reply(text: str, **extra: Any) -> dict[str, Any]:
    """The reply to a request that failed: one line saying why."""
    return {"ok": False, "error": " ".join(text.split()), **extra}


class Service(Protocol):
    """What the server hands requests to; each must be answered through ``reply`` once
    (now, or later from any thread)."""

    def message(self, request: dict[str, Any], reply: Reply) -> None: ...

    def vmcall(self, frame: wire.Frame, reply: Reply) -> None: ...


class Reply:
    """The one reply to one request, from whichever thread settles it."""

    __slots__ = ("_connection", "_server")

    def __init__(self, server: ServiceServer, connection: _Connection) -> None:
        self._server = server
        self._connection = connection

    def json(self, message: dict[str, Any]) -> None:
        self.send(dumps(message).encode("ascii") + b"\n")

    def frame(self, data: bytes) -> None:
        self.send(data)

    def send(self, data: bytes) -> None:
        self._server._send(self._connection, data)

    def expire(self, seconds: float, overdue: Callable[[], None]) -> None:
        """Call ``overdue`` on the server thread if no reply is sent within ``seconds``."""
        self._connection.overdue = (time.monotonic() + seconds, overdue)


class _Connection:
    __slots__ = (
        "broken",
        "busy",
        "closed",
        "frames",
        "idle_since",
        "inbox",
        "lock",
        "mask",
        "one_shot",
        "outbox",
        "overdue",
        "peer_done",
        "served",
        "sock",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()  # busy, inbox, outbox and closed, between threads
        self.inbox = bytearray()  # read, not yet parsed
        self.outbox = bytearray()  # reply bytes the socket did not take at once
        self.busy = False  # a request is being answered
        self.one_shot = False  # a JSON request: close once its reply is out
        self.frames = False  # it speaks vmcall frames
        self.served = 0
        self.peer_done = False  # the client closed its side
        self.broken = False  # a send failed: the client is gone
        self.closed = False
        self.idle_since = time.monotonic()
        self.overdue: tuple[float, Callable[[], None]] | None = None
        self.mask = selectors.EVENT_READ


class ServiceServer:
    """Serves ``service`` on the Unix socket ``path`` until ``shutdown``."""

    def __init__(
        self,
        path: str,
        service: Service,
        read_timeout: float = READ_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.service = service
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(path)
            self._listener.listen(1024)  # bursts of clients queue in the kernel, not fail
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            raise
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        self._connections: set[_Connection] = set()
        self._handed_back: deque[_Connection] = deque()
        self._woken = False
        self._stopping = False
        self._resume_accept = 0.0  # while out of descriptors: when to try again
        self._next_sweep = 0.0
        self._thread = 0  # the serving thread's ident

    @property
    def connections(self) -> int:
        """How many connections are open."""
        return len(self._connections)

    # -- the loop ---------------------------------------------------------------------
    def serve_forever(self) -> None:
        self._thread = threading.get_ident()
        while not self._stopping:
            now = time.monotonic()
            timeout = None
            if self._connections or self._resume_accept:
                timeout = max(0.0, min(self._next_sweep, self._resume_accept or now + 1) - now)
            for key, events in self._selector.select(timeout):
                if key.data is None:
                    self._accept()
                elif key.data is self._wake_r:
                    self._drain_wake()
                else:
                    self._guarded(self._ready, key.data, events)
            self._take_back()
            now = time.monotonic()
            if self._resume_accept and now >= self._resume_accept:
                self._resume_accept = 0.0
                self._selector.register(self._listener, selectors.EVENT_READ, None)
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_INTERVAL
                for connection in list(self._connections):
                    self._guarded(self._sweep, connection, now)
                self._take_back()

    def _guarded(
        self, work: Callable[[_Connection, Any], None], connection: _Connection, argument: Any
    ) -> None:
        """``work`` on one connection; a failure closes that connection, never the loop."""
        try:
            work(connection, argument)
        except Exception as exc:  # noqa: BLE001 - one connection's failure, not the service's
            log.error("connection failed: %s: %s", type(exc).__name__, exc)
            self._close(connection)

    def shutdown(self) -> None:
        """Make ``serve_forever`` return (from any thread)."""
        self._stopping = True
        self._wake()

    def server_close(self) -> None:
        for connection in list(self._connections):
            self._close(connection)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._listener)
        self._listener.close()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"!")

    def _drain_wake(self) -> None:
        self._woken = False
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass

    # -- accepting --------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(64):  # then serve the others before accepting more
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    log.warning("accept: %s: pausing %.1f s", exc.strerror, ACCEPT_BACKOFF)
                    self._selector.unregister(self._listener)
                    self._resume_accept = time.monotonic() + ACCEPT_BACKOFF
                else:
                    log.error("accept: %s", exc.strerror or exc)
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)  # the server thread never waits on a client
        try:
            _, uid = peer_credentials(sock)
        except OSError:
            sock.close()
            return
        if uid != os.getuid():
            self._refuse(sock, error_reply("this VMM serves only its own user"))
        elif len(self._connections) >= self.max_connections:
            text = f"the VMM is serving {self.max_connections} connections: try again"
            self._refuse(sock, error_reply(text, busy=True))
        else:
            connection = _Connection(sock)
            self._connections.add(connection)
            self._selector.register(sock, selectors.EVENT_READ, connection)

    @staticmethod
    def _refuse(sock: socket.socket, reply: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            sock.send(dumps(reply).encode("ascii") + b"\n")
        sock.close()

    # -- reading and parsing (server thread) --------------------------------------------
    def _ready(self, connection: _Connection, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush(connection)
        if events & selectors.EVENT_READ and not connection.closed:
            self._read(connection)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(_RECEIVE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
            connection.broken = True
        with connection.lock:
            if data:
                connection.inbox += data
                if len(connection.inbox) > _MAX_PENDING_INPUT:  # read ahead enough: wait
                    self._watch(connection, read=False)
            else:
                connection.peer_done = True
                self._watch(connection, read=False)  # an end of file stays readable
            parse = not connection.busy
        if parse:
            self._next_request(connection)

    def _next_request(self, connection: _Connection) -> None:
        """Start on the next complete request in the connection's input, if there is one."""
        inbox = connection.inbox
        if connection.broken:
            self._close(connection)
            return
        if inbox[:1] == wire.MAGIC[:1] and wire.MAGIC.startswith(bytes(inbox[:4])):
            self._next_frame(connection)
            return
        if not inbox:
            if connection.peer_done:
                self._close(connection)
            return
        end = inbox.find(b"\n", 0, MAX_MESSAGE + 1)
        if end < 0 and len(inbox) <= MAX_MESSAGE and not connection.peer_done:
            return  # not a whole line yet
        line_end = len(inbox) if end < 0 else end + 1
        line = bytes(inbox[:line_end])
        del inbox[:line_end]
        connection.one_shot = True
        try:
            request = parse_message(line)
        except ProtocolError as exc:
            self._start(connection)
            Reply(self, connection).json(error_reply(str(exc)))
            return
        self._start(connection)
        try:
            self.service.message(request, Reply(self, connection))
        except Exception as exc:  # noqa: BLE001 - a bad request must not end the service
            log.error("request %.80r failed: %s: %s", request, type(exc).__name__, exc)
            Reply(self, connection).json(
                error_reply(f"the VMM could not carry out the request: {exc}")
            )

    def _next_frame(self, connection: _Connection) -> None:
        inbox = connection.inbox
        try:
            if len(inbox) < wire.HEADER.size:
                if connection.peer_done:
                    raise wire.FrameError("the vmcall frame ends early")
                return
            frame, length = wire.decode_header(inbox[: wire.HEADER.size])
            if frame.kind != wire.REQUEST:
                raise wire.FrameError("a client sends vmcall requests only")
            if len(inbox) < wire.HEADER.size + length:
                if connection.peer_done:
                    raise wire.FrameError("the vmcall frame ends early")
                return
        except wire.FrameError as exc:
            connection.one_shot = True  # its framing cannot be trusted any more
            self._start(connection)
            Reply(self, connection).frame(wire.refusal(str(exc)))
            return
        frame.payload = bytes(inbox[wire.HEADER.size : wire.HEADER.size + length])
        del inbox[: wire.HEADER.size + length]
        connection.frames = True
        self._start(connection)
        try:
            self.service.vmcall(frame, Reply(self, connection))
        except Exception as exc:  # noqa: BLE001 - a bad request must not end the service
            log.error("vmcall failed: %s: %s", type(exc).__name__, exc)
            Reply(self, connection).frame(
                wire.refusal(f"the VMM could not carry out the vmcall: {exc}", frame.cpuid)
            )

    @staticmethod
    def _start(connection: _Connection) -> None:
        with connection.lock:
            connection.busy = True

    # -- replying (any thread) --------------------------------------------------------
    def _send(self, connection: _Connection, data: bytes) -> None:
        with connection.lock:
            if connection.closed or not connection.busy:
                return  # the client is gone, or this request was answered already
            connection.busy = False
            connection.overdue = None
            connection.served += 1
            connection.idle_since = time.monotonic()
            if connection.outbox:
                connection.outbox += data
            else:
                try:
                    sent = connection.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    sent = len(data)
                    connection.broken = True
                if sent < len(data):
                    connection.outbox += memoryview(data)[sent:]
            settled = not (
                connection.outbox
                or connection.one_shot
                or connection.broken
                or connection.inbox
                or connection.peer_done
                or not connection.mask & selectors.EVENT_READ
            )
        if not settled:  # the server thread has something to finish
            self._handed_back.append(connection)
            if threading.get_ident() != self._thread:
                self._wake()

    def _take_back(self) -> None:
        # A loop, not recursion: a reply given on this thread queues its connection here,
        # so a client's pipeline of requests answered at once never deepens the stack.
        while self._handed_back:
            self._guarded(
                lambda connection, _: self._finish(connection), self._handed_back.popleft(), None
            )

    def _finish(self, connection: _Connection) -> None:
        """After a reply: write what is left, close a one-shot connection, start the next
        request."""
        if connection.closed:
            return
        with connection.lock:
            waiting = bool(connection.outbox)
            done = not connection.busy
        if connection.broken:
            self._close(connection)
        elif waiting:
            self._watch(connection, write=True)
        elif done and connection.one_shot:
            self._close(connection)
        elif done:
            if len(connection.inbox) <= _MAX_PENDING_INPUT and not connection.peer_done:
                self._watch(connection, read=True)
            self._next_request(connection)

    def _flush(self, connection: _Connection) -> None:
        with connection.lock:
            try:
                sent = connection.sock.send(connection.outbox)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                sent = len(connection.outbox)
                connection.broken = True
            del connection.outbox[:sent]
            waiting = bool(connection.outbox)
        if not waiting:
            self._watch(connection, write=False)
            self._finish(connection)

    def _watch(self, connection: _Connection, **events: bool) -> None:
        """Change which events the selector reports for ``connection`` (server thread)."""
        mask = connection.mask
        for name, bit in (("read", selectors.EVENT_READ), ("write", selectors.EVENT_WRITE)):
            if name in events:
                mask = mask | bit if events[name] else mask & ~bit
        if mask == connection.mask or connection.closed:
            return
        if connection.mask and mask:
            self._selector.modify(connection.sock, mask, connection)
        elif mask:
            self._selector.register(connection.sock, mask, connection)
        else:
            self._selector.unregister(connection.sock)
        connection.mask = mask

    # -- time-outs (server thread) ------------------------------------------------------
    def _sweep(self, connection: _Connection, now: float) -> None:
        overdue = connection.overdue
        if overdue is not None and now >= overdue[0]:
            connection.overdue = None
            overdue[1]()
        with connection.lock:
            idle = not connection.busy and not connection.outbox
            expired = idle and now - connection.idle_since >= self.read_timeout
            told = connection.served == 0 and not connection.frames
        if expired:
            if told:  # it never asked anything: say why it is closed
                text = f"no request within {self.read_timeout:g} s"
                connection.one_shot = True
                self._start(connection)
                Reply(self, connection).json(error_reply(text))
            else:
                self._close(connection)

    def _close(self, connection: _Connection) -> None:
        with connection.lock:
            if connection.closed:
                return
            connection.closed = True
        if connection.mask:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(connection.sock)
            connection.mask = 0
        self._connections.discard(connection)
        with contextlib.suppress(OSError):
            connection.sock.close()
