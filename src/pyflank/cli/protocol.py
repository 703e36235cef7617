"""bfm <-> VMM service control messages: one JSON object per line, one per connection.

Both ends check who is on the other end (``SO_PEERCRED``, ``cli.connection``).  Messages
are standard JSON (no NaN or Infinity), bounded in size and nesting.  Vmcalls travel as
frames on a persistent connection instead (``cli.wire``, ``cli.client``).
"""

from __future__ import annotations

import contextlib
import io
import socket
import time
from pathlib import Path
from typing import IO, Any

from pyflank.cli.connection import CONNECT_TIMEOUT, check_peer, connect, peer_credentials
from pyflank.cli.errors import PeerRefused, ProtocolError
from pyflank.cli.json_text import dumps, loads

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_MESSAGE",
    "PeerRefused",
    "ProtocolError",
    "call",
    "dumps",
    "loads",
    "parse_message",
    "peer_credentials",
    "receive_message",
    "send_message",
]

# 32 pages in and out, base64-encoded, plus room for the envelope.
MAX_MESSAGE = 1 << 20


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(dumps(message).encode("ascii") + b"\n")


def parse_message(line: bytes) -> dict[str, Any]:
    """The message a line holds (``ProtocolError`` if it is none)."""
    if len(line) > MAX_MESSAGE:
        raise ProtocolError("message too large")
    try:
        message = loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not a JSON message: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def receive_message(stream: IO[bytes] | io.BufferedIOBase) -> dict[str, Any]:
    """One message from a binary file object made by ``socket.makefile('rb')``."""
    line = stream.readline(MAX_MESSAGE + 1)
    if not line:
        raise ProtocolError("connection closed")
    return parse_message(line)


def call(
    path: Path | str,
    message: dict[str, Any],
    timeout: float = 30.0,
    *,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Send one request to the service at ``path`` and return its reply.

    The service must run as this user (and be process ``server_pid``, when given).  A
    service at its connection limit refuses before reading the request: that is retried
    until ``timeout``, so a burst of clients is served in turn rather than failed.
    """
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        reply = _call_once(path, message, max(0.1, deadline - time.monotonic()), server_pid)
        if not reply.get("busy") or time.monotonic() + pause >= deadline:
            return reply
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _call_once(
    path: Path | str, message: dict[str, Any], timeout: float, server_pid: int | None
) -> dict[str, Any]:
    with connect(path, timeout, socket.socket) as sock:
        check_peer(sock, path, server_pid)
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                send_message(sock, message)  # a refusal may have closed it: read that
            with sock.makefile("rb") as stream:
                return receive_message(stream)
        except TimeoutError:
            raise ProtocolError("the VMM did not answer in time") from None
        except OSError as exc:
            raise ProtocolError(f"the VMM went away: {exc.strerror or exc}") from None
