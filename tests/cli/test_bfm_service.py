"""The real bfm driving the real VMM service: every command, state and failure."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bfm_helpers import Bfm

EXTENSION = """
from pyflank.exit_handler import ExitHandlerIntelX64

class Upper(ExitHandlerIntelX64):
    USER_VERSION = (4, 5, 6)

    def handle_vmcall_data_string_unformatted(self, istr: str) -> str:
        return istr.upper()

    def handle_vmcall_data_string_json(self, ijson: object) -> object:
        return {"got": ijson}
"""


@pytest.fixture
def bfm(tmp_path: Path) -> Iterator[Bfm]:
    runner = Bfm(tmp_path / "run")
    yield runner
    runner("stop")


@pytest.fixture
def running(bfm: Bfm, tmp_path: Path) -> Bfm:
    ext = tmp_path / "upper.py"
    ext.write_text(EXTENSION)
    assert bfm("load", str(ext)).code == 0
    result = bfm("start")
    assert result.code == 0, result
    return bfm


def test_lifecycle(bfm: Bfm, tmp_path: Path) -> None:
    assert bfm("status").out == "VMM_UNLOADED"
    result = bfm("start")  # start implies load (the default handler)
    assert result.code == 0 and "ExitHandlerIntelX64" in result.out
    assert bfm("status").out == "VMM_RUNNING"
    # Bareflank's rules: start restarts a running VMM (with the options given now), a
    # load that fails changes nothing, a load that works stops the running VMM first.
    restarted = bfm("start", "--vcpus", "2")
    assert restarted.out.startswith("stopped the running VMM\nstarted"), restarted
    assert "on 2 vCPU(s)" in restarted.out
    assert "not a regular file" in bfm.fails("load", str(tmp_path))
    assert bfm("status").out == "VMM_RUNNING"
    assert bfm("stop").out == "stopped"
    assert bfm("status").out == "VMM_LOADED"
    assert bfm("stop").code == 0
    assert bfm("unload").code == 0
    assert bfm("status").out == "VMM_UNLOADED"


def test_socket_is_private(running: Bfm) -> None:
    sock = running.runtime / "vmm.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(running.runtime.stat().st_mode) == 0o700


def test_other_user_cannot_connect(running: Bfm) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to switch to a second uid")
    probe = (
        "import os, socket, sys; os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(7)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(running.runtime / "vmm.sock")])
    assert done.returncode == 7


def test_every_vmcall(running: Bfm, tmp_path: Path) -> None:
    b = running
    assert b("vmcall", "versions", "0").out == "VMCALL_VERSION_PROTOCOL: 1.0.0"
    assert b("vmcall", "versions", "10").out == "VMCALL_VERSION_USER: 4.5.6"
    assert "BF_VMCALL_FAILURE" in b.fails("vmcall", "versions", "7")
    regs = b("vmcall", "registers", "a", "b", "ffffffffffffffff")
    assert regs.code == 0 and "r04: 0xffffffffffffffff" in regs.out
    assert b("vmcall", "string", "unformatted", "hello").out == "received from vmm: HELLO"
    reply = b("vmcall", "string", "json", '{"x": 1}')
    assert reply.out == 'received from vmm: {\n    "got": {\n        "x": 1\n    }\n}'
    assert b("vmcall", "event", "0x42").out == "success"
    assert b("vmcall", "unittest", "1").out == "vmm unittest 1: passed"
    assert "BF_VMCALL_FAILURE" in b.fails("vmcall", "unittest", "99")
    payload = bytes(range(256)) * 64
    (tmp_path / "in.bin").write_bytes(payload)
    result = b("vmcall", "data", "unformatted", str(tmp_path / "in.bin"), str(tmp_path / "o"))
    assert result.code == 0, result
    assert (tmp_path / "o").read_bytes() == payload
    ring = b("dump").out
    assert "vmcall event:\nr02: 0x42\n" in ring and "vmm unittest 1" in ring
    assert "no vCPU 3" in b.fails("dump", "--vcpuid", "3")
    assert "no vCPU 5" in b.fails("vmcall", "--cpuid", "5", "versions", "0")
    assert b("status").out == "VMM_RUNNING"  # the service kept serving through the errors


def test_killed_service_is_corrupt_and_stop_cleans_up(running: Bfm) -> None:
    pid = int((running.runtime / "vmm.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while running("status").out != "VMM_CORRUPT" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running("status").out == "VMM_CORRUPT"
    assert "not running" in running.fails("vmcall", "versions", "0")
    assert "VMM_CORRUPT" in running.fails("start")
    assert "cleaned up" in running("stop").out
    assert running("status").out == "VMM_LOADED"
    assert not (running.runtime / "vmm.sock").exists()
    assert running("start").code == 0
    assert running("vmcall", "versions", "0").code == 0


def test_stale_socket_without_pid(bfm: Bfm) -> None:
    import socket

    bfm.runtime.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(bfm.runtime / "vmm.sock"))
    stale.close()
    assert bfm("status").out == "VMM_CORRUPT"
    assert bfm("stop").code == 0
    assert bfm("status").out == "VMM_UNLOADED"


def _clients(bfm: Bfm, processes: int, count: int, vcpus: int) -> None:
    client = Path(__file__).with_name("bfm_client.py")
    procs = [
        subprocess.Popen(
            [sys.executable, str(client), f"c{i}", str(count), str(vcpus)],
            env=bfm.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, outputs
    assert all(out.strip() == f"c{i}: {count} ok" for i, out in enumerate(outputs)), outputs


@pytest.mark.parametrize("vcpus", [1, 2])
def test_concurrent_clients(bfm: Bfm, vcpus: int) -> None:
    assert bfm("start", "--vcpus", str(vcpus)).code == 0
    _clients(bfm, processes=8, count=50, vcpus=vcpus)
    assert bfm("status").out == "VMM_RUNNING"


def test_modules_extension_runs_composed(bfm: Bfm, tmp_path: Path) -> None:
    (tmp_path / "upper.py").write_text(EXTENSION)
    (tmp_path / "exclaim.py").write_text(
        "from pyflank.exit_handler import ExitHandlerIntelX64\n"
        "class Exclaim(ExitHandlerIntelX64):\n"
        "    def handle_vmcall_data_string_unformatted(self, istr: str) -> str:\n"
        "        return super().handle_vmcall_data_string_unformatted(istr) + '!'\n"
    )
    (tmp_path / "both.modules").write_text(json.dumps({"modules": ["exclaim.py", "upper.py"]}))
    assert bfm("quick", str(tmp_path / "both.modules")).code == 0
    assert bfm("vmcall", "string", "unformatted", "hi").out == "received from vmm: HI!"


def test_json_travels_faithfully(running: Bfm) -> None:
    reply = running("vmcall", "string", "json", '{"name": "Zoë", "日本": [1.5, null]}')
    assert reply.out == (
        'received from vmm: {\n    "got": {\n        "name": "Zoë",\n'
        '        "日本": [\n            1.5,\n            null\n        ]\n    }\n}'
    )
    assert "invalid JSON: NaN is not standard JSON" in running.fails(
        "vmcall", "string", "json", '{"x": NaN}'
    )
