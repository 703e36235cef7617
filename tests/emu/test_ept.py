"""EPT violations (exit 48) and misconfigurations (exit 49): every field, every access kind,
and the instruction not executed; the handler's permissions through ``self.ept``."""

from __future__ import annotations

import pytest
from emu_helpers import kvm_gap, run1
from ept_helpers import (
    DATA,
    EPT_MISCONFIGURATION,
    EPT_VIOLATION,
    FETCH,
    GLA_VALID,
    KERNEL_RW,
    PAGE,
    READ,
    TRANSLATED,
    USER_LINEAR,
    WRITABLE_LINEAR,
    WRITE,
    XD_LINEAR,
    EptExit,
    EptRecorder,
    R,
    Stepping,
    W,
    X,
    protecting,
)

from pyflank.backends.base import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.qualifications import EptViolation
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory.ept import RWX, WRITE_BACK, EptTables, describe_permissions
from pyflank.vmm import Vm

NONE = {"read": False, "write": False, "execute": False}
READ_ONLY = {"write": False}
NO_EXECUTE = {"execute": False}
EXECUTE_ONLY = {"read": False, "write": False}
START = 0x100000  # where test programs are loaded
# (name, instruction, permissions, access kind, what the page allowed, GLA offset)
ACCESS_KINDS = [
    ("read", "mov rax, qword ptr [rbx]", EXECUTE_ONLY, READ, X, 8),
    ("read, nothing allowed", "mov eax, dword ptr [rbx]", NONE, READ, 0, 8),
    ("write", "mov qword ptr [rbx], rcx", READ_ONLY, WRITE, R | X, 8),
    ("byte write", "mov byte ptr [rbx + 5], 7", READ_ONLY, WRITE, R | X, 13),
    ("read-modify-write", "add qword ptr [rbx], rcx", READ_ONLY, READ | WRITE, R | X, 8),
    ("locked exchange", "lock xadd qword ptr [rbx], rcx", READ_ONLY, READ | WRITE, R | X, 8),
    ("push", "mov rsp, rbx\n push rcx", READ_ONLY, WRITE, R | X, 0),
    ("string store", "mov rdi, rbx\n stosq", READ_ONLY, WRITE, R | X, 8),
    ("string store", "mov rdi, rbx\n stosq", NONE, WRITE, 0, 8),
    ("string load", "mov rsi, rbx\n lodsq", EXECUTE_ONLY, READ, X, 8),
    ("fetch", "call rbx", NO_EXECUTE, FETCH, R | W, 0),
]


@pytest.mark.parametrize(
    ("name", "instruction", "permissions", "kind", "allowed", "offset"),
    ACCESS_KINDS,
)
def test_each_access_kind_is_an_ept_violation_with_the_sdms_qualification(
    name: str, instruction: str, permissions: dict[str, bool], kind: int, allowed: int, offset: int
) -> None:
    if kind == FETCH or permissions in (EXECUTE_ONLY,):
        kvm_gap("ept_execute")
    if kind & WRITE and name not in ("write", "byte write"):
        kvm_gap("ept_write_side_effects")  # KVM stops such a write only after it ran
    handler = protecting((DATA, PAGE, permissions))()
    source = f"""
        mov rbx, {DATA + 8:#x}
        mov rcx, 0x1122334455667788
        mov qword ptr [rip + before], 0
        {instruction}
        mov qword ptr [rip + before], 1
        hlt
    before: .quad 0
    """
    if kind == FETCH:
        source = source.replace(f"{DATA + 8:#x}", f"{DATA:#x}")
    vm, result = run1(source, lambda: handler)
    assert result.reason is StopReason.HALTED, result.message
    [exit_] = handler.ept_exits
    gla = DATA + offset
    expected = kind | allowed | KERNEL_RW
    assert exit_ == EptExit(EPT_VIOLATION, expected, gla, gla, exit_.rip), name
    access = handler.access
    assert (access.read, access.write, access.fetch) == (
        bool(kind & READ),
        bool(kind & WRITE),
        bool(kind & FETCH),
    )
    # The instruction has not executed: RIP is at it, the page and registers as before.
    if kind == FETCH:
        assert exit_.rip == DATA and result.state.rsp == vm.layout.stack_top(0) - 8
    else:
        assert vm.memory.read(exit_.rip, 16).startswith(_encoding(instruction.split("\n")[-1]))
        assert vm.memory.read_u64(DATA + 8) == 0
        assert result.state.rcx == 0x1122334455667788
        assert result.state.rbx == DATA + 8


MONITOR_TRAP_FLAG = 37


@pytest.mark.parametrize(
    ("name", "instruction", "permissions"),
    [(case[0], case[1], case[2]) for case in ACCESS_KINDS],
)
def test_each_access_kind_lifted_and_stepped_ends_in_an_mtf_exit_after_it(
    name: str, instruction: str, permissions: dict[str, bool]
) -> None:
    kvm_gap("monitor_trap_flag")
    handler = type("H", (Resuming,), {"protections": ((DATA, PAGE, permissions),)})()
    source = f"""
        mov rbx, {DATA + 8:#x}
        mov rcx, 0x1122334455667788
        {instruction}
        mov r15, rsp
        hlt
    """
    if "call" in instruction:
        source = source.replace(f"{DATA + 8:#x}", f"{DATA:#x}")

    def setup(vm: Vm) -> None:  # at DATA: a function (for the fetch) that returns
        vm.memory.write(DATA, _encoding("ret"))

    vm, result = run1(source, lambda: handler, setup=setup)
    assert result.reason is StopReason.GUEST_HLT, result.message
    [violation] = handler.ept_exits
    assert violation.reason == EPT_VIOLATION
    # One MTF exit, after the one instruction: RIP past it (a fetch: past the RET it let
    # run, at the CALL's return address), the qualification and addresses zero.
    [step] = handler.mtf_exits
    if "call" in instruction:
        returned_to = vm.memory.read_u64(vm.layout.stack_top(0) - 8)
        assert step == EptExit(MONITOR_TRAP_FLAG, 0, 0, 0, returned_to), name
    else:
        last = instruction.split("\n")[-1].strip()
        assert step == EptExit(MONITOR_TRAP_FLAG, 0, 0, 0, violation.rip + len(_encoding(last)))
    assert handler.ept.permissions(DATA) == describe_permissions(_bits(permissions))
    if "rcx" in instruction and "[rbx]" in instruction:  # the write happened, once
        assert vm.memory.read_u64(DATA + 8) == 0x1122334455667788


def _bits(permissions: dict[str, bool]) -> int:
    return sum(bit for key, bit in (("read", 1), ("write", 2), ("execute", 4))
               if permissions.get(key, True))  # fmt: skip


def _encoding(instruction: str) -> bytes:
    from pyflank.platform.assemble import assemble

    return assemble(instruction.strip(), 0)


class Resuming(Stepping):
    """Lift, step, restore at each violation: the program runs to its end."""


def test_a_lifted_write_happens_once_and_the_page_is_protected_again() -> None:
    kvm_gap("monitor_trap_flag")
    handler = type("H", (Resuming,), {"protections": ((DATA, PAGE, READ_ONLY),)})()
    source = f"""
        mov rbx, {DATA:#x}
        add qword ptr [rbx], 5
        add qword ptr [rbx], 5
        mov rax, qword ptr [rbx]
        hlt
    """
    _vm, result = run1(source, lambda: handler)
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert result.state.rax == 10
    assert [e.rip for e in handler.ept_exits] == [START + 7, START + 11]
    assert handler.ept.permissions(DATA) == "r-x"


@pytest.mark.parametrize("permissions", [READ_ONLY, NONE])
def test_a_lifted_access_completes_once_with_memorys_data(permissions: dict[str, bool]) -> None:
    handler = protecting((DATA, PAGE, permissions))()
    handler.react = lambda h: h.ept.restore(DATA)  # lifted for good: the access goes through
    source = f"""
        mov rbx, {DATA:#x}
        mov qword ptr [rbx], 0x41
        mov rax, qword ptr [rbx]
        add rax, 1
        hlt
    """

    def setup(vm: Vm) -> None:
        vm.memory.write_u64(DATA, 0x40)

    vm, result = run1(source, lambda: handler, setup=setup)
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert (result.state.rax, vm.memory.read_u64(DATA)) == (0x42, 0x41)
    assert len(handler.ept_exits) == 1


def test_the_guests_own_page_walk_on_a_protected_page_is_a_paging_structure_access() -> None:
    kvm_gap("ept_paging_structures")
    # The boot tables: PML4 0x10000, PDPT 0x11000, PD 0x12000 (2 MiB pages). Reading the PD
    # is forbidden: the very first fetch's walk stops there.
    handler = protecting((0x12000, PAGE, EXECUTE_ONLY))()
    _vm, _result = run1("nop\n hlt", lambda: handler)
    [exit_] = handler.ept_exits
    # The walk would also set the accessed flag (clear in the boot tables): a write too.
    assert exit_ == EptExit(EPT_VIOLATION, READ | WRITE | X | GLA_VALID, 0x12000, START, START)
    assert handler.access.qualification.paging_structure_access


def test_accessed_and_dirty_flag_updates_are_writes_to_the_page_tables() -> None:
    kvm_gap("ept_paging_structures")
    handler = type("H", (Resuming,), {"protections": ((0x12000, PAGE, READ_ONLY),)})()
    source = f"""
        mov rbx, {DATA:#x}
        mov rax, qword ptr [rbx]
        mov qword ptr [rbx], 1
        mov qword ptr [rbx + 8], 2
        hlt
    """
    vm, result = run1(source, lambda: handler)
    assert result.reason is StopReason.GUEST_HLT, result.message
    pde_code, pde_data = 0x12000, 0x12000 + 8 * (DATA >> 21)
    # The code's PDE gets its accessed flag (the first fetch), the data's its accessed flag
    # (the read) and its dirty flag (the first write); the second write walks on reads only.
    assert [(e.gpa, e.qualification, e.gla) for e in handler.ept_exits] == [
        (pde_code, READ | WRITE | R | X | GLA_VALID, START),
        (pde_data, READ | WRITE | R | X | GLA_VALID, DATA),
        (pde_data, READ | WRITE | R | X | GLA_VALID, DATA),
    ]
    assert vm.memory.read_u64(DATA + 8) == 2


def test_the_linear_addresss_own_rights_are_reported() -> None:
    linear = 0x7F00_0000_0000

    def setup(vm: Vm) -> None:
        vm.page_tables.map(linear, DATA, PAGE, user=True, writable=False, executable=False)

    handler = protecting((DATA, PAGE, NONE))()
    run1(f"mov rbx, {linear:#x}\n mov rax, [rbx + 0x10]\n hlt", lambda: handler, setup=setup)
    [exit_] = handler.ept_exits
    assert exit_.qualification == READ | GLA_VALID | TRANSLATED | USER_LINEAR | XD_LINEAR
    assert (exit_.gla, exit_.gpa) == (linear + 0x10, DATA + 0x10)
    assert not exit_.qualification & WRITABLE_LINEAR


def test_an_execute_only_page_runs_and_its_reads_exit() -> None:
    kvm_gap("ept_execute")
    handler = type("H", (Resuming,), {"protections": ((DATA, PAGE, EXECUTE_ONLY),)})()

    def setup(vm: Vm) -> None:  # a function on the page that reads its own page
        vm.memory.write(DATA, _encoding("mov rax, 3\n mov rcx, qword ptr [rip]\n ret"))

    _, result = run1(f"mov rbx, {DATA:#x}\n call rbx\n hlt", lambda: handler, setup=setup)
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert result.state.rax == 3
    [exit_] = handler.ept_exits
    assert exit_.qualification == READ | X | KERNEL_RW
    assert exit_.rip == DATA + 7 and exit_.gpa == DATA + 14


def test_a_fetch_running_into_a_protected_page_stops_at_its_first_instruction() -> None:
    kvm_gap("ept_execute")
    handler = protecting((DATA, PAGE, NO_EXECUTE))()
    before = DATA - 16
    code = _encoding("mov r8, 1\n mov r9, 2\n nop\n nop")  # 16 bytes: up to the page
    assert len(code) == 16

    def setup(vm: Vm) -> None:
        vm.memory.write(before, code + _encoding("mov r10, 3\n hlt"))

    _, result = run1(f"mov rax, {before:#x}\n jmp rax", lambda: handler, setup=setup)
    [exit_] = handler.ept_exits
    assert exit_ == EptExit(EPT_VIOLATION, FETCH | R | W | KERNEL_RW, DATA, DATA, DATA)
    assert (result.state.r08, result.state.r09, result.state.r10) == (1, 2, 0)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (DATA | 0b010 | WRITE_BACK << 3, "write without read"),
        (DATA | 0b110 | WRITE_BACK << 3, "write and execute without read"),
        (DATA | 0b111 | 2 << 3, "memory type 2"),
        (DATA | 0b111 | WRITE_BACK << 3 | 1 << 51, "an address bit beyond the width"),
    ],
)
def test_a_misconfigured_entry_is_exit_49_and_fixing_it_lets_the_guest_on(
    entry: int, why: str
) -> None:
    class Fixing(EptRecorder):
        def setup(self, vmcs: Vmcs) -> None:
            super().setup(vmcs)
            self.host_memory().write_u64(self.ept.tables.entry_address(DATA), entry)
            self.ept.invalidate()

    handler = Fixing()
    handler.react = lambda h: h.ept.map(DATA, DATA, PAGE)
    _, result = run1(f"mov rbx, {DATA + 0x18:#x}\n mov rax, [rbx]\n hlt", lambda: handler)
    assert result.reason is StopReason.GUEST_HLT, (why, result.message)
    [exit_] = handler.ept_exits
    assert (exit_.reason, exit_.gpa, exit_.rip) == (EPT_MISCONFIGURATION, DATA + 0x18, START + 7)


@pytest.mark.parametrize(
    ("name", "instruction", "gpa"),
    [
        ("read", "mov rax, qword ptr [rbx + 0x18]", DATA + 0x18),
        ("write", "mov qword ptr [rbx + 0x20], rcx", DATA + 0x20),
        ("read-modify-write", "add dword ptr [rbx + 0x28], ecx", DATA + 0x28),
        ("push", "lea rsp, [rbx + 0x38]\n push rcx", DATA + 0x30),
        ("string store", "lea rdi, [rbx + 0x40]\n stosb", DATA + 0x40),
        ("fetch", "call rbx", DATA),
    ],
)
def test_each_access_kind_to_a_misconfigured_page_is_exit_49_with_its_address(
    name: str, instruction: str, gpa: int
) -> None:
    if name == "fetch":
        kvm_gap("ept_execute")  # (KVM cannot fetch from the hole a misconfiguration is)
    if name in ("push", "string store"):
        kvm_gap("ept_write_side_effects")

    class Misconfigured(EptRecorder):
        def setup(self, vmcs: Vmcs) -> None:
            super().setup(vmcs)
            self.host_memory().write_u64(self.ept.tables.entry_address(DATA), DATA | 0b010)
            self.ept.invalidate()

    handler = Misconfigured()
    source = f"mov rbx, {DATA:#x}\n mov ecx, 5\n {instruction}\n hlt"
    vm, result = run1(source, lambda: handler)
    assert result.reason is StopReason.HALTED, result.message
    [exit_] = handler.ept_exits
    at = START + len(_encoding(source.split(instruction.split("\n")[-1])[0]))
    if name == "fetch":
        at = DATA
    # The SDM: exit 49 gives the guest-physical address; its qualification is cleared.
    assert (exit_.reason, exit_.qualification, exit_.gpa, exit_.rip) == (
        EPT_MISCONFIGURATION, 0, gpa, at,
    ), name  # fmt: skip
    assert vm.memory.read_u64(gpa & ~7) == 0  # nothing was written


def test_ept_off_again_allows_everything() -> None:
    class Disabling(EptRecorder):
        protections = ((DATA, PAGE, NONE),)

    handler = Disabling()
    handler.react = lambda h: h.ept.disable()
    _, result = run1(
        f"mov rbx, {DATA:#x}\n mov qword ptr [rbx], 9\n mov rax, [rbx]\n hlt", lambda: handler
    )
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert result.state.rax == 9
    assert len(handler.ept_exits) == 1


def test_accessed_and_dirty_flags_for_ept_are_refused() -> None:
    class AskingForFlags(ExitHandlerIntelX64):
        def setup(self, vmcs: Vmcs) -> None:
            self.ept.enable(vmcs)
            vmcs.write(f.EPT_POINTER, self.ept.eptp | 1 << 6)

    with pytest.raises(ValueError, match="accessed and dirty flags"):
        Vm(AskingForFlags)


def test_the_violation_decodes_as_the_codec_says() -> None:
    handler = protecting((DATA, PAGE, READ_ONLY))()
    run1(f"mov rbx, {DATA:#x}\n mov byte ptr [rbx], 1\n hlt", lambda: handler)
    access = handler.access
    assert access.qualification == EptViolation(
        data_write=True, readable=True, executable=True, guest_linear_address_valid=True,
        translated_access=True, writable_linear_address=True,
    )  # fmt: skip
    assert str(access).startswith("ept violation: write (ept allows r-x)")
    assert access.page == DATA and access.gla == DATA
    assert RWX == 7


def test_switching_the_eptp_runs_the_guest_under_another_view_and_back() -> None:
    other = DATA + PAGE

    class Switching(EptRecorder):
        """Two EPT views: the handler's tables forbid DATA, tables of its own forbid the
        page after it; each EPT violation switches to the other view."""

        protections = ((DATA, PAGE, NONE),)

        def setup(self, vmcs: Vmcs) -> None:
            super().setup(vmcs)
            assert self.m_memory is not None
            self.second = EptTables(self.host_memory(), memory_type=WRITE_BACK)
            self.second.identity_map(self.m_memory.size)
            self.second.protect(other, PAGE, 0)

    def switch(h: EptRecorder) -> None:
        second = h.second.eptp  # type: ignore[attr-defined]
        h.ept.use(None if h.m_vmcs.read(f.EPT_POINTER) == second else second)

    handler = Switching()
    handler.react = switch
    source = f"""
        mov rbx, {DATA:#x}
        mov qword ptr [rbx], 5
        mov rax, qword ptr [rbx]
        mov qword ptr [rbx + {PAGE}], 6
        mov rcx, qword ptr [rbx]
        mov rdx, qword ptr [rbx + {PAGE}]
        hlt
    """
    vm, result = run1(source, lambda: handler)
    assert result.reason is StopReason.GUEST_HLT, result.message
    # DATA's write exits under the first view, its read runs under the second; the write
    # to the other page exits there, back under the first DATA's read exits again.
    assert [(e.gpa, e.qualification & 7) for e in handler.ept_exits] == [
        (DATA, WRITE), (other, WRITE), (DATA, READ), (other, READ),
    ]  # fmt: skip
    s = result.state
    assert (s.rax, s.rcx, s.rdx, vm.memory.read_u64(other)) == (5, 5, 6, 6)
    assert handler.m_vmcs.read(f.EPT_POINTER) == handler.ept.eptp
