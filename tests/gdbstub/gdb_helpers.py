"""Addresses in a small guest, and a bare client of the remote protocol for what a batch
gdb cannot do (interrupting a running guest)."""

from __future__ import annotations

import socket

import iced_x86

from pyflank.gdbstub.packets import checksum, frame
from pyflank.platform.assemble import assemble

LOAD = 0x100000


def instruction_addresses(source: str, base: int = LOAD) -> list[int]:
    """The address of each instruction of ``source`` assembled at ``base``."""
    code = assemble(source, base)
    return [ins.ip for ins in iced_x86.Decoder(64, code, ip=base)]


class Client:
    """A debugger of our own: packets in, payloads out (acknowledged as gdb does)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buffer = b""

    def send(self, payload: str) -> None:
        self.sock.sendall(frame(payload.encode()))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> str:
        """The next packet's payload (acks and notifications before it skipped)."""
        while True:
            start = self.buffer.find(b"$")
            end = self.buffer.find(b"#", start)
            if start >= 0 and end >= 0 and len(self.buffer) >= end + 3:
                body = self.buffer[start + 1 : end]
                assert int(self.buffer[end + 1 : end + 3], 16) == checksum(body)
                self.buffer = self.buffer[end + 3 :]
                self.sock.sendall(b"+")
                return body.decode("latin-1")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the stub closed the connection")
            self.buffer += data

    def ask(self, payload: str) -> str:
        self.send(payload)
        return self.receive()

    def close(self) -> None:
        self.sock.close()
