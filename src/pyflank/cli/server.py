"""The VMM service's socket server: who may connect, how many at once, for how long.

Each connection carries one request and one reply.  A peer of another user is refused;
past ``MAX_CONNECTIONS`` a connection gets a one-line refusal at once; a client that
sends nothing for ``READ_TIMEOUT`` seconds is answered and closed; every malformed
message gets a one-line error reply; running out of file descriptors slows the accept
loop down instead of spinning it.  Errors are logged as one line each.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pyflank.cli import protocol

log = logging.getLogger("pyflank.service")

MAX_CONNECTIONS = 64
READ_TIMEOUT = 5.0
ACCEPT_BACKOFF = 0.1  # seconds the accept loop rests when the process is out of descriptors
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

Answer = Callable[[dict[str, Any]], dict[str, Any]]


def error_reply(text: str, **extra: Any) -> dict[str, Any]:
    """The reply to a request that failed: one line saying why."""
    return {"ok": False, "error": " ".join(text.split()), **extra}


class ServiceServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 1024  # bursts of clients queue in the kernel, not fail
    block_on_close = False

    def __init__(self, path: str, answer: Answer, read_timeout: float = READ_TIMEOUT) -> None:
        self.answer = answer
        self.read_timeout = read_timeout
        self._free = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(path, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:
                log.warning("accept: %s: pausing %.1f s", exc.strerror, ACCEPT_BACKOFF)
                time.sleep(ACCEPT_BACKOFF)
            raise

    def verify_request(self, request: Any, client_address: Any) -> bool:
        _, uid = protocol.peer_credentials(request)
        if uid != os.getuid():
            self._refuse(request, "this VMM serves only its own user")
            return False
        if not self._free.acquire(blocking=False):
            self._refuse(
                request, f"the VMM is serving {MAX_CONNECTIONS} connections: try again", busy=True
            )
            return False
        return True

    @staticmethod
    def _refuse(request: socket.socket, text: str, **extra: Any) -> None:
        with contextlib.suppress(OSError):
            request.setblocking(False)  # the accept loop never waits on a client
            request.send(protocol.dumps(error_reply(text, **extra)).encode("ascii") + b"\n")

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._free.release()  # no thread will release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._free.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        kind, value, _ = sys.exc_info()
        log.error("connection failed: %s: %s", kind.__name__ if kind else "?", value)


class _Handler(socketserver.StreamRequestHandler):
    server: ServiceServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.read_timeout)

    def handle(self) -> None:
        try:
            request = protocol.receive_message(self.rfile)
        except TimeoutError:
            reply = error_reply(f"no request within {self.server.read_timeout:g} s")
        except protocol.ProtocolError as exc:
            reply = error_reply(str(exc))
        else:
            try:
                reply = self.server.answer(request)
            except Exception as exc:  # noqa: BLE001 - a bad request must not end the service
                log.error("request %.80r failed: %s: %s", request, type(exc).__name__, exc)
                reply = error_reply(f"the VMM could not carry out the request: {exc}")
        with contextlib.suppress(OSError, ValueError):
            protocol.send_message(self.connection, reply)
