"""Fuzzing bfm's two inputs: its command line and the service socket.

A short run in ``make test``; the ``slow`` ones (``make soak``) try many more.  A
command line must end in time with exit status 0, or with one line on stderr and a
non-zero status; a message on the socket must get exactly one JSON reply line, and the
service must still be running afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bfm_helpers import Bfm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from odd_inputs import SURROGATE, make

from pyflank.cli import protocol
from pyflank.cli.bfm import main

SHORT, LONG = 200, 5000
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)

# -- the command line ---------------------------------------------------------------------
COMMANDS = ["load", "unload", "stop", "status", "dump", "vmcall", "check", "run", "help", ""]
WORDS = [
    "versions", "registers", "string", "unformatted", "json", "data", "event", "unittest",
    "--backend", "--vcpus", "--cpuid", "--vcpuid", "--memory", "--timeout", "--format",
    "--extension", "-v", "-q", "-h", "--help", "--version", "--", "-", "emu", "kvm", "auto",
    "0", "1", "-1", "17", "0x10", "1e3", "64M", "1K", "nan", "inf", "{}", "[", "NaN",
    '{"a": 1}', '"\\ud800"', SURROGATE, "é", "\x00", "a" * 300,
]  # fmt: skip
FILES = [
    "fifo", "dir", "dir.py", "dir.modules", "empty", "deep.json", "deep.modules", "nan.json",
    "utf8.json", "list.modules", "self.modules", "syntax.py", "exits.py", "badstr.py",
    "nohandler.py", "two.py", "bad.s", "latin1.s", "truncated.elf", "garbage.elf", "hlt.s",
    "input", "missing", "/dev/zero", "/dev/null",
]  # fmt: skip


def _argument(root: Path) -> st.SearchStrategy[str]:
    files = st.sampled_from(FILES).map(lambda name: name if name[0] == "/" else str(root / name))
    return st.one_of(st.sampled_from(WORDS), files, st.text(max_size=12))


def _command_line(command: str, arguments: list[str]) -> list[str]:
    if command == "run":  # a program that loads runs: bound it (garbage can loop forever)
        return [command, *arguments, "--timeout", "2"]
    return ([command] if command else []) + arguments


def _argv(root: Path) -> st.SearchStrategy[list[str]]:
    return st.tuples(st.sampled_from(COMMANDS), st.lists(_argument(root), max_size=6)).map(
        lambda t: _command_line(*t)
    )


def _check_command_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(main(argv))
        except BaseException as exc:  # noqa: BLE001 - what the fuzzer reports
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(60)
    err = capsys.readouterr().err
    assert outcome, f"hung: {argv!r}"
    code = outcome[0]
    assert isinstance(code, int), f"{argv!r} raised {code!r}"
    if code != 0 and "bfm run: " not in err:  # not a guest that ran and stopped badly
        assert err.startswith("bfm: ") and len(err.splitlines()) == 1, (argv, err)


@pytest.fixture
def fuzz_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from pyflank.backends.kvm.platform import measured_capabilities

    measured_capabilities()  # the KVM probe must first run on the main thread
    monkeypatch.setenv("PYFLANK_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd").mkdir()
    return make(tmp_path / "odd")


def fuzz(
    inputs: st.SearchStrategy[Any],
    check_one: Callable[[Any], None],
    examples: int,
    what: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``check_one`` on ``examples`` inputs drawn from ``inputs``; says how many it tried."""
    tried = 0

    @settings(FUZZ, max_examples=examples)
    @given(inputs)
    def check(value: Any) -> None:
        nonlocal tried
        tried += 1
        check_one(value)

    check()
    with capsys.disabled():
        print(f"\nfuzz: {tried} {what} tried, none failed")


def _fuzz_command_line(root: Path, capsys: pytest.CaptureFixture[str], examples: int) -> None:
    def one(argv: list[str]) -> None:
        _check_command_line(argv, capsys)

    fuzz(_argv(root), one, examples, "command lines", capsys)


def test_fuzz_the_command_line(fuzz_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fuzz_command_line(fuzz_root, capsys, SHORT)


@pytest.mark.slow
def test_fuzz_the_command_line_long(fuzz_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fuzz_command_line(fuzz_root, capsys, LONG)


# -- the service socket -----------------------------------------------------------------------
OPS = ["ping", "dump", "vmcall", "teleport", "", "PING"]  # never "stop": it would end the test
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
REGISTER_NAMES = st.sampled_from([f"r{i:02d}" for i in range(18)] + ["rax", "r", "r-1", ""])
REGISTERS = st.dictionaries(
    REGISTER_NAMES, st.integers(min_value=-2, max_value=1 << 65) | JSON_VALUES, max_size=5
)
MESSAGES = st.fixed_dictionaries(
    {"op": st.sampled_from(OPS) | JSON_VALUES},
    optional={
        "cpuid": st.integers(-2, 3) | JSON_VALUES,
        "vcpuid": st.integers(-2, 3) | JSON_VALUES,
        "regs": REGISTERS | JSON_VALUES,
        "in": st.sampled_from(["", "aGk=", "***", "a" * 8]) | JSON_VALUES,
        "out_size": st.integers(-1, 1 << 20) | JSON_VALUES,
    },
)


def _line_of(message: object) -> bytes:
    if isinstance(message, bytes):
        return message
    try:
        return json.dumps(message, allow_nan=True).encode("utf-8", "surrogatepass") + b"\n"
    except (ValueError, TypeError):
        return b"{}\n"


LINES = st.one_of(
    MESSAGES.map(_line_of),
    JSON_VALUES.map(_line_of),
    st.binary(max_size=64).map(lambda b: b.replace(b"\n", b"") + b"\n"),
)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bfm]:
    bfm = Bfm(tmp_path_factory.mktemp("fuzz") / "run")
    process = bfm.service("--vcpus", "2", "--vmcall-timeout", "5")
    yield bfm
    bfm("stop")
    process.wait(30)


def _exchange(bfm: Bfm, line: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(os.fspath(bfm.runtime / "vmm.sock"))
        sock.sendall(line)
        with sock.makefile("rb") as stream:
            first, rest = stream.readline(), stream.read()
    assert first.endswith(b"\n") and rest == b"", (line[:80], first[:200], rest[:80])
    reply = protocol.loads(first)  # standard JSON only: NaN or Infinity would raise
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert isinstance(reply.get("error"), str) and "\n" not in reply["error"], reply
    return reply


def _fuzz_socket(bfm: Bfm, examples: int, capsys: pytest.CaptureFixture[str]) -> None:
    fuzz(LINES, lambda line: _exchange(bfm, line), examples, "service messages", capsys)
    assert bfm("status").out == "VMM_RUNNING"
    assert bfm("vmcall", "string", "unformatted", "still here").out == (
        "received from vmm: still here"
    )


def test_fuzz_the_service_socket(service: Bfm, capsys: pytest.CaptureFixture[str]) -> None:
    _fuzz_socket(service, SHORT, capsys)


@pytest.mark.slow
def test_fuzz_the_service_socket_long(service: Bfm, capsys: pytest.CaptureFixture[str]) -> None:
    _fuzz_socket(service, LONG, capsys)
