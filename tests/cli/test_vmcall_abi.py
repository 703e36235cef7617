"""bfm's quick commands read the vmcall ABI from a module generated from pyflank.abi (it
imports nothing); the checked-in module is current, and a stale one is reported."""

from pathlib import Path

from pyflank import abi
from pyflank.cli import abi_header, vmcall_abi


def test_the_checked_in_module_is_current() -> None:
    assert abi_header.is_current(), "stale: run python -m pyflank.cli.abi_header"
    assert abi_header.main(["--check"]) == 0


def test_a_stale_module_is_reported(tmp_path: Path) -> None:
    stale = tmp_path / abi_header.NAME
    assert not abi_header.is_current(stale)  # missing
    stale.write_text(abi_header.render().replace('"DATA": 3', '"DATA": 9'))
    assert not abi_header.is_current(stale)
    stale.write_text(abi_header.render())
    assert abi_header.is_current(stale)


def test_it_says_what_the_abi_says() -> None:
    assert vmcall_abi.MAGIC_NUMBER == abi.VMCALL_MAGIC_NUMBER
    assert vmcall_abi.OPCODES["DATA"] == abi.VmcallOpcode.DATA
    assert vmcall_abi.INPUTS["DATA"]["out_size"] == abi.DATA.index("out_size")
    assert vmcall_abi.SLOTS == abi.SLOTS
