"""VMCALL DATA: every rule, asserting registers, RIP and untouched memory."""

import json

import pytest
from vmcall_helpers import (
    BUFFERS_GVA,
    IN_GVA,
    OUT_GVA,
    OUT_SIZE,
    buffer_harness,
    data_call,
    get,
    gva_to_gpa,
    put,
    vmcall,
)

from pyflank.abi import (
    BF_VMCALL_FAILURE,
    BF_VMCALL_SUCCESS,
    VMCALL_IN_BUFFER_SIZE,
    VMCALL_OUT_BUFFER_SIZE,
    VmcallDataType,
    VmcallOpcode,
)
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.memory import GuestVirtualRange
from pyflank.testing import HARNESS_RIP, ExitHarness


def changed_gpas(before: bytes, after: bytes) -> set[int]:
    return {i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}


def out_gpas(length: int) -> set[int]:
    return {gva_to_gpa(OUT_GVA + i) for i in range(length)}


def run_data(h: ExitHarness, kind: int, payload: bytes, **kw: int) -> set[int]:
    put(h, IN_GVA, payload)
    before = h.memory.read(0, h.memory.size)
    data_call(h, kind, payload, **kw)
    return changed_gpas(before, h.memory.read(0, h.memory.size))


def test_string_echo_across_pages() -> None:
    h = buffer_harness()
    changed = run_data(h, VmcallDataType.STRING_UNFORMATTED, b"hello from the guest!")
    assert h.state.rdx == BF_VMCALL_SUCCESS
    assert h.state.r10 == VmcallDataType.STRING_UNFORMATTED  # r07
    assert h.state.r12 == 21  # r09
    assert get(h, OUT_GVA, 21) == b"hello from the guest!"
    assert changed <= out_gpas(21)
    assert h.state.rip == HARNESS_RIP + 3


def test_json_echo_compact() -> None:
    h = buffer_harness()
    changed = run_data(h, VmcallDataType.STRING_JSON, b'{ "a" : [1, 2] }')
    reply = b'{"a":[1,2]}'
    assert h.state.rdx == BF_VMCALL_SUCCESS
    assert (h.state.r10, h.state.r12) == (VmcallDataType.STRING_JSON, len(reply))
    assert get(h, OUT_GVA, len(reply)) == reply
    assert changed <= out_gpas(len(reply))


def test_binary_copies_in_to_out() -> None:
    h = buffer_harness()
    payload = bytes(range(256)) * 2
    changed = run_data(h, VmcallDataType.BINARY_UNFORMATTED, payload[:0x20], out_size=0x40)
    assert h.state.rdx == BF_VMCALL_SUCCESS
    assert (h.state.r10, h.state.r12) == (VmcallDataType.BINARY_UNFORMATTED, 0x20)
    assert get(h, OUT_GVA, 0x20) == payload[:0x20]
    assert changed <= out_gpas(0x20)


def test_extension_replies_with_json() -> None:
    class Calc(ExitHandlerIntelX64):
        def handle_vmcall_data_string_json(self, ijson: object) -> object:
            assert isinstance(ijson, dict)
            return {"sum": sum(ijson["add"])}

    h = ExitHarness(Calc)
    for i, gpa in enumerate((0x300000, 0x280000, 0x2C0000)):
        h.page_tables.map(BUFFERS_GVA + i * 0x1000, gpa, 0x1000)
    run_data(h, VmcallDataType.STRING_JSON, json.dumps({"add": [1, 2, 39]}).encode())
    assert get(h, OUT_GVA, h.state.r12) == b'{"sum":42}'


SLOT_GPR = {"r04": "rsi", "r05": "r08", "r06": "r09", "r07": "r10", "r08": "r11", "r09": "r12"}


def failing(h: ExitHarness, **regs: int) -> None:
    """The vmcall fails, the guest gets its registers back unchanged, memory is untouched."""
    before = h.memory.read(0, h.memory.size)
    vmcall(h, VmcallOpcode.DATA, **regs)
    assert h.state.rdx == BF_VMCALL_FAILURE
    assert h.state.rax == VmcallOpcode.DATA
    assert h.state.rip == HARNESS_RIP + 3
    for slot, value in regs.items():
        assert getattr(h.state, SLOT_GPR[slot]) == value, slot
    assert h.memory.read(0, h.memory.size) == before


GOOD = {
    "r04": VmcallDataType.STRING_UNFORMATTED,
    "r05": IN_GVA,
    "r06": 4,
    "r07": 0,
    "r08": OUT_GVA,
    "r09": OUT_SIZE,
}


@pytest.mark.parametrize(
    "override",
    [
        {"r05": 0},  # null input address
        {"r08": 0},  # null output address
        {"r06": 0},  # zero input size
        {"r09": 0},  # zero output size
        {"r06": 8, "r09": 4},  # out < in
        {"r06": VMCALL_IN_BUFFER_SIZE + 1, "r09": VMCALL_OUT_BUFFER_SIZE},
        {"r09": VMCALL_OUT_BUFFER_SIZE + 1},
        {"r04": 0},  # type NONE
        {"r04": 7},  # unknown type
        {"r05": 0x0000_7000_0000_0000},  # unmapped input
        {"r08": 0x0000_7000_0000_0000},  # unmapped output
        {"r05": 0x8000_0000_0000_0000},  # non-canonical
        {"r08": BUFFERS_GVA + 0x2F00, "r09": 0x200},  # runs into an unmapped page
    ],
)
def test_data_rejections(override: dict[str, int]) -> None:
    h = buffer_harness()
    put(h, IN_GVA, b"ping")
    failing(h, **{**GOOD, **override})


def test_read_only_output_page() -> None:
    h = buffer_harness()
    put(h, IN_GVA, b"ping")
    h.page_tables.protect(BUFFERS_GVA + 0x2000, 0x1000, writable=False)
    failing(h, **GOOD)


def test_read_only_input_page_is_fine() -> None:
    h = buffer_harness()
    put(h, IN_GVA, b"ping")
    h.page_tables.protect(BUFFERS_GVA, 0x1000, writable=False)  # first input page
    vmcall(h, VmcallOpcode.DATA, **GOOD)
    assert h.state.rdx == BF_VMCALL_SUCCESS


def test_invalid_json() -> None:
    h = buffer_harness()
    put(h, IN_GVA, b"{bad")
    failing(h, **{**GOOD, "r04": VmcallDataType.STRING_JSON})


def test_reply_too_long_writes_nothing() -> None:
    class Verbose(ExitHandlerIntelX64):
        def handle_vmcall_data_string_unformatted(self, istr: str) -> str:
            return istr * 200

    h = ExitHarness(Verbose)
    for i, gpa in enumerate((0x300000, 0x280000, 0x2C0000)):
        h.page_tables.map(BUFFERS_GVA + i * 0x1000, gpa, 0x1000)
    put(h, IN_GVA, b"ping")
    failing(h, **GOOD)


def test_binary_handler_sees_ranges() -> None:
    seen: list[tuple[int, int]] = []

    class Spy(ExitHandlerIntelX64):
        def handle_vmcall_data_binary_unformatted(
            self, imap: GuestVirtualRange, omap: GuestVirtualRange
        ) -> None:
            seen.append((len(imap), len(omap)))
            omap.write(imap.read()[::-1])

    h = ExitHarness(Spy)
    for i, gpa in enumerate((0x300000, 0x280000, 0x2C0000)):
        h.page_tables.map(BUFFERS_GVA + i * 0x1000, gpa, 0x1000)
    data_call(h, VmcallDataType.BINARY_UNFORMATTED, b"abc", out_size=0x10)
    assert seen == [(3, 0x10)]
    assert get(h, OUT_GVA, 3) == b"cba"
