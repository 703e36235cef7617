"""The guest SDK headers are generated from pyflank.abi, and the checked-in ones are current."""

from pathlib import Path

import pytest

from pyflank import guests
from pyflank.abi import (
    INTEL_X64_REGISTER_MAP,
    SIGNATURES,
    VMCALL_MAGIC_NUMBER,
    VmcallOpcode,
    generate,
)
from pyflank.abi.registers import compile_loader, compile_storer
from pyflank.exit_handler import StateSave
from pyflank.platform.assemble import assemble


def test_checked_in_headers_are_current() -> None:
    stale = generate.stale(guests.directory())
    assert not stale, f"stale generated files {stale}: run python -m pyflank.abi.generate"


def test_a_stale_header_is_reported(tmp_path: Path) -> None:
    generate.write(tmp_path)
    assert generate.stale(tmp_path) == []
    header = tmp_path / "pyflank.h"
    header.write_text(header.read_text().replace("_DATA = 0x3", "_DATA = 0x9"))
    (tmp_path / "pyflank_abi.inc").unlink()
    assert sorted(generate.stale(tmp_path)) == ["pyflank.h", "pyflank_abi.inc"]
    assert generate.main(["--check", str(tmp_path)]) == 1
    assert generate.main([str(tmp_path)]) == 0
    assert generate.main(["--check", str(tmp_path)]) == 0


def test_headers_follow_the_abi() -> None:
    inc, header = guests.read("pyflank_abi.inc"), guests.read("pyflank.h")
    assert f".equ PYFLANK_MAGIC, {VMCALL_MAGIC_NUMBER:#x}" in inc
    assert f"#define PYFLANK_MAGIC UINT64_C({VMCALL_MAGIC_NUMBER:#x})" in header
    for opcode in VmcallOpcode:
        assert f".macro VMCALL_{opcode.name}" in inc
        assert f"pyflank_vmcall_{opcode.name.lower()}(" in header
    for slot, register in INTEL_X64_REGISTER_MAP:
        assert f"regs->{slot} = {register};" in header
    data = SIGNATURES[VmcallOpcode.DATA]
    assert "    mov r11, \\out_addr" in inc and data.slot("out_addr") == "r08"


def test_slot_macros_move_every_slot_through_the_map() -> None:
    """VMCALL_LOAD_SLOTS puts slot i (at base + 8 i) in the map's register for it."""
    from pyflank.vmm import Vm

    vm = Vm()
    base = 0x300000
    for i in range(16):
        vm.memory.write_u64(base + 8 * i, 0x1000 + i)
    vm.load_asm(f'.include "pyflank.inc"\n    mov rbp, {base:#x}\n    VMCALL_LOAD_SLOTS rbp\n'
                "    hlt\n    PYFLANK_RUNTIME\n")  # fmt: skip
    [result] = vm.run()
    for i, (_, register) in enumerate(INTEL_X64_REGISTER_MAP):
        assert getattr(result.state, register) == 0x1000 + i, register


def test_compiled_register_transfer_round_trips() -> None:
    state = StateSave()
    for i, (_, register) in enumerate(INTEL_X64_REGISTER_MAP):
        setattr(state, register, 0x500 + i)
    regs = compile_loader()(state)
    assert regs.as_tuple() == (*(0x500 + i for i in range(13)), 0, 0, 0)
    regs.r03, regs.r01 = 1 << 64 | 7, 99  # masked to 64 bits; r01 is not written back
    back = StateSave()
    compile_storer(("r02", "r03"))(regs, back, 0x1234)
    assert (back.rcx, back.rbx, back.rdx, back.rax) == (0x502, 7, 0x1234, 0)


@pytest.mark.parametrize("name", ["agent.s", "demo.s", "versions_loop.s"])
def test_guest_programs_assemble(name: str) -> None:
    head = "".join(
        f".equ {n}, 0x1000\n"
        for n in ("MAILBOX_BASE", "MAILBOX_SLOT", "MAILBOX_PORT", "BUFFERS", "CALLS", "COUNTS",
                  "PROTOCOL_MAJOR", "PYFLANK_MAJOR", "PYFLANK_MINOR")
    )  # fmt: skip
    assert assemble(head + guests.read(name))
