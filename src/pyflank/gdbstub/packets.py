"""The gdb remote serial protocol's framing: ``$payload#checksum`` packets over a socket,
acknowledged with ``+``/``-`` until the debugger asks for no-ack mode, and the lone
0x03 byte with which it interrupts a running target.

Outgoing payloads escape ``#``, ``$``, ``}`` and ``*`` (``}`` and the byte XOR 0x20), so
binary replies (``qXfer``) travel unchanged.  A packet whose checksum is wrong is refused
with ``-`` and dropped: the debugger sends it again.
"""

from __future__ import annotations

import contextlib
import select
import socket
from typing import Final

INTERRUPT: Final = b"\x03"
_ESCAPED = frozenset(b"#$}*")
_MAX_PACKET = 1 << 20


class ConnectionClosed(Exception):
    """The debugger went away."""


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def escape(payload: bytes) -> bytes:
    if not _ESCAPED.intersection(payload):
        return payload
    out = bytearray()
    for byte in payload:
        if byte in _ESCAPED:
            out += bytes((0x7D, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def frame(payload: bytes) -> bytes:
    body = escape(payload)
    return b"$" + body + b"#" + f"{checksum(body):02x}".encode()


class Connection:
    """One debugger's connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.acknowledge = True
        self._buffer = bytearray()
        self._last = b""

    def send(self, payload: bytes | str) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self._last = frame(data)
        self._write(self._last)

    def read(self, timeout: float | None = None) -> bytes | None:
        """The next packet's payload, ``INTERRUPT``, or None when ``timeout`` passed."""
        while True:
            item = self._take()
            if item is not None:
                return item
            if not self._fill(timeout):
                return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _take(self) -> bytes | None:
        buffer = self._buffer
        while buffer:
            first = buffer[0]
            if first == 0x03:
                del buffer[0]
                return INTERRUPT
            if first == ord("-"):
                del buffer[0]
                if self._last:
                    self._write(self._last)
                continue
            if first != ord("$"):
                del buffer[0]  # '+' and noise between packets
                continue
            end = buffer.find(b"#")
            if end < 0 or len(buffer) < end + 3:
                if len(buffer) > _MAX_PACKET:
                    raise ConnectionClosed("a packet longer than the stub takes")
                return None
            body = bytes(buffer[1:end])
            sent = bytes(buffer[end + 1 : end + 3])
            del buffer[: end + 3]
            try:
                good = int(sent, 16) == checksum(body)
            except ValueError:
                good = False
            if self.acknowledge:
                self._write(b"+" if good else b"-")
            if good:
                return body
        return None

    def _fill(self, timeout: float | None) -> bool:
        try:
            readable, _, _ = select.select([self.sock], [], [], timeout)
        except (OSError, ValueError) as exc:  # closed under us: the run is over
            raise ConnectionClosed(str(exc)) from exc
        if not readable:
            return False
        try:
            data = self.sock.recv(65536)
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from exc
        if not data:
            raise ConnectionClosed("the debugger closed the connection")
        self._buffer += data
        return True

    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from exc
