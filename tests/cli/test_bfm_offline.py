"""bfm commands that need no running VMM: help, load/unload, status, check, bad input."""

import json
from pathlib import Path

import pytest
from bfm_helpers import Bfm

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.vmcs_json import vmcs_to_json
from pyflank.testing import ExitHarness

EXTENSION = """
from pyflank.exit_handler import ExitHandlerIntelX64

class Masking(ExitHandlerIntelX64):
    USER_VERSION = (1, 2, 3)
"""


@pytest.fixture
def bfm(tmp_path: Path) -> Bfm:
    return Bfm(tmp_path / "run")


def test_help(bfm: Bfm) -> None:
    result = bfm("-h")
    assert result.code == 0
    assert result.out.startswith("Usage: bfm [OPTION]... load <extension>")
    assert "VMCall Commands:" in result.out
    assert "string json <json>" in result.out


def test_states_without_a_service(bfm: Bfm, tmp_path: Path) -> None:
    ext = tmp_path / "masking.py"
    ext.write_text(EXTENSION)
    assert bfm("status").out == "VMM_UNLOADED"
    assert bfm("load", str(ext)).code == 0
    assert bfm("status").out == "VMM_LOADED"
    assert bfm("stop").code == 0  # idempotent
    assert bfm("status").out == "VMM_LOADED"
    assert bfm("unload").code == 0
    assert bfm("unload").code == 0  # idempotent
    assert bfm("status").out == "VMM_UNLOADED"


def test_runtime_directory_is_private(bfm: Bfm, tmp_path: Path) -> None:
    bfm("load", "pyflank.exit_handler.exit_handler_intel_x64:ExitHandlerIntelX64")
    assert (bfm.runtime.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("frobnicate",), "unknown command: frobnicate"),
        (("vmcall", "--cpuid", "0", "teleport"), "unknown vmcall command: teleport"),
        (("vmcall", "versions", "0"), "not running"),
        (("vmcall", "registers", "12", "zz"), "malformed hex value: 'zz'"),
        (("vmcall", "string", "json", "{bad"), "invalid JSON"),
        (("vmcall", "data", "unformatted", "/nonexistent/in", "/tmp/out"), "cannot read"),
        (("vmcall", "versions"), "takes one index"),
        (("dump",), "not running"),
        (("load",), "load takes one extension"),
        (("load", "/nonexistent/ext.py"), "no such extension file"),
        (("load", "json"), "defines no ExitHandlerIntelX64 subclass"),
        (("load", "no_such_module_xyz"), "cannot import module"),
        (("--cpuid", "x1", "status"), "not a number"),
        (("--backend", "qemu", "start"), "invalid choice"),
        (("--frob", "status"), "unknown option: --frob"),
        (("--vcpus",), "--vcpus needs a value"),
        (("check", "/nonexistent.json"), "cannot read"),
    ],
)
def test_bad_input_gets_one_line_and_nonzero_exit(
    bfm: Bfm, args: tuple[str, ...], reason: str
) -> None:
    assert reason in bfm.fails(*args)


def test_oversized_data_file(bfm: Bfm, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (32 * 4096 + 1))
    assert "exceeds the 32-page limit" in bfm.fails(
        "vmcall", "data", "unformatted", str(big), str(tmp_path / "out")
    )


def test_modules_file_composes_handlers(bfm: Bfm, tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(EXTENSION)
    (tmp_path / "b.py").write_text(EXTENSION.replace("Masking", "Audit"))
    modules = tmp_path / "both.modules"
    modules.write_text(json.dumps({"modules": ["a.py", "b.py"]}))
    result = bfm("load", str(modules))
    assert result.code == 0 and "ComposedHandler" in result.out
    (tmp_path / "bad.modules").write_text("[1]")
    assert "expected" in bfm.fails("load", str(tmp_path / "bad.modules"))


def test_load_refuses_a_broken_extension(bfm: Bfm, tmp_path: Path) -> None:
    ext = tmp_path / "broken.py"
    ext.write_text("raise ImportError('nope')\n")
    assert "ImportError: nope" in bfm.fails("load", str(ext))
    assert bfm("status").out == "VMM_UNLOADED"


def test_check_valid_and_invalid_vmcs(bfm: Bfm, tmp_path: Path) -> None:
    h = ExitHarness()
    good = tmp_path / "good.json"
    good.write_text(vmcs_to_json(h.vmcs))
    result = bfm("check", str(good))
    assert result.code == 0 and "passes all" in result.out
    h.vmcs.write(f.GUEST_CR0, 1 << 31)
    bad = tmp_path / "bad.json"
    bad.write_text(vmcs_to_json(h.vmcs))
    result = bfm("check", str(bad))
    assert result.code == 1
    assert "[guest.cr0.pg_requires_pe]" in result.out
    assert result.err == f"bfm: {bad}: 2 VM-entry check violation(s)"
    (tmp_path / "junk.json").write_text("{}")
    assert "not a pyflank-vmcs document" in bfm.fails("check", str(tmp_path / "junk.json"))
