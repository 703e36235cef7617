"""A hostile local user against bfm: a planted runtime directory, a fake service, pid
files that name someone else, a socket open to others.  Each test plays the attack
with a real second user (uid 65534) where the test runs as root."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bfm_helpers import Bfm
from other_user import as_other_user, needs_root, run_as_other_user

from pyflank.cli import protocol

DEFAULT_HANDLER = "pyflank.exit_handler.exit_handler_intel_x64:ExitHandlerIntelX64"


def _default_env(tmpdir: Path) -> dict[str, str]:
    """bfm's environment when the user set nothing: the runtime directory is TMPDIR's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYFLANK_RUNTIME_DIR",)}
    env.pop("XDG_RUNTIME_DIR", None)
    env["TMPDIR"] = str(tmpdir)
    return env


@pytest.fixture
def fake_tmp(shared: Path) -> Iterator[Path]:
    """A world-writable sticky directory like /tmp, owned by root."""
    tmp = shared / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    yield tmp
    _kill_services_in(tmp)


def _kill_services_in(directory: Path) -> None:
    """Only an old, vulnerable bfm would have started one: do not leave it running."""
    for pidfile in directory.rglob("vmm.pid"):
        try:
            pid = int(pidfile.read_text().split()[0])
            if b"pyflank.cli.service" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


@needs_root
def test_a_planted_symlink_runtime_directory_is_refused(fake_tmp: Path) -> None:
    """Issue 11 defect 1: /tmp/pyflank-0 -> /tmp with an attacker's loaded.json in /tmp."""
    marker = fake_tmp / "pwned"
    evil = fake_tmp / "evil.py"
    plant = f"""
open({str(evil)!r}, "w").write(
    "import os\\nopen({str(marker)!r}, 'w').write(str(os.getuid()))\\n"
    "from pyflank.exit_handler import ExitHandlerIntelX64\\n"
    "class Evil(ExitHandlerIntelX64): pass\\n")
json.dump({{"extension": {str(evil)!r}, "handler": "Evil"}},
          open({str(fake_tmp / "loaded.json")!r}, "w"))
os.symlink({str(fake_tmp)!r}, {str(fake_tmp / "pyflank-0")!r})
"""
    done = run_as_other_user(plant)
    assert done.returncode == 0, done.stderr
    bfm = Bfm(fake_tmp / "pyflank-0", env=_default_env(fake_tmp))
    for command in ("start", "status", "load"):
        args = (command, DEFAULT_HANDLER) if command == "load" else (command,)
        reason = bfm.fails(*args)
        assert "is a symbolic link" in reason, reason
    assert not marker.exists()  # root never ran the attacker's extension
    assert stat.S_IMODE(fake_tmp.stat().st_mode) == 0o1777  # and did not chmod "/tmp"


FAKE_SERVICE = """
directory, capture = sys.argv[1], sys.argv[2]
os.mkdir(directory, 0o777)
os.chmod(directory, 0o777)
path = os.path.join(directory, "vmm.sock")
server = socket.socket(socket.AF_UNIX)
server.bind(path)
os.chmod(path, 0o777)
server.listen(16)
open(os.path.join(directory, "vmm.pid"), "w").write(f"{os.getpid()}\\n")
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    line = conn.makefile("rb").readline()
    open(capture, "ab").write(line)
    request = json.loads(line)
    if request.get("op") == "ping":
        reply = {"ok": True, "backend": "emu", "handler": "Fake", "vcpus": [], "pid": os.getpid()}
    else:
        regs = {f"r{i:02d}": 0 for i in range(16)}
        reply = {"ok": True, "ret": 0, "regs": regs, "out": base64.b64encode(b"EVIL").decode()}
    conn.sendall(json.dumps(reply).encode() + b"\\n")
    conn.close()
"""


@needs_root
def test_a_directory_and_service_planted_by_another_user_are_not_trusted(
    fake_tmp: Path, tmp_path: Path
) -> None:
    """Issue 11 defect 2: the victim's DATA went to the attacker's service and the
    attacker's bytes were written to the victim's output file."""
    capture = fake_tmp / "captured"
    attacker = as_other_user(FAKE_SERVICE, str(fake_tmp / "pyflank-0"), str(capture))
    try:
        assert attacker.stdout is not None
        assert attacker.stdout.readline().strip() == "ready", attacker.stderr
        secret, out = tmp_path / "secret", tmp_path / "out"
        secret.write_bytes(b"the victim's secret")
        bfm = Bfm(fake_tmp / "pyflank-0", env=_default_env(fake_tmp))
        assert "belongs to uid 65534" in bfm.fails("status")
        reason = bfm.fails("vmcall", "data", "unformatted", str(secret), str(out))
        assert "belongs to uid 65534" in reason
        assert "belongs to uid 65534" in bfm.fails("dump")
        assert not out.exists()
        assert not capture.exists()  # bfm never even connected
    finally:
        attacker.kill()
        attacker.wait()


@needs_root
def test_the_client_refuses_a_socket_served_by_another_user(fake_tmp: Path) -> None:
    capture = fake_tmp / "captured"
    attacker = as_other_user(FAKE_SERVICE, str(fake_tmp / "run"), str(capture))
    try:
        assert attacker.stdout is not None
        assert attacker.stdout.readline().strip() == "ready", attacker.stderr
        with pytest.raises(protocol.PeerRefused, match="served by uid 65534"):
            protocol.call(fake_tmp / "run" / "vmm.sock", {"op": "ping"}, 5)
        # Refused before a byte was sent (the fake service saw only the end of file).
        assert not capture.exists() or capture.read_bytes() == b""
    finally:
        attacker.kill()
        attacker.wait()


@needs_root
def test_the_service_refuses_another_user_even_on_an_open_socket(shared: Path) -> None:
    bfm = Bfm(shared / "run")
    service = bfm.service()
    try:
        # As if the socket were reachable by others (a permissive umask, a bind mount...).
        (shared / "run").chmod(0o755)
        (shared / "run" / "vmm.sock").chmod(0o777)
        probe = """
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"op": "ping"}\\n')
except BrokenPipeError:
    pass  # refused before it read anything
print(s.makefile("rb").readline().decode().strip())
"""
        done = run_as_other_user(probe, str(shared / "run" / "vmm.sock"))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "ok": False,
            "error": "this VMM serves only its own user",
        }
    finally:
        service.terminate()
        service.wait(30)


def _with_pidfile(runtime: Path, pid: str) -> Bfm:
    bfm = Bfm(runtime)
    runtime.mkdir(mode=0o700, exist_ok=True)
    (runtime / "vmm.pid").write_text(f"{pid}\n")
    return bfm


def test_stop_never_signals_a_process_that_reused_the_pid(tmp_path: Path) -> None:
    """Issue 11 defect 3: bfm stop killed whatever the pid file named."""
    bystanders = [
        subprocess.Popen(["sleep", "60"]),
        # A command line that names the service, but for another runtime directory.
        subprocess.Popen(
            [
                *(sys.executable, "-c", "import time; time.sleep(60)"),
                *("pyflank.cli.service", "--runtime-dir", str(tmp_path / "elsewhere")),
            ]
        ),
    ]
    try:
        for bystander in bystanders:
            bfm = _with_pidfile(tmp_path / "run", str(bystander.pid))
            assert bfm("status").out == "VMM_CORRUPT"
            assert "is not the VMM service" in bfm("status", "-v").out
            result = bfm("stop")
            assert result.code == 0 and "cleaned up" in result.out, result
            time.sleep(0.2)
            assert bystander.poll() is None  # alive: never signalled
            assert bfm("status").out == "VMM_UNLOADED"
    finally:
        for bystander in bystanders:
            bystander.kill()
            bystander.wait()


@needs_root
def test_stop_never_signals_another_users_process(tmp_path: Path) -> None:
    other = as_other_user("time.sleep(60)")
    try:
        bfm = _with_pidfile(tmp_path / "run", str(other.pid))
        time.sleep(0.2)  # the child has switched user
        assert "belongs to uid 65534" in bfm("status", "-v").out
        assert bfm("stop").code == 0
        time.sleep(0.2)
        assert other.poll() is None  # root could have killed it: it did not
        assert bfm("status").out == "VMM_UNLOADED"
    finally:
        other.kill()
        other.wait()


BFM_AS_OTHER_USER = "sys.exit(bfm.main(sys.argv[1:]))"


@needs_root
def test_an_unprivileged_user_can_always_clean_a_stale_pid_file(shared: Path) -> None:
    """A pid file naming another user's process (here root's) left VMM_CORRUPT for good:
    the kill raised PermissionError."""
    runtime = shared / "run"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, 65534, 65534)
    (runtime / "vmm.pid").write_text(f"{os.getpid()}\n")
    os.chown(runtime / "vmm.pid", 65534, 65534)
    env = {**os.environ, "PYFLANK_RUNTIME_DIR": str(runtime)}
    # bfm imports its parser and manager when a command needs them: here, before the switch.
    imports = "import pyflank.cli.bfm as bfm, pyflank.cli.parser, pyflank.cli.manager"

    def bfm_as_other(*args: str) -> subprocess.CompletedProcess[str]:
        return run_as_other_user(BFM_AS_OTHER_USER, *args, imports=imports, env=env)

    assert bfm_as_other("status").stdout.strip() == "VMM_CORRUPT"
    stopped = bfm_as_other("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "cleaned up" in stopped.stdout
    assert bfm_as_other("status").stdout.strip() == "VMM_UNLOADED"


NAMESPACE_DRIVER = """
import json, os, subprocess, sys
runtime = sys.argv[1]
sleeper = subprocess.Popen(["sleep", "60"])
env = {**os.environ, "PYFLANK_RUNTIME_DIR": runtime}
os.makedirs(runtime, 0o700, exist_ok=True)
results = []
for pid in ("0", "-1", "1"):
    with open(os.path.join(runtime, "vmm.pid"), "w") as f:
        f.write(pid + "\\n")
    done = subprocess.run([sys.executable, "-m", "pyflank.cli.bfm", "stop"], env=env,
                          capture_output=True, text=True, timeout=60)
    results.append({"pid": pid, "code": done.returncode, "out": done.stdout.strip(),
                    "err": done.stderr.strip(), "sleeper_alive": sleeper.poll() is None,
                    "pidfile_left": os.path.exists(os.path.join(runtime, "vmm.pid"))})
sleeper.kill()
print(json.dumps(results))
"""


def _unshare_works() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="unshare --pid --mount-proc does not work here")
def test_pid_file_naming_0_minus_1_or_init_signals_nobody(tmp_path: Path) -> None:
    """Issue 11 defect 3, in a pid namespace so that the old behaviour (kill(0) hits
    bfm's own process group, kill(-1) every process) only hurts the namespace."""
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
         sys.executable, "-c", NAMESPACE_DRIVER, str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
        start_new_session=True,  # kill(0) reaches a process group, across namespaces
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for result in json.loads(done.stdout.splitlines()[-1]):
        assert result["code"] == 0, result
        assert result["sleeper_alive"], result  # nobody was signalled
        assert not result["pidfile_left"], result  # and the stale state was cleaned


def test_a_runtime_directory_with_loose_permissions_is_refused(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    runtime.chmod(0o755)
    bfm = Bfm(runtime)
    assert "has mode 0755: it must be 0700" in bfm.fails("status")
    runtime.chmod(0o700)
    assert bfm("status").out == "VMM_UNLOADED"


def test_a_runtime_directory_under_a_shared_writable_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could rename our directory away and plant theirs
    reason = Bfm(shared / "run").fails("load", DEFAULT_HANDLER)
    assert "is writable by others and not sticky" in reason


def test_the_socket_is_not_followed_as_a_link(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    elsewhere = socket.socket(socket.AF_UNIX)
    elsewhere.bind(str(tmp_path / "other.sock"))
    elsewhere.listen(1)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (runtime / "vmm.pid").write_text(f"{sleeper.pid}\n")  # alive, and not a service
        (runtime / "vmm.sock").symlink_to(tmp_path / "other.sock")
        bfm = Bfm(runtime)
        assert bfm("status").out == "VMM_CORRUPT"
        assert bfm("stop").code == 0
        assert not (runtime / "vmm.sock").is_symlink()
        assert (tmp_path / "other.sock").exists()  # the link's target was left alone
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
        elsewhere.close()
