"""bfm <-> VMM service messages: one JSON object per line over a Unix socket.

Both ends check who is on the other end (``SO_PEERCRED``): the service answers only its
own user, and bfm talks only to a service of its own user.  Messages are standard JSON
(no NaN or Infinity), bounded in size and nesting.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import IO, Any

# 32 pages in and out, base64-encoded, plus room for the envelope.
MAX_MESSAGE = 1 << 20
CONNECT_TIMEOUT = 5.0  # a burst of clients waits this long for the service to accept
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ProtocolError(Exception):
    """The peer sent something that is not a message, or went away."""


class PeerRefused(ProtocolError):
    """The process on the other end of the socket is not one to talk to."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not standard JSON")


def loads(data: bytes | str) -> Any:
    """Standard JSON only; every failure (syntax, NaN, nesting, bad UTF-8) a ValueError."""
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def dumps(value: Any) -> str:
    # ASCII on the wire: every string survives, lone surrogates included.
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process on the other end of a connected Unix socket."""
    pid, uid, _gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return pid, uid


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(dumps(message).encode("ascii") + b"\n")


def receive_message(stream: IO[bytes] | io.BufferedIOBase) -> dict[str, Any]:
    """One message from a binary file object made by ``socket.makefile('rb')``."""
    line = stream.readline(MAX_MESSAGE + 1)
    if not line:
        raise ProtocolError("connection closed")
    if len(line) > MAX_MESSAGE:
        raise ProtocolError("message too large")
    try:
        message = loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not a JSON message: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A blocking connect, bounded by SO_SNDTIMEO: a full accept queue makes it wait,
        # where a non-blocking one (what settimeout gives) fails at once with EAGAIN.
        seconds = min(timeout, CONNECT_TIMEOUT)
        timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        sock.connect(os.fspath(path))
        sock.settimeout(timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def call(
    path: Path, message: dict[str, Any], timeout: float = 30.0, *, server_pid: int | None = None
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
    path: Path, message: dict[str, Any], timeout: float, server_pid: int | None
) -> dict[str, Any]:
    try:
        sock = _connect(path, timeout)
    except BlockingIOError:
        raise ProtocolError("the VMM is too busy to accept a connection: try again") from None
    except OSError as exc:
        raise ProtocolError(f"cannot reach the VMM: {exc.strerror or exc}") from None
    with sock:
        pid, uid = peer_credentials(sock)
        if uid != os.getuid():
            raise PeerRefused(f"{path} is served by uid {uid}, not by you: refusing it")
        if server_pid is not None and pid != server_pid:
            raise PeerRefused(f"{path} is served by pid {pid}, not the VMM service {server_pid}")
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                send_message(sock, message)  # a refusal may have closed it: read that
            with sock.makefile("rb") as stream:
                return receive_message(stream)
        except TimeoutError:
            raise ProtocolError("the VMM did not answer in time") from None
        except OSError as exc:
            raise ProtocolError(f"the VMM went away: {exc.strerror or exc}") from None
