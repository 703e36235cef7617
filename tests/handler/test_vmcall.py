"""The VMCALL handler and every opcode."""

import pytest
from vmcall_helpers import vmcall

import pyflank
from pyflank.abi import (
    BF_VMCALL_FAILURE,
    BF_VMCALL_SUCCESS,
    VmcallOpcode,
    VmcallRegisters,
    VmcallVersionIndex,
)
from pyflank.exit_handler import ExitHandlerIntelX64, vmm_unittest
from pyflank.testing import HARNESS_RIP, ExitHarness

ALL_GPRS = {
    "rax": 0, "rbx": 0x13, "rcx": 0x12, "rsi": 0x14, "rbp": 0xBB, "rdi": 0xDD,
    "r08": 0x15, "r09": 0x16, "r10": 0x17, "r11": 0x18, "r12": 0x19, "r13": 0x1A,
    "r14": 0x1B, "r15": 0x1C,
}  # fmt: skip


def test_wrong_magic_fails_and_leaves_registers() -> None:
    h = ExitHarness()
    vmcall(h, VmcallOpcode.VERSIONS, magic=0x1234, r02=0, r03=0x77)
    assert h.state.rdx == BF_VMCALL_FAILURE
    assert (h.state.rax, h.state.rcx, h.state.rbx) == (VmcallOpcode.VERSIONS, 0, 0x77)
    assert h.state.rip == HARNESS_RIP + 3
    assert "magic" in h.debug_ring


def test_unknown_opcode_fails() -> None:
    h = ExitHarness()
    vmcall(h, 0x99)
    assert h.state.rdx == BF_VMCALL_FAILURE
    assert h.state.rip == HARNESS_RIP + 3


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (VmcallVersionIndex.PROTOCOL, (1, 0, 0)),
        (
            VmcallVersionIndex.BAREFLANK,
            (pyflank.VERSION_MAJOR, pyflank.VERSION_MINOR, pyflank.VERSION_PATCH),
        ),
        (VmcallVersionIndex.USER, (0, 0, 0)),
    ],
)
def test_versions(index: int, expected: tuple[int, int, int]) -> None:
    h = ExitHarness()
    vmcall(h, VmcallOpcode.VERSIONS, r02=index)
    assert h.state.rdx == BF_VMCALL_SUCCESS
    assert (h.state.rbx, h.state.rsi, h.state.r08) == expected


def test_versions_user_is_set_by_a_subclass() -> None:
    class Mine(ExitHandlerIntelX64):
        USER_VERSION = (3, 1, 4)

    h = ExitHarness(Mine)
    vmcall(h, VmcallOpcode.VERSIONS, r02=VmcallVersionIndex.USER)
    assert (h.state.rbx, h.state.rsi, h.state.r08) == (3, 1, 4)


def test_versions_unknown_index_fails() -> None:
    h = ExitHarness()
    vmcall(h, VmcallOpcode.VERSIONS, r02=2, r03=0x55)
    assert h.state.rdx == BF_VMCALL_FAILURE
    assert h.state.rbx == 0x55


def test_registers_logs_r02_to_r12_and_writes_them_back() -> None:
    h = ExitHarness()
    h.exit(18, length=3, rdx=0xB045EACDACD52E22, **{**ALL_GPRS, "rax": VmcallOpcode.REGISTERS})
    ring = h.debug_ring
    assert "vmcall registers:\n" in ring
    for slot, value in [("r02", 0x12), ("r03", 0x13), ("r07", 0x17), ("r12", 0x1C)]:
        assert f"{slot}: {value:#x}\n" in ring
    assert h.state.rdx == BF_VMCALL_SUCCESS
    assert (h.state.rcx, h.state.r15, h.state.rbp, h.state.rdi) == (0x12, 0x1C, 0xBB, 0xDD)


def test_event_writes_back_only_rcx() -> None:
    class Evented(ExitHandlerIntelX64):
        def handle_vmcall_event(self, regs: VmcallRegisters) -> None:
            super().handle_vmcall_event(regs)
            regs.r02, regs.r03 = 0x42, 0x43

    h = ExitHarness(Evented)
    h.exit(18, length=3, rdx=0xB045EACDACD52E22, **{**ALL_GPRS, "rax": VmcallOpcode.EVENT})
    assert "vmcall event:\nr02: 0x12\n" in h.debug_ring
    assert h.state.rcx == 0x42
    assert (h.state.rax, h.state.rbx) == (VmcallOpcode.EVENT, 0x13)
    assert h.state.rdx == BF_VMCALL_SUCCESS


@pytest.mark.parametrize("opcode", [VmcallOpcode.START, VmcallOpcode.STOP])
def test_start_stop_do_nothing_by_default(opcode: int) -> None:
    h = ExitHarness()
    h.exit(18, length=3, rdx=0xB045EACDACD52E22, **{**ALL_GPRS, "rax": opcode})
    assert h.state.rdx == BF_VMCALL_SUCCESS
    assert (h.state.rcx, h.state.r15) == (0x12, 0x1C)


@pytest.mark.parametrize("index", [1, 2])
def test_builtin_unittests_pass(index: int) -> None:
    h = ExitHarness()
    vmcall(h, VmcallOpcode.UNITTEST, r02=index)
    assert h.state.rdx == BF_VMCALL_SUCCESS
    assert f"vmm unittest {index}" in h.debug_ring


def test_builtin_unittest_detects_unmapped_stack() -> None:
    h = ExitHarness()
    vmcall(h, VmcallOpcode.UNITTEST, r02=2, rsp=0x0000_5000_0000_0000)
    assert h.state.rdx == BF_VMCALL_FAILURE


def test_unknown_unittest_fails() -> None:
    h = ExitHarness()
    vmcall(h, VmcallOpcode.UNITTEST, r02=0x1000)
    assert h.state.rdx == BF_VMCALL_FAILURE


def test_subclass_registers_unittests() -> None:
    class Tested(ExitHandlerIntelX64):
        @vmm_unittest(7)
        def must_see_r03(self, regs: VmcallRegisters) -> None:
            assert regs.r03 == 0x33

    h = ExitHarness(Tested)
    vmcall(h, VmcallOpcode.UNITTEST, r02=7, r03=0x33)
    assert h.state.rdx == BF_VMCALL_SUCCESS
    vmcall(h, VmcallOpcode.UNITTEST, r02=7, r03=0x34)
    assert h.state.rdx == BF_VMCALL_FAILURE
    vmcall(h, VmcallOpcode.UNITTEST, r02=1)  # inherited
    assert h.state.rdx == BF_VMCALL_SUCCESS


def test_complete_vmcall_can_be_called_later() -> None:
    h = ExitHarness()
    regs = VmcallRegisters(r00=VmcallOpcode.REGISTERS, r02=5, r12=9)
    h.state.rip = 0x5000
    h.vmcs.processor_write(0x440C, 3)  # VM-exit instruction length
    h.handler.complete_vmcall(BF_VMCALL_SUCCESS, regs)
    assert (h.state.rcx, h.state.r15, h.state.rdx, h.state.rip) == (5, 9, 0, 0x5003)


def test_register_mapping_matches_the_abi_table() -> None:
    from pyflank.abi import INTEL_X64_REGISTER_MAP

    h = ExitHarness()
    h.state.rax = VmcallOpcode.REGISTERS  # the opcode the guest called with
    values = {slot: 0x100 + i for i, (slot, _) in enumerate(INTEL_X64_REGISTER_MAP)}
    h.handler.complete_vmcall(0x77, VmcallRegisters(**values))
    for slot, register in INTEL_X64_REGISTER_MAP:
        # RDX carries the result and RAX, the opcode, is never written (Bareflank 1.1).
        expected = {"rdx": 0x77, "rax": VmcallOpcode.REGISTERS}.get(register, values[slot])
        assert getattr(h.state, register) == expected, register
