"""The vmcall frame: one vmcall and its answer on a persistent connection to the service.

The service's control messages (ping, dump, stop) are JSON lines, one per connection.  A
vmcall is a binary frame instead, so that a client needs neither ``json`` nor ``base64``
(a ``bfm vmcall`` process imports only what it must) and a 128 KiB buffer travels as
itself.  A connection whose first message is a frame stays open for more frames.

Every frame starts with the same header (``HEADER``, little-endian)::

    magic "\\0bfm"  version  kind  cpuid  out_size  length  r00 ... r15

and ``length`` bytes follow it: the DATA input of a request (``REQUEST``), the used part
of the output buffer of an answer (``ANSWER``; ``out_size`` repeats the request's), or
the UTF-8 reason of a refusal (``REFUSAL``).  The magic starts with a NUL byte, which no
JSON message starts with.
"""

from __future__ import annotations

import struct

MAGIC = b"\0bfm"
VERSION = 1
REQUEST = 1  # client -> service: a vmcall
ANSWER = 2  # service -> client: the registers after it, the output it produced
REFUSAL = 3  # service -> client: why the vmcall was not (or not fully) carried out
SLOT_COUNT = 16
HEADER = struct.Struct(f"<4sBBHII{SLOT_COUNT}Q")
MAX_PAYLOAD = 32 * 4096  # the mailbox's buffers (VMCALL_IN/OUT_BUFFER_SIZE)
MAX_REASON = 64 * 1024


class FrameError(Exception):
    """Bytes that are not a frame of this version."""


class Frame:
    """One decoded frame: its kind, the vCPU, the output size, registers and payload."""

    __slots__ = ("cpuid", "kind", "out_size", "payload", "registers")

    def __init__(
        self, kind: int, cpuid: int, registers: tuple[int, ...], payload: bytes, out_size: int
    ) -> None:
        self.kind = kind
        self.cpuid = cpuid
        self.registers = registers
        self.payload = payload
        self.out_size = out_size

    @property
    def reason(self) -> str:
        """A refusal's text."""
        return self.payload.decode("utf-8", "replace")


def encode(
    kind: int,
    cpuid: int,
    registers: tuple[int, ...] | list[int],
    payload: bytes = b"",
    out_size: int = 0,
) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, cpuid, out_size, len(payload), *registers) + payload


def refusal(reason: str, cpuid: int = 0) -> bytes:
    text = " ".join(reason.split()).encode("utf-8", "backslashreplace")[:MAX_REASON]
    return encode(REFUSAL, cpuid, (0,) * SLOT_COUNT, text)


def decode_header(header: bytes | bytearray | memoryview) -> tuple[Frame, int]:
    """The frame a header starts (payload still empty) and how many payload bytes follow."""
    magic, version, kind, cpuid, out_size, length, *registers = HEADER.unpack(header)
    if magic != MAGIC:
        raise FrameError("not a vmcall frame")
    if version != VERSION:
        raise FrameError(f"vmcall frame version {version}: this VMM speaks version {VERSION}")
    if kind not in (REQUEST, ANSWER, REFUSAL):
        raise FrameError(f"unknown vmcall frame kind {kind}")
    limit = MAX_REASON if kind == REFUSAL else MAX_PAYLOAD
    if length > limit:
        raise FrameError(f"a vmcall frame of {length} bytes exceeds the {limit}-byte limit")
    return Frame(kind, cpuid, tuple(registers), b"", out_size), length
