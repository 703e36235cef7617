"""Every vmcall opcode through the guest SDK, successes and failures, as the guest sees them."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
from emu_helpers import RUNTIME, SDK, cpuid_exits, run, run1

import pyflank
from pyflank.abi import BF_VMCALL_FAILURE, VMCALL_VERSION
from pyflank.backends.base import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.memory import PAGE_SIZE_4K
from pyflank.vmm import Vm


def program(body: str) -> str:
    return SDK + "    PYFLANK_INIT\n" + body + "\n    PYFLANK_HALT\n" + RUNTIME


class UserVersion(ExitHandlerIntelX64):
    USER_VERSION: ClassVar[tuple[int, int, int]] = (7, 8, 9)


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (0, (VMCALL_VERSION, 0, 0)),
        (1, (pyflank.VERSION_MAJOR, pyflank.VERSION_MINOR, pyflank.VERSION_PATCH)),
        (10, (7, 8, 9)),
    ],
)
def test_versions(index: int, expected: tuple[int, int, int]) -> None:
    _, result = run1(program(f"VMCALL_VERSIONS {index}"), UserVersion)
    s = result.state
    assert s.rdx == 0
    assert (s.rbx, s.rsi, s.r08) == expected
    assert result.reason is StopReason.GUEST_HLT


def test_versions_unknown_index_fails() -> None:
    _, result = run1(program("mov rbx, 0x55\n VMCALL_VERSIONS 5"))
    assert result.state.rdx == BF_VMCALL_FAILURE
    assert result.state.rbx == 0x55  # registers come back as the guest sent them
    assert "unknown vmcall version index" in result.debug_ring


def test_registers_are_logged() -> None:
    body = "mov rcx, 0x1111\n mov rbx, 0x2222\n mov r15, 0xfeedface\n VMCALL_REGISTERS"
    _, result = run1(program(body))
    assert result.state.rdx == 0
    assert "vmcall registers:\nr02: 0x1111\nr03: 0x2222\n" in result.debug_ring
    assert "r12: 0xfeedface\n" in result.debug_ring


def test_event_start_stop() -> None:
    body = (
        "VMCALL_EVENT 0x42\n mov r8, rdx\n VMCALL_START\n mov r9, rdx\n VMCALL_STOP\n mov r10, rdx"
    )
    _, result = run1(program(body))
    s = result.state
    assert (s.r08, s.r09, s.r10) == (0, 0, 0)
    assert "vmcall event:\nr02: 0x42\n" in result.debug_ring


def test_unittests_pass_and_unknown_fails() -> None:
    body = "VMCALL_UNITTEST 1\n mov r8, rdx\n VMCALL_UNITTEST 2\n mov r9, rdx\n VMCALL_UNITTEST 99"
    _, result = run1(program(body))
    s = result.state
    assert (s.r08, s.r09) == (0, 0)
    assert s.rdx == BF_VMCALL_FAILURE
    assert "vmm unittest 1" in result.debug_ring and "vmm unittest 2" in result.debug_ring


def test_bad_magic_and_unknown_opcode_fail() -> None:
    # pyflank_vmcall: the SDK's raw call, by VMCALL or the doorbell (whichever CPUID offers).
    body = """
        mov rax, 1
        mov rdx, 0x1234
        call pyflank_vmcall
        mov r8, rdx
        mov rax, 77
        mov rdx, PYFLANK_MAGIC
        call pyflank_vmcall
        mov r9, rdx
    """
    _, result = run1(program(body))
    assert (result.state.r08, result.state.r09) == (BF_VMCALL_FAILURE, BF_VMCALL_FAILURE)
    assert result.exits == cpuid_exits(1) + 2  # PYFLANK_INIT's CPUID and the two vmcalls


# -- DATA through a non-identity mapping, buffers straddling a page boundary ------------

WINDOW_GVA = 0x4000_0000  # not identity mapped: backed by DATA_GPA
DATA_GPA = 0x30_0000
IN_GVA = WINDOW_GVA + PAGE_SIZE_4K - 0x13
OUT_GVA = WINDOW_GVA + 3 * PAGE_SIZE_4K - 0x21
COPY_GPA = 0x28_0000  # identity mapped: where the guest copies what it read back


def _map_window(vm: Vm) -> None:
    vm.page_tables.map(WINDOW_GVA, DATA_GPA, 6 * PAGE_SIZE_4K)


def _data_program(kind: int, payload: bytes, out_size: int) -> str:
    stores = "\n".join(f"    mov byte ptr [rdi + {i}], {b}" for i, b in enumerate(payload))
    return program(
        f"""
        mov rdi, {IN_GVA:#x}
{stores}
        VMCALL_DATA {kind}, {IN_GVA:#x}, {len(payload)}, {OUT_GVA:#x}, {out_size}
        mov r13, rdx
        mov r14, r10
        mov r15, r12
        mov rsi, {OUT_GVA:#x}
        mov rdi, {COPY_GPA:#x}
        mov rcx, r12
        cld
        rep movsb
        """
    )


def _run_data(kind: int, payload: bytes, out_size: int = 0x80) -> tuple[Vm, int, int, bytes]:
    vm, [result] = run(_data_program(kind, payload, out_size), setup=_map_window)
    s = result.state
    assert result.reason is StopReason.GUEST_HLT, result.message
    reply = vm.memory.read(COPY_GPA, s.r15 if s.r13 == 0 else 0)
    return vm, s.r13, s.r14, reply


def test_data_string_echoes_across_pages() -> None:
    _, status, kind, reply = _run_data(1, b"hello from the guest")
    assert (status, kind) == (0, 1)
    assert reply == b"hello from the guest"


def test_data_json_echoes() -> None:
    payload = json.dumps({"cmd": "ping", "n": [1, 2, 3]}).encode()
    _, status, kind, reply = _run_data(2, payload)
    assert (status, kind) == (0, 2)
    assert json.loads(reply) == {"cmd": "ping", "n": [1, 2, 3]}


def test_data_binary_copies() -> None:
    payload = bytes(range(0, 250, 7))
    _, status, kind, reply = _run_data(10, payload)
    assert (status, kind) == (0, 10)
    assert reply == payload


class Shout(ExitHandlerIntelX64):
    def handle_vmcall_data_string_unformatted(self, istr: str) -> str:
        return istr.upper()


def test_data_string_reply_from_a_subclass() -> None:
    vm, [result] = run(_data_program(1, b"quiet", 0x40), Shout, setup=_map_window)
    assert result.state.r13 == 0
    assert vm.memory.read(COPY_GPA, 5) == b"QUIET"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("VMCALL_DATA 1, 0, 4, 0x280000, 16", "null buffer"),
        ("VMCALL_DATA 1, 0x280000, 0, 0x280100, 16", "zero buffer size"),
        ("VMCALL_DATA 1, 0x280000, 32, 0x280100, 16", "output buffer smaller"),
        ("VMCALL_DATA 7, 0x280000, 4, 0x280100, 16", "unknown data type"),
        ("VMCALL_DATA 1, 0x50000000, 4, 0x280100, 16", "PageFault"),
    ],
)
def test_data_failures(call: str, message: str) -> None:
    _, result = run1(program(call))
    assert result.state.rdx == BF_VMCALL_FAILURE
    assert message in result.debug_ring
