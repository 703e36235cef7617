"""What Bareflank 1.1's exit handler did, observably, and pyflank does the same: the
debug-ring text of halt(), unimplemented_handler() and the vmcall handlers, RIP at
VMXOFF, the registers a vmcall writes, the unknown-reason string, JSON replies.

The expected texts are written out here from Bareflank v1.1.0's
exit_handler_intel_x64.cpp (bferror/bfdebug lines, hex through view_as_pointer),
not computed from pyflank's code.
"""

from __future__ import annotations

import pytest
from vmcall_helpers import OUT_GVA, buffer_harness, data_call, get, vmcall

from pyflank.abi import (
    BF_VMCALL_FAILURE,
    BF_VMCALL_SUCCESS,
    VmcallDataType,
    VmcallOpcode,
    VmcallRegisters,
)
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.exit_handler.differences import (
    BAREFLANK_1_1_EXIT_REASONS,
    DIFFERENCES,
    differences_table,
)
from pyflank.exit_handler.exit_handler_intel_x64 import bareflank_json
from pyflank.intel_x64 import exit_reasons
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import VmcsState
from pyflank.testing import HARNESS_RIP, HARNESS_RSP, ExitHarness

RULE = "-" * 52
HALT_REPORT = f"""

Guest register state: 
{RULE}
- m_state_save->rax: 0xbeef
- m_state_save->rbx: 0x0
- m_state_save->rcx: 0x1
- m_state_save->rdx: 0xffffffffffffffff
- m_state_save->rbp: 0x0
- m_state_save->rsi: 0x0
- m_state_save->rdi: 0x0
- m_state_save->r08: 0x0
- m_state_save->r09: 0x0
- m_state_save->r10: 0x0
- m_state_save->r11: 0x0
- m_state_save->r12: 0x0
- m_state_save->r13: 0x0
- m_state_save->r14: 0x0
- m_state_save->r15: 0x10
- m_state_save->rip: {HARNESS_RIP:#x}
- m_state_save->rsp: {HARNESS_RSP:#x}


CPU Halted: 
{RULE}
- vcpuid: 0


"""  # noqa: W291 - Bareflank's headings end in a space
UNIMPLEMENTED_REPORT = f"""

Unimplemented Exit Handler: 
{RULE}
- exit reason: 0xc
- exit reason string: hlt
- exit qualification: 0x55
- exit interrupt information: 0x0
- instruction length: 0x1
- instruction information: 0x0
- guest linear address: 0x1234
- guest physical address: 0x0
"""  # noqa: W291


def test_halt_prints_bareflanks_register_report() -> None:
    h = ExitHarness()
    h.state.update({"rax": 0xBEEF, "rcx": 1, "rdx": (1 << 64) - 1, "r15": 0x10})
    h.handler.halt()
    assert h.debug_ring == HALT_REPORT
    assert h.vmcs.state is VmcsState.HALTED


def test_unimplemented_handler_prints_bareflanks_exit_report_then_halts() -> None:
    h = ExitHarness()
    h.vmcs.processor_write(f.GUEST_LINEAR_ADDRESS, 0x1234)
    h.exit(ExitReason.HLT, length=1, qualification=0x55, rax=0xBEEF, rcx=1, rdx=(1 << 64) - 1,
           r15=0x10)  # fmt: skip
    assert h.debug_ring == UNIMPLEMENTED_REPORT + HALT_REPORT


def test_vm_entry_failure_is_announced_as_bareflank_did() -> None:
    h = ExitHarness()
    h.exit(ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE | exit_reasons.VM_ENTRY_FAILURE)
    ring = h.debug_ring
    assert "- exit reason: 0x80000021\n" in ring
    assert "- exit reason string: vm_entry_failure_invalid_guest_state\n" in ring
    assert "\n\nVM-entry failure detected!!!\n\n" in ring
    assert ring.index("VM-entry failure detected") < ring.index("Guest register state")


@pytest.mark.parametrize("reason", [35, 0xBEEF, 0xFFFF])
def test_a_reason_the_sdm_does_not_define_is_unknown(reason: int) -> None:
    h = ExitHarness()
    h.exit(reason)
    assert f"- exit reason: {reason:#x}\n- exit reason string: unknown\n" in h.debug_ring


def test_vmxoff_promotes_with_rip_at_the_vmxoff() -> None:
    h = ExitHarness()
    h.exit(ExitReason.VMXOFF, length=3, rax=0x11)
    assert h.vmcs.state is VmcsState.PROMOTED
    assert (h.state.rip, h.state.rax) == (HARNESS_RIP, 0x11)


@pytest.mark.parametrize(
    ("opcode", "magic"),
    [
        (VmcallOpcode.VERSIONS, None),
        (VmcallOpcode.REGISTERS, None),
        (VmcallOpcode.EVENT, None),
        (0x99, None),  # unknown opcode: BF_VMCALL_FAILURE
        (VmcallOpcode.VERSIONS, 0x1234),  # wrong magic: BF_VMCALL_FAILURE
    ],
)
def test_a_vmcall_never_writes_rax(opcode: int, magic: int | None) -> None:
    h = ExitHarness()
    kwargs = {} if magic is None else {"magic": magic}
    vmcall(h, opcode, r02=0, **kwargs)
    assert h.state.rax == opcode
    assert h.state.rdx in (BF_VMCALL_SUCCESS, BF_VMCALL_FAILURE)
    assert h.state.rip == HARNESS_RIP + 3


def test_event_is_told_apart_by_the_opcode_in_rax() -> None:
    h = ExitHarness()
    h.state.update({"rax": VmcallOpcode.EVENT, "rbx": 0x33})
    regs = VmcallRegisters(r00=VmcallOpcode.REGISTERS, r02=0x22, r03=0x44)
    h.handler.complete_vmcall(BF_VMCALL_SUCCESS, regs)
    assert (h.state.rcx, h.state.rbx, h.state.rax) == (0x22, 0x33, VmcallOpcode.EVENT)


def test_vmcall_registers_and_event_text() -> None:
    h = ExitHarness()
    vmcall(h, VmcallOpcode.REGISTERS, r02=0xBEEF, r03=0, r12=0x1C)
    lines = ["vmcall registers:", "r02: 0xbeef", "r03: 0x0"]
    lines += [f"r{i:02d}: 0x0" for i in range(4, 12)] + ["r12: 0x1c"]
    assert h.debug_ring == "\n".join(lines) + "\n"
    h.handler.m_debug_ring.clear()
    vmcall(h, VmcallOpcode.EVENT, r02=0x42)
    assert h.debug_ring == "vmcall event:\nr02: 0x42\n"


def test_json_reply_orders_keys_and_escapes_as_nlohmann_json() -> None:
    class Reply(ExitHandlerIntelX64):
        def handle_vmcall_data_string_json(self, ijson: object) -> object:
            return {"zeta": 1, "alpha": {"b": [True, None], "a": 'é\n\t"/\\\x01'}, "Beta": -2}

    h = buffer_harness(Reply)
    data_call(h, VmcallDataType.STRING_JSON, b"{}")
    reply = '{"Beta":-2,"alpha":{"a":"é\\n\\t\\"/\\\\\\u0001","b":[true,null]},"zeta":1}'
    assert h.state.rdx == BF_VMCALL_SUCCESS
    assert get(h, OUT_GVA, h.state.r12) == reply.encode()


def test_json_log_line_is_compact_and_ordered() -> None:
    h = buffer_harness()
    data_call(h, VmcallDataType.STRING_JSON, b'{ "b" : 1, "a" : [1, 2] }')
    assert 'received in vmm: {"a":[1,2],"b":1}\n' in h.debug_ring


def test_binary_data_is_announced() -> None:
    h = buffer_harness()
    data_call(h, VmcallDataType.BINARY_UNFORMATTED, b"\x00\x01")
    assert h.debug_ring == "received binary data\n"


def test_keys_sort_by_their_utf8_bytes() -> None:
    assert bareflank_json({"é": 1, "z": 2, "Z": 3, "\udcff": 4}) == '{"Z":3,"z":2,"é":1,"\udcff":4}'
    assert bareflank_json({1: "a", "0": "b"}) == '{"0":"b","1":"a"}'


def test_exit_reasons_bareflank_did_not_name_are_a_documented_difference() -> None:
    newer = sorted(set(exit_reasons.ExitReason) - BAREFLANK_1_1_EXIT_REASONS)
    assert newer and all(reason >= 60 for reason in newer)
    assert any("unknown" in d.bareflank for d in DIFFERENCES)
    assert str(int(newer[0])) in differences_table()
