"""bfm <-> VMM service messages: one JSON object per line over a Unix socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

# 32 pages in and out, base64-encoded, plus room for the envelope.
MAX_MESSAGE = 1 << 20


class ProtocolError(Exception):
    """The peer sent something that is not a message, or went away."""


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")


def receive_message(stream: Any) -> dict[str, Any]:
    """One message from a binary file object made by ``socket.makefile('rb')``."""
    line = stream.readline(MAX_MESSAGE + 1)
    if not line:
        raise ProtocolError("connection closed")
    if len(line) > MAX_MESSAGE:
        raise ProtocolError("message too large")
    try:
        message = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not a JSON message: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def call(path: Path, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the service at ``path`` and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            send_message(sock, message)
            with sock.makefile("rb") as stream:
                return receive_message(stream)
        except TimeoutError:
            raise ProtocolError("the VMM did not answer in time") from None
        except OSError as exc:
            raise ProtocolError(f"cannot reach the VMM: {exc.strerror or exc}") from None
