"""Vmcalls to the VMM service: one frame each way on a persistent, verified connection.

A connection is opened only to the service the pid file names, after the same checks
``bfm status`` makes (a runtime directory nobody else can plant, a live process of this
user running the service for this directory, that process on the other end of the
socket), and then serves any number of vmcalls: one request and one answer each, no
status round trip first.  When no such service is there (``NotRunning``), the caller
asks ``bfm status`` why.  Idle connections are kept per runtime directory for the next
vmcall of this process; the service closes one that stays idle for its read timeout,
and a vmcall that finds its kept connection closed before it was read is sent again on
a fresh one.

Only the standard library's C modules and bfm's light modules are imported here:
a ``bfm vmcall`` process spends its time on the vmcall, not on imports.
"""

from __future__ import annotations

import _socket
import _thread
import time

from pyflank.cli import wire
from pyflank.cli.connection import check_peer, connect
from pyflank.cli.errors import ManagerError, ProtocolError
from pyflank.cli.service_process import read_record, why_not_our_service

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pyflank.cli.runtime import RuntimeDir

VMCALL_TIMEOUT = 60.0  # the service gives up on an agent after 30 s and says so
_KEEP = 4  # idle connections kept per runtime directory
_MAX_REFUSAL_LINE = 64 * 1024
_RECEIVE = 256 * 1024


class NotRunning(Exception):
    """No verified service to send a vmcall to; ``bfm status`` can tell the user why."""


class _Gone(Exception):
    """The connection closed before a byte of the answer came."""


class VmmConnection:
    """One verified connection to the service of ``rt``, for vmcall frames."""

    def __init__(self, rt: RuntimeDir, timeout: float = VMCALL_TIMEOUT) -> None:
        if not rt.exists():  # RuntimeDirError for a directory someone else could plant
            raise NotRunning(f"there is no runtime directory {rt.path}")
        record = read_record(rt)
        if record is None:
            raise NotRunning("no VMM service")
        why = why_not_our_service(rt, record)
        if why is not None:
            raise NotRunning(why)
        try:
            self._sock = connect(rt.socket, timeout, _socket.socket)
        except ProtocolError as exc:
            raise NotRunning(str(exc)) from None
        try:
            check_peer(self._sock, rt.socket, record.pid)  # before a byte is sent
        except BaseException:
            self._sock.close()
            raise
        self.rt = rt
        self.served = 0

    def close(self) -> None:
        self._sock.close()

    def vmcall(
        self, cpuid: int, registers: list[int], data: bytes, out_size: int
    ) -> tuple[tuple[int, ...], bytes] | dict[str, Any]:
        """The registers and output after the vmcall, or the service's JSON refusal of
        the connection (``{"busy": true, ...}`` when it is full).  ``_Gone`` if the
        connection was closed before the answer started."""
        request = wire.encode(wire.REQUEST, cpuid, registers, data, out_size)
        try:
            self._sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a refusal may have closed it: read that (or find it gone)
        except OSError as exc:
            raise ProtocolError(f"the VMM went away: {exc.strerror or exc}") from None
        try:
            return self._answer(cpuid)
        except TimeoutError:
            raise ProtocolError("the VMM did not answer in time") from None
        except OSError as exc:
            raise ProtocolError(f"the VMM went away: {exc.strerror or exc}") from None

    def _answer(self, cpuid: int) -> tuple[tuple[int, ...], bytes] | dict[str, Any]:
        try:
            data = self._sock.recv(_RECEIVE)  # usually the whole answer, in one call
        except ConnectionResetError:
            data = b""
        if not data:
            raise _Gone()
        if data[:1] == b"{":  # a JSON line: the service refused the connection itself
            return _refusal_line(self._more(data, lambda got: got.endswith(b"\n")))
        data = self._more(data, lambda got: len(got) >= wire.HEADER.size)
        try:
            frame, length = wire.decode_header(data[: wire.HEADER.size])
        except wire.FrameError as exc:
            raise ProtocolError(f"the VMM answered something else: {exc}") from None
        end = wire.HEADER.size + length
        data = self._more(data, lambda got: len(got) >= end)
        if len(data) != end:
            raise ProtocolError("the VMM answered more than it was asked")
        payload = data[wire.HEADER.size :]
        if frame.kind == wire.REFUSAL:
            raise ManagerError(payload.decode("utf-8", "replace"))
        if frame.kind != wire.ANSWER or frame.cpuid != cpuid:
            raise ProtocolError("the VMM answered another vmcall")
        self.served += 1
        return frame.registers, payload

    def _more(self, data: bytes, enough: Callable[[bytes], bool]) -> bytes:
        """``data`` and what follows it on the socket, until ``enough`` says so."""
        while not enough(data):
            if len(data) > wire.HEADER.size + wire.MAX_PAYLOAD + _MAX_REFUSAL_LINE:
                raise ProtocolError("the VMM answered too much")
            chunk = self._sock.recv(_RECEIVE)
            if not chunk:
                raise ProtocolError("the VMM closed the connection in mid-answer")
            data += chunk
        return data


def _refusal_line(line: bytes) -> dict[str, Any]:
    from pyflank.cli.json_text import loads  # noqa: PLC0415 - only refusals are JSON

    try:
        reply = loads(line)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("error"), str):
        raise ProtocolError("the VMM answered something else")
    return reply


_kept: dict[str, list[VmmConnection]] = {}
_kept_lock = _thread.allocate_lock()


def _take(rt: RuntimeDir) -> VmmConnection | None:
    with _kept_lock:
        idle = _kept.get(rt.path)
        return idle.pop() if idle else None


def _keep(connection: VmmConnection) -> None:
    with _kept_lock:
        idle = _kept.setdefault(connection.rt.path, [])
        if len(idle) < _KEEP:
            idle.append(connection)
            return
    connection.close()


def vmcall(
    rt: RuntimeDir,
    cpuid: int,
    registers: list[int],
    data: bytes = b"",
    out_size: int = 0,
    timeout: float = VMCALL_TIMEOUT,
) -> tuple[tuple[int, ...], bytes]:
    """One vmcall on vCPU ``cpuid`` of the service of ``rt``: the registers after it and
    the output it produced.  ``NotRunning`` when there is no verified service,
    ``ManagerError`` with the service's reason when it refuses the vmcall."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        connection = _take(rt)
        kept = connection is not None
        if connection is None:
            connection = VmmConnection(rt, max(0.1, deadline - time.monotonic()))
        try:
            answer = connection.vmcall(cpuid, registers, data, out_size)
        except _Gone:
            connection.close()
            if kept:  # closed while it was idle, before our request was read: send again
                continue
            raise ProtocolError("the VMM closed the connection without an answer") from None
        except BaseException:
            connection.close()
            raise
        if isinstance(answer, dict):  # the service refused the connection
            connection.close()
            if not answer.get("busy") or time.monotonic() + pause >= deadline:
                raise ManagerError(str(answer["error"]))
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
            continue
        _keep(connection)
        return answer


def forget(rt: RuntimeDir) -> None:
    """Close the connections kept for ``rt`` (its service is being stopped)."""
    with _kept_lock:
        idle = _kept.pop(rt.path, [])
    for connection in idle:
        connection.close()
