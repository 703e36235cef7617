"""The VMM service under a hostile or careless client: idle connections, too many
connections, bursts, the file-descriptor limit, malformed messages, a log that must not
grow without bound (issue 11, defects 7 and 8)."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bfm_helpers import Bfm

from pyflank.cli import protocol
from pyflank.cli.bounded_log import DEFAULT_LIMIT
from pyflank.cli.server import MAX_CONNECTIONS


@pytest.fixture
def bfm(tmp_path: Path) -> Iterator[Bfm]:
    runner = Bfm(tmp_path / "run")
    yield runner
    runner("stop")


def _connect(bfm: Bfm) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(bfm.runtime / "vmm.sock"))
    return sock


def _line(sock: socket.socket, timeout: float = 30) -> dict[str, object]:
    sock.settimeout(timeout)
    reply = json.loads(sock.makefile("rb").readline())
    assert isinstance(reply, dict)
    return reply


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def test_an_idle_connection_is_answered_and_closed(bfm: Bfm) -> None:
    bfm.service("--read-timeout", "0.5")
    idle = _connect(bfm)
    assert _line(idle) == {"ok": False, "error": "no request within 0.5 s"}
    assert idle.recv(1) == b""  # closed: it holds no thread any more
    assert bfm("vmcall", "versions", "1").code == 0


def test_connections_past_the_limit_are_refused_and_later_ones_served(bfm: Bfm) -> None:
    bfm.service("--read-timeout", "1.5")
    held = [_connect(bfm) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.3)  # accepted: each holds a slot
    extra = _connect(bfm)
    refusal = _line(extra, timeout=5)
    assert refusal["busy"] is True and "try again" in str(refusal["error"])
    assert bfm("status").out == "VMM_RUNNING"  # a full VMM is a running one
    # The client retries a refusal: this vmcall waits for the idle ones to time out.
    result = bfm("vmcall", "string", "unformatted", "served in turn")
    assert result.out == "received from vmm: served in turn", result
    for sock in held:
        sock.close()


def test_a_burst_of_clients_is_served_not_failed(bfm: Bfm) -> None:
    """More clients at once than the old accept queue (128): non-blocking connects
    failed with EAGAIN."""
    bfm.service()
    replies: list[object] = []
    errors: list[str] = []

    def client() -> None:
        try:
            replies.append(protocol.call(bfm.runtime / "vmm.sock", {"op": "ping"}, 60))
        except protocol.ProtocolError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=client) for _ in range(300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(replies) == 300 and all(r["ok"] for r in replies)  # type: ignore[index]


def test_at_the_descriptor_limit_the_service_does_not_spin_and_recovers(bfm: Bfm) -> None:
    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    service = bfm.service("--read-timeout", "2", preexec=few_descriptors)
    held = []
    for _ in range(120):  # more than the service can accept: the rest wait in the queue
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        try:
            sock.connect(str(bfm.runtime / "vmm.sock"))
        except BlockingIOError:
            sock.close()
            break
        held.append(sock)
    before = _cpu_seconds(service.pid)
    time.sleep(1.0)
    spent = _cpu_seconds(service.pid) - before
    assert spent < 0.5, f"the accept loop spun: {spent:.2f} s of CPU in 1 s"
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 30
    while bfm("status").out != "VMM_RUNNING":  # once the flood ends, it serves again
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert bfm("vmcall", "versions", "1").code == 0


MALFORMED = [
    b"not json\n",
    b"[1, 2, 3]\n",
    b'"a string"\n',
    b"{\n",
    b'{"op": "ping", "x": NaN}\n',
    b'{"op": "ping", "x": Infinity}\n',
    b"\xff\xfe\xfd\n",
    b"[" * 100_000 + b"\n",
    b'{"op": {"nested": [' + b"[" * 50_000 + b"]}\n",
    b'{"op": "vmcall", "cpuid": "0"}\n',
    b'{"op": "vmcall", "cpuid": 0, "regs": []}\n',
    b'{"op": "vmcall", "cpuid": 0, "regs": {"r00": 1.5}}\n',
    b'{"op": "vmcall", "cpuid": 0, "regs": {"rxx": 1}}\n',
    b'{"op": "vmcall", "cpuid": 0, "regs": {"r99": 1}}\n',
    b'{"op": "vmcall", "cpuid": 0, "regs": {"r00": -1}}\n',
    b'{"op": "vmcall", "cpuid": 0, "regs": {"r00": true}}\n',
    b'{"op": "vmcall", "cpuid": 0, "regs": {"r00": 3}, "in": 5}\n',
    b'{"op": "vmcall", "cpuid": 0, "regs": {"r00": 3}, "in": "***"}\n',
    b'{"op": "vmcall", "cpuid": 0, "regs": {"r00": 3}, "out_size": "big"}\n',
    b'{"op": "vmcall", "cpuid": 99999999999999999999999}\n',
    b'{"op": "vmcall", "cpuid": -1}\n',
    b'{"op": "dump", "vcpuid": "zero"}\n',
    b'{"op": "dump", "vcpuid": 1e999}\n',
    b'{"op": 7}\n',
    b'{"op": "teleport"}\n',
    b"{}\n",
    b"\n",
    b"x" * (protocol.MAX_MESSAGE + 10) + b"\n",
]


def test_every_malformed_message_gets_a_one_line_error_and_the_log_stays_bounded(
    bfm: Bfm,
) -> None:
    bfm.service()
    for message in MALFORMED:
        sock = _connect(bfm)
        # The oversized one is refused while still being sent: its reply is there anyway.
        with contextlib.suppress(BrokenPipeError):
            sock.sendall(message)
        reply = _line(sock)
        sock.close()
        assert reply["ok"] is False, (message[:60], reply)
        assert isinstance(reply["error"], str) and "\n" not in reply["error"], reply
    assert bfm("status").out == "VMM_RUNNING"
    for _ in range(300):  # a client that sends garbage forever
        sock = _connect(bfm)
        sock.sendall(b"[" * 100_000 + b"\n")
        _line(sock)
        sock.close()
    log = (bfm.runtime / "vmm.log").read_text()
    assert "Traceback" not in log
    assert len(log) <= DEFAULT_LIMIT + 200
    assert bfm("vmcall", "versions", "1").code == 0
