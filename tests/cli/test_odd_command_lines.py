"""Every odd bfm command line answers with one line and a non-zero exit, never a
traceback or a hang (issue 11 defect 8): a table of them in-process, the ones that
depend on how the OS hands over arguments through the real process."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from bfm_helpers import Bfm
from odd_inputs import SURROGATE, make, odd_command_lines

from pyflank.cli.bfm import main

_ROOT = Path("/nonexistent-odd-inputs")  # the table's shape; tests build the real one
LINES = odd_command_lines(_ROOT)


def run_in_process(argv: list[str], timeout: float = 30) -> int | str:
    """main(argv) on a thread: its exit status, or what went wrong (a hang, a raise)."""
    outcome: list[int | str] = []

    def call() -> None:
        try:
            outcome.append(main(argv))
        except BaseException as exc:  # noqa: BLE001 - what the test reports
            outcome.append(f"raised {type(exc).__name__}: {exc}")

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else "hung"


@pytest.fixture(scope="module", autouse=True)
def _probe_in_the_main_thread() -> None:
    """``--backend auto`` probes KVM, whose first VM must be made on the main thread
    (the real bfm runs there; the table runs bfm on a worker thread)."""
    from pyflank.backends.kvm.platform import measured_capabilities

    measured_capabilities()


@pytest.fixture
def odd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYFLANK_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd").mkdir()
    return make(tmp_path / "odd")


def test_the_table_is_long_enough() -> None:
    assert len(LINES) >= 111


@pytest.mark.parametrize("index", range(len(LINES)))
def test_an_odd_command_line_gets_one_line_and_a_nonzero_exit(
    index: int, odd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace(str(_ROOT), str(odd)) for a in odd_command_lines(_ROOT)[index]]
    code = run_in_process(argv)
    err = capsys.readouterr().err
    shown = [a[:60] for a in argv[:4]]
    assert isinstance(code, int), (shown, code)
    assert code != 0, (shown, err)
    assert err.startswith("bfm: ") and len(err.splitlines()) == 1, (shown, err)


@pytest.mark.parametrize(
    "args",
    [
        (b"\xff",),
        (b"load", b"\xff\xfe.py"),
        (b"vmcall", b"string", b"json", b'"\xff"'),
        (b"vmcall", b"registers", b"\xff"),
        (b"run", b"\xc3\x28.s"),
        (b"--backend", b"\xff", b"start"),
    ],
)
def test_arguments_that_are_not_utf8_through_the_real_process(
    args: tuple[bytes, ...], tmp_path: Path
) -> None:
    assert Bfm(tmp_path / "run").fails(*args, timeout=30)


def test_a_successful_command_can_print_what_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / f"ext{SURROGATE}.py").write_text(
        "from pyflank.exit_handler import ExitHandlerIntelX64\nclass E(ExitHandlerIntelX64): pass\n"
    )
    result = Bfm(tmp_path / "run")("load", str(tmp_path).encode() + b"/ext\xff\xfe.py")
    assert result.code == 0, result
    assert result.out.startswith("loaded E from")
