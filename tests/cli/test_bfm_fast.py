"""A fast bfm (issue 15 item 2): one request per vmcall on a persistent connection, a
fixed set of threads however many clients connect, a bfm process that imports only the
standard library, a service that imports only the backend it runs -- and nothing issue
11 made safe given up for it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bfm_helpers import Bfm
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflank.cli import client, wire
from pyflank.cli.bfm import quick_vmcall, run
from pyflank.cli.parser import parse
from pyflank.cli.runtime import RuntimeDir
from pyflank.cli.server import MAX_CONNECTIONS
from pyflank.cli.vmcall_command import request

SLOW_EXTENSION = """
import time
from pyflank.exit_handler import ExitHandlerIntelX64

class Slow(ExitHandlerIntelX64):
    def handle_vmcall_data_string_unformatted(self, istr: str) -> str:
        if istr == "slow":
            time.sleep(2.0)
        return istr
"""
BACKEND_MODULES = ("pyflank.backends.emu", "pyflank.backends.kvm", "unicorn", "iced_x86")
HEAVY_MODULES = (
    *BACKEND_MODULES, "keystone", "pyflank.vmm", "pyflank.abi", "argparse", "json", "socket", "re",
    "typing", "enum", "dataclasses", "pathlib", "logging", "base64", "subprocess",
)  # fmt: skip


@pytest.fixture
def bfm(tmp_path: Path) -> Iterator[Bfm]:
    runner = Bfm(tmp_path / "run")
    yield runner
    runner("stop")


def _string(text: str) -> tuple[list[int], bytes, int]:
    message, _ = request(["string", "unformatted", text])
    return message.registers, message.data, message.out_size


def _connect(bfm: Bfm) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(str(bfm.runtime / "vmm.sock"))
    return sock


def _receive_frame(sock: socket.socket) -> wire.Frame:
    header = b""
    while len(header) < wire.HEADER.size:
        chunk = sock.recv(wire.HEADER.size - len(header))
        assert chunk, f"closed after {header!r}"
        header += chunk
    frame, length = wire.decode_header(header)
    payload = b""
    while len(payload) < length:
        payload += sock.recv(length - len(payload))
    frame.payload = payload
    return frame


def _frame_vmcall(sock: socket.socket, text: str, cpuid: int = 0) -> wire.Frame:
    registers, data, out_size = _string(text)
    sock.sendall(wire.encode(wire.REQUEST, cpuid, registers, data, out_size))
    return _receive_frame(sock)


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _modules_after(bfm: Bfm, *argv: str) -> tuple[str, set[str]]:
    """What ``bfm ARGV`` prints, and every module the process had imported by its end."""
    probe = (
        "import sys\n"
        "from pyflank.cli.bfm import main\n"
        f"code = main({list(argv)!r})\n"
        "print('--modules--', *sorted(sys.modules), sep='\\n')\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=bfm.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out, _, modules = done.stdout.partition("--modules--\n")
    return out.strip(), set(modules.split())


def _imported(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m in names or m.startswith(tuple(f"{n}." for n in names)))


# -- what each process imports ---------------------------------------------------------
def test_version_and_status_import_no_backend(bfm: Bfm) -> None:
    for argv in (("--version",), ("status",), ("status", "-v")):
        _, modules = _modules_after(bfm, *argv)
        assert _imported(modules, (*BACKEND_MODULES, "pyflank.vmm")) == [], argv


def test_a_vmcall_process_imports_only_the_standard_library(bfm: Bfm) -> None:
    bfm.service()
    for argv in (
        ("vmcall", "string", "unformatted", "light"),
        ("vmcall", "--cpuid", "0", "versions", "1"),
        ("--cpuid", "0", "vmcall", "registers", "1", "2"),
    ):
        out, modules = _modules_after(bfm, *argv)
        assert out.startswith(("received from vmm", "VMCALL_VERSION_PYFLANK")), out
        assert _imported(modules, HEAVY_MODULES) == [], argv
        ours = {m for m in modules if m.startswith("pyflank")}
        assert ours <= {
            "pyflank", "pyflank.cli", "pyflank.cli.bfm", "pyflank.cli.client",
            "pyflank.cli.connection", "pyflank.cli.errors", "pyflank.cli.files",
            "pyflank.cli.runtime", "pyflank.cli.service_process", "pyflank.cli.vmcall_abi",
            "pyflank.cli.vmcall_command", "pyflank.cli.wire",
        }, ours  # fmt: skip


def test_the_service_imports_only_the_backend_it_runs() -> None:
    probe = (
        "import sys\n"
        "from pyflank.cli.service import VmmService\n"
        "before = set(sys.modules)\n"
        "from pyflank import ExitHandlerIntelX64, Vm\n"
        "vm = Vm(ExitHandlerIntelX64, backend='emu')\n"
        "print(' '.join(sorted(before)), '|', ' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before, after = (set(part.split()) for part in done.stdout.split("|"))
    assert _imported(before, BACKEND_MODULES) == []  # importing the service loads neither
    assert "pyflank.backends.emu" in after
    assert _imported(after, ("pyflank.backends.kvm",)) == []  # the one not chosen
    # A VM that loads no ELF file and boots no kernel (the service's) imports neither loader.
    assert _imported(after, ("elftools", "pyflank.platform.linux.bzimage")) == []


def test_the_quick_vmcall_path_falls_back_to_status_when_nothing_runs(bfm: Bfm) -> None:
    assert "not running (VMM_UNLOADED): run 'bfm start' first" in bfm.fails(
        "vmcall", "string", "unformatted", "anyone?"
    )


# -- the quick command line reads exactly what argparse reads ---------------------------
WORDS = st.sampled_from(
    ["vmcall", "--cpuid", "-v", "-q", "--", "-1", "0", "1", "0x2", "1_0", " 3", "x1",
     "versions", "string", "unformatted", "json", "registers", "-", "", "é", "status"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(WORDS, max_size=7))
def test_the_quick_vmcall_parser_agrees_with_argparse(argv: list[str]) -> None:
    quick = quick_vmcall(argv)
    if quick is None:
        return
    line = parse(argv)
    assert line.command == "vmcall" and not (line.verbose or line.quiet or line.help)
    assert (line.cpuid, line.words) == quick


# -- one connection, many vmcalls; a fixed set of threads -------------------------------
def test_one_connection_serves_many_vmcalls(bfm: Bfm) -> None:
    service = bfm.service()
    sock = _connect(bfm)
    assert _frame_vmcall(sock, "warm").kind == wire.ANSWER  # the vCPU thread runs by now
    threads = _threads(service.pid)
    for i in range(300):
        answer = _frame_vmcall(sock, f"call {i}")
        assert answer.kind == wire.ANSWER and answer.payload == f"call {i}".encode()
    assert _threads(service.pid) == threads  # served by the same threads throughout
    sock.close()


def test_in_process_vmcalls_reuse_one_connection(bfm: Bfm) -> None:
    bfm.service()
    rt = RuntimeDir(bfm.runtime)
    client.forget(rt)
    opened: list[client.VmmConnection] = []
    original = client.VmmConnection.__init__

    def counting(self: client.VmmConnection, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        opened.append(self)

    client.VmmConnection.__init__ = counting  # type: ignore[method-assign]
    try:
        for i in range(50):
            reply = run(["vmcall", "string", "unformatted", f"n{i}"], rt)
            assert reply == f"received from vmm: n{i}"
    finally:
        client.VmmConnection.__init__ = original  # type: ignore[method-assign]
        client.forget(rt)
    assert len(opened) == 1 and opened[0].served == 50


def test_many_connections_never_add_threads(bfm: Bfm) -> None:
    service = bfm.service()
    first = _connect(bfm)
    assert _frame_vmcall(first, "warm").kind == wire.ANSWER
    threads = _threads(service.pid)
    held = [_connect(bfm) for _ in range(MAX_CONNECTIONS - 1)]
    for i, sock in enumerate(held):
        assert _frame_vmcall(sock, f"held {i}").payload == f"held {i}".encode()
    assert _threads(service.pid) == threads  # not a thread per connection
    for sock in [first, *held]:
        sock.close()


def test_the_connection_limit_counts_persistent_connections(bfm: Bfm) -> None:
    bfm.service("--read-timeout", "1.5")
    held = [_connect(bfm) for _ in range(MAX_CONNECTIONS)]
    for sock in held:
        assert _frame_vmcall(sock, "mine").kind == wire.ANSWER  # persistent from here on
    extra = _connect(bfm)
    refusal = extra.makefile("rb").readline()
    assert b'"busy":true' in refusal and b"try again" in refusal
    # A persistent connection that stays idle is closed (silently: it had its answers)...
    assert held[0].recv(1) == b""
    # ... and then the limit has room: bfm, which retries a busy refusal, gets through.
    assert bfm("vmcall", "string", "unformatted", "in turn").out == "received from vmm: in turn"
    for sock in [*held, extra]:
        sock.close()


def test_a_kept_connection_closed_while_idle_is_replaced_transparently(bfm: Bfm) -> None:
    bfm.service("--read-timeout", "0.5")
    rt = RuntimeDir(bfm.runtime)
    client.forget(rt)
    try:
        assert client.vmcall(rt, 0, *_string("before"))[1] == b"before"
        time.sleep(1.2)  # the service closes the idle connection
        assert client.vmcall(rt, 0, *_string("after"))[1] == b"after"  # sent again, once
    finally:
        client.forget(rt)


# -- timeouts and malformed frames on a persistent connection ---------------------------
def test_a_late_answer_never_reaches_the_next_vmcall_on_the_connection(
    bfm: Bfm, tmp_path: Path
) -> None:
    (tmp_path / "slow.py").write_text(SLOW_EXTENSION)
    bfm.service("--extension", str(tmp_path / "slow.py"), "--vmcall-timeout", "1.5")
    sock = _connect(bfm)
    timed_out = _frame_vmcall(sock, "slow")  # the handler takes 2 s
    assert timed_out.kind == wire.REFUSAL
    assert timed_out.reason == "the agent on vCPU 0 did not answer in 1.5 s"
    # The agent is still on "slow": the next vmcall waits for it, then gets its own answer.
    answer = _frame_vmcall(sock, "fast")
    assert answer.kind == wire.ANSWER and answer.payload == b"fast"
    # A bfm process meets the same time-out, in one line.
    assert bfm.fails("vmcall", "string", "unformatted", "slow").endswith("in 1.5 s")
    sock.close()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (wire.MAGIC + b"\x09" + bytes(wire.HEADER.size - 5), "version 9"),
        (wire.encode(7, 0, (0,) * 16), "unknown vmcall frame kind 7"),
        (wire.encode(wire.ANSWER, 0, (0,) * 16), "vmcall requests only"),
        (wire.encode(wire.REQUEST, 0, (0,) * 16)[:-1] + b"\xff", None),  # length past the limit
        (wire.encode(wire.REQUEST, 0, (0,) * 16, b"abc")[:-1], "ends early"),  # then EOF
        (wire.MAGIC + b"\x01", "ends early"),
    ],
)
def test_a_malformed_frame_gets_a_refusal_and_the_service_goes_on(
    bfm: Bfm, frame: bytes, reason: str | None
) -> None:
    if reason is None:  # a REQUEST whose length field says 0xff000000 bytes follow
        header = bytearray(wire.encode(wire.REQUEST, 0, (0,) * 16))
        header[12:16] = (0xFF000000).to_bytes(4, "little")
        frame, reason = bytes(header), "exceeds"
    bfm.service()
    sock = _connect(bfm)
    sock.sendall(frame)
    sock.shutdown(socket.SHUT_WR)
    refusal = _receive_frame(sock)
    assert refusal.kind == wire.REFUSAL and reason in refusal.reason, refusal.reason
    assert "\n" not in refusal.reason
    assert sock.recv(1) == b""  # its framing is lost: the connection is closed
    assert bfm("vmcall", "versions", "1").code == 0


def test_a_refused_vmcall_keeps_the_connection(bfm: Bfm) -> None:
    bfm.service()
    sock = _connect(bfm)
    refusal = _frame_vmcall(sock, "nowhere", cpuid=7)
    assert refusal.kind == wire.REFUSAL and refusal.reason == "no vCPU 7 (the VMM runs 1)"
    assert _frame_vmcall(sock, "here").payload == b"here"
    sock.close()


def test_a_frame_client_is_peer_checked_like_any_other(bfm: Bfm) -> None:
    """The client checks the service's credentials before it sends a byte; a pid file
    that names another process is never trusted (issue 11 defects 2 and 3)."""
    bfm.service()
    rt = RuntimeDir(bfm.runtime)
    sleeper = subprocess.Popen(["sleep", "30"])
    real = (bfm.runtime / "vmm.pid").read_text()
    try:
        (bfm.runtime / "vmm.pid").write_text(f"{sleeper.pid}\n")
        with pytest.raises(client.NotRunning, match="is not the VMM service"):
            client.VmmConnection(rt)
        assert "not running (VMM_CORRUPT" in bfm.fails("vmcall", "versions", "1")
    finally:
        (bfm.runtime / "vmm.pid").write_text(real)
        sleeper.kill()
        sleeper.wait()
    assert bfm("vmcall", "versions", "1").code == 0


def test_a_service_that_fails_to_start_says_why(bfm: Bfm, tmp_path: Path) -> None:
    extension = tmp_path / "fine.py"
    extension.write_text(SLOW_EXTENSION)
    assert bfm("load", str(extension)).code == 0
    extension.write_text("raise RuntimeError('changed since load')\n")
    reason = bfm.fails("start", "--backend", "emu")
    assert "failed to start" in reason and "changed since load" in reason
    assert bfm("status").out == "VMM_LOADED"


def test_a_pipeline_of_requests_is_answered_in_order(bfm: Bfm) -> None:
    """Requests sent without waiting are answered one at a time, in order -- thousands of
    them at once (refused on the server thread) as well as vmcalls the agent runs."""
    bfm.service()
    sock = _connect(bfm)
    refused = wire.encode(wire.REQUEST, 9, _string("x")[0], b"x", 16)
    registers, data, out_size = _string("run")
    ran = wire.encode(wire.REQUEST, 0, registers, data, out_size)
    sender = threading.Thread(target=sock.sendall, args=((refused * 3000) + ran,))
    sender.start()
    for _ in range(3000):
        assert _receive_frame(sock).reason == "no vCPU 9 (the VMM runs 1)"
    assert _receive_frame(sock).payload == b"run"
    sender.join()
    sock.close()
    assert bfm("vmcall", "versions", "1").code == 0


# -- bfm start spawns the service before it has decided, and takes it back ----------------
def _services_of(runtime: Path) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pyflank.cli.service" in argv and os.fsencode(runtime) in argv:
            found.append(int(name))
    return found


def _none_left(runtime: Path) -> bool:
    deadline = time.monotonic() + 30
    while _services_of(runtime):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_launch_that_is_not_wanted_leaves_nothing(tmp_path: Path) -> None:
    from pyflank.cli.service_launch import ServiceLaunch

    rt = RuntimeDir(tmp_path / "run")
    launch = ServiceLaunch(rt)
    launch.cancel()
    assert launch.process.wait(30) == 0  # it read the end of its orders and left
    assert sorted(os.listdir(rt.path)) == []  # no pid file, socket or log of its own


def test_a_refused_start_takes_its_early_service_back(
    bfm: Bfm, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyflank.cli.bfm import main

    monkeypatch.setenv("PYFLANK_RUNTIME_DIR", str(bfm.runtime))
    assert main(["start", "--memory", "lots"]) == 2  # spawned at once, then not wanted
    assert "not a size" in capsys.readouterr().err
    assert _none_left(bfm.runtime)
    assert bfm("status").out == "VMM_UNLOADED"
    assert main(["start", "--backend", "emu"]) == 0  # and a start that is wanted uses it
    assert bfm("status").out == "VMM_RUNNING"
    assert len(_services_of(bfm.runtime)) == 1
    assert sorted(p.name for p in bfm.runtime.iterdir() if p.name.startswith(".")) == []


def test_the_service_inherits_only_its_streams(bfm: Bfm) -> None:
    """What bfm start was given (here an inheritable pipe) stays out of the long-lived
    service, as with subprocess's close_fds: a parent waiting on it would wait forever."""
    held_r, held_w = os.pipe()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pyflank.cli.bfm", "start", "--backend", "emu"],
            env=bfm.env, capture_output=True, timeout=60, pass_fds=(held_w,),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        pid = int((bfm.runtime / "vmm.pid").read_text())
        inherited = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert os.readlink(f"/proc/self/fd/{held_w}") not in inherited
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    finally:
        os.close(held_r)
        os.close(held_w)
