"""VMX instructions in the guest exit unconditionally, with instruction information."""

from __future__ import annotations

import pytest
from emu_helpers import Proc2, Recorder, controls, kvm_gap, run1, with_idt

from pyflank.backends.base import StopReason
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.invalidation import Invalidation, InveptType, InvvpidType

# register numbers of the SDM: RAX=0, RCX=1, RDX=2, RBX=3, RSP=4, RBP=5, RSI=6, RDI=7, R8=8
NO_INDEX, NO_BASE = 1 << 22, 1 << 27
ADDR64 = 2 << 7
DS = 3 << 15


@pytest.mark.parametrize(
    ("source", "reason", "length", "information", "qualification"),
    [
        ("vmlaunch", ExitReason.VMLAUNCH, 3, 0, 0),
        ("vmresume", ExitReason.VMRESUME, 3, 0, 0),
        ("vmclear [rbx + 0x10]", ExitReason.VMCLEAR, 5, ADDR64 | DS | NO_INDEX | 3 << 23, 0x10),
        ("vmptrld [rsi]", ExitReason.VMPTRLD, 3, ADDR64 | DS | NO_INDEX | 6 << 23, 0),
        ("vmptrst [rax + rcx*8 - 8]", ExitReason.VMPTRST, 5,
         3 | ADDR64 | DS | 1 << 18 | 0 << 23, 2**64 - 8),
        ("vmxon [r8]", ExitReason.VMXON, 5, ADDR64 | DS | NO_INDEX | 8 << 23, 0),
        ("vmread rax, rbx", ExitReason.VMREAD, 3, 1 << 10 | 0 << 3 | 3 << 28, 0),
        ("vmwrite rdx, rcx", ExitReason.VMWRITE, 3, 1 << 10 | 1 << 3 | 2 << 28, 0),
        ("vmread [rdi], rsi", ExitReason.VMREAD, 3, ADDR64 | DS | NO_INDEX | 7 << 23 | 6 << 28, 0),
        ("invept rax, [rbx]", ExitReason.INVEPT, 5, ADDR64 | DS | NO_INDEX | 3 << 23, 0),
        ("invvpid rcx, [rdx]", ExitReason.INVVPID, 5,
         ADDR64 | DS | NO_INDEX | 2 << 23 | 1 << 28, 0),
    ],
)  # fmt: skip
def test_vmx_instruction_exit(
    source: str, reason: ExitReason, length: int, information: int, qualification: int
) -> None:
    kvm_gap("vmx_instructions")
    handler = Recorder()
    _, result = run1(f"nop\n {source}\n hlt", lambda: handler)
    [record] = handler.records
    assert (record.reason, record.rip, record.length) == (reason, 0x100001, length)
    assert record.information == information
    assert record.qualification == qualification
    # The seed handles none of these: the vCPU halts at the instruction.
    assert result.reason is StopReason.HALTED
    assert result.state.rip == 0x100001


def test_vmfunc_is_an_invalid_opcode_unless_enabled() -> None:
    kvm_gap("emulator")  # VMFUNC
    _, result = run1(with_idt("    xor eax, eax\n vmfunc\n hlt"))
    assert result.state.r12 == 6
    kvm_gap("vm_functions")
    handler = Recorder()
    run1("vmfunc\n hlt", lambda: handler, configure=controls(secondary=Proc2.ENABLE_VM_FUNCTIONS))
    assert [r.reason for r in handler.records] == [ExitReason.VMFUNC]


def test_svm_instructions_are_invalid_opcodes() -> None:
    kvm_gap("vmcall")  # VMMCALL
    _, result = run1(with_idt("    vmmcall\n hlt"))
    assert result.state.r12 == 6


class Invalidating(Recorder):
    """Decodes INVEPT/INVVPID exits (``invalidation()``) and steps over them."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Invalidation] = []

    def handle_invept(self) -> None:
        self.requests.append(self.invalidation())
        self.advance_rip()

    def handle_invvpid(self) -> None:
        self.handle_invept()


def test_invept_and_invvpid_exits_decode_their_type_and_descriptor() -> None:
    kvm_gap("vmx_instructions")
    handler = Invalidating()
    source = """
        lea rbx, [rip + descriptors]
        mov eax, 1
        invept rax, [rbx]
        mov ecx, 2
        invept rcx, [rbx + 16]
        xor edx, edx
        mov rsi, 1
        invvpid rdx, [rbx + rsi * 8 + 24]
        mov r8, 9
        invvpid r8, [rbx + 48]
        hlt
    .balign 16
    descriptors:
        .quad 0x400000101e, 0
        .quad 0, 0
        .quad 0x0007, 0x7fff00001000
        .quad 0x10007, 0
    """
    _, result = run1(source, lambda: handler)
    assert result.reason is StopReason.GUEST_HLT, result.message
    single, every, address, odd = handler.requests
    assert (single.kind, single.eptp, single.reserved_bits) == (
        InveptType.SINGLE_CONTEXT,
        0x400000101E,
        0,
    )
    assert every.kind is InveptType.ALL_CONTEXT
    assert (address.kind, address.vpid, address.linear_address) == (
        InvvpidType.INDIVIDUAL_ADDRESS,
        7,
        0x7FFF00001000,
    )
    assert address.descriptor_address == single.descriptor_address + 32
    assert (odd.kind, odd.vpid, odd.reserved_bits) == (9, 7, 1)  # no such type; bit 16 set
