"""Any register values at a VMCALL exit: dispatch never raises, memory stays put."""

from hypothesis import given
from hypothesis import strategies as st
from vmcall_helpers import IN_GVA, OUT_GVA, buffer_harness

from pyflank.abi import VMCALL_MAGIC_NUMBER, VmcallDataType, VmcallOpcode
from pyflank.memory import PageFault, map_guest_virtual

U64 = st.integers(0, 2**64 - 1)
ADDRESSES = st.one_of(
    st.sampled_from([0, IN_GVA, OUT_GVA, OUT_GVA + 0x100, 0x1000, 0x3FF000, 0x8000_0000_0000_0000]),
    U64,
)
SIZES = st.one_of(st.integers(0, 0x400), st.sampled_from([32 * 4096, 32 * 4096 + 1]), U64)
REGISTERS = st.fixed_dictionaries(
    {
        "rax": st.one_of(st.sampled_from(list(VmcallOpcode)), U64),
        "rdx": st.one_of(st.just(VMCALL_MAGIC_NUMBER), U64),
        "rcx": st.one_of(st.integers(0, 12), U64),
        "rsi": st.one_of(st.sampled_from(list(VmcallDataType)), U64),
        "r08": ADDRESSES,
        "r09": SIZES,
        "r10": U64,
        "r11": ADDRESSES,
        "r12": SIZES,
        "rbx": U64,
        "r13": U64,
        "r14": U64,
        "r15": U64,
    }
)

# Mostly well-formed DATA calls, so the property covers the paths that do write.
DATA_CALLS = REGISTERS.flatmap(
    lambda r: st.fixed_dictionaries(
        {
            **{k: st.just(v) for k, v in r.items()},
            "rax": st.just(int(VmcallOpcode.DATA)),
            "rdx": st.just(VMCALL_MAGIC_NUMBER),
            "rsi": st.sampled_from(list(VmcallDataType)),
            "r08": st.just(IN_GVA),
            "r09": st.integers(1, 16),
            "r11": st.integers(OUT_GVA - 0x20, OUT_GVA + 0x20),
            "r12": st.integers(0, 0x40),
        }
    )
)

HARNESS = buffer_harness()


@given(st.one_of(REGISTERS, DATA_CALLS), st.binary(max_size=64))
def any_vmcall_is_safe(registers: dict[str, int], payload: bytes) -> None:
    h = HARNESS
    h.memory.write(0x300FF0, payload[:16])
    h.vmcs.processor_write(0x440C, 3)
    h.state.update(registers)
    before = h.memory.read(0, h.memory.size)
    # Where the output buffer lies, found before the call: the guest may name its own
    # page tables as the buffer, and then the reply rewrites the mapping itself.
    try:
        out = map_guest_virtual(
            h.memory, h.page_tables.cr3, h.state.r11, h.state.r12, writable=True
        )
    except (PageFault, ValueError):
        out = None
    h.exit(18, length=3)
    assert h.vmcs.running
    after = h.memory.read(0, h.memory.size)
    h.memory.write(0, before)  # the next example starts from intact page tables
    if before == after:
        return
    # Something was written: it must lie inside the output buffer the guest named.
    assert out is not None, "memory changed without a mappable output buffer"
    expected = bytearray(before)
    for gpa, n in out.chunks:
        expected[gpa : gpa + n] = after[gpa : gpa + n]
    assert expected == after
    WROTE.append(1)


WROTE: list[int] = []


def test_the_property_saw_writes() -> None:
    any_vmcall_is_safe()
    assert WROTE, "no generated vmcall ever wrote memory: the property tested nothing"
