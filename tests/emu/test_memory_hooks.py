"""Memory hooks (``MemoryHooks``: violation, lift, MTF step, restore) are exact: a guest that
reads, writes and executes hooked pages ends the same with and without hooks that only
observe, and each hook saw its accesses."""

from __future__ import annotations

from emu_helpers import kvm_gap, run1, with_idt
from hypothesis import given, settings
from hypothesis import strategies as st
from small_kernel import kernel_source, user_pages

from example_modules import example
from pyflank.backends.base import StopReason
from pyflank.exit_handler import EptAccess, MemoryHooks
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.platform.assemble import assemble
from pyflank.vmm import VcpuResult, Vm

DATA, OTHER, CODE, STACK = 0x300000, 0x301000, 0x302000, 0x303000  # the hooked pages
PAGE = 0x1000

# A function on the execute-hooked page: reads and writes its own page, and the stack.
FUNCTION = f"""
.org {CODE:#x}
hooked_function:
    push rbx
    mov rbx, qword ptr [rip + counter]
    inc rbx
    mov qword ptr [rip + counter], rbx
    pop rbx
    ret
counter: .quad 100
"""

PROGRAM = f"""
    mov rbx, {DATA:#x}
    mov qword ptr [rbx], 7
    add qword ptr [rbx], 5
    mov rax, qword ptr [rbx]
    lock xadd qword ptr [rbx + 8], rax
    mov qword ptr [rbx + {PAGE - 4}], 0x11223344   # straddles DATA and OTHER
    mov rsi, rbx
    mov rdi, {OTHER + 0x100:#x}
    mov rcx, 24
    rep movsb
    mov rsp, {STACK + PAGE:#x}
    mov rax, 0x1234
    push rax
    push rcx
    pushfq
    pop rdx
    pop rcx
    pop r8
    call hooked_function
    call hooked_function
    mov r9, qword ptr [{OTHER + 0x100:#x}]
    xor eax, eax
    cpuid
    hlt
{FUNCTION}
"""


class Observing(MemoryHooks):
    """Hooks every kind of access on the test pages, and only looks."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int, int]] = []

    def setup(self, vmcs: Vmcs) -> None:
        super().setup(vmcs)
        self.hook(DATA, 2 * PAGE, read=True, write=True, on_access=self._saw)
        self.hook(CODE, execute=True, write=True, on_access=self._saw)
        self.hook(STACK, write=True, on_access=self._saw, after=self._wrote)

    def _saw(self, access: EptAccess) -> None:
        kind = "fetch" if access.fetch else "write" if access.write else "read"
        self.seen.append((kind, access.gpa, access.rip))

    def _wrote(self, access: EptAccess) -> None:
        assert self.m_memory is not None
        self.seen.append(("wrote", access.gpa, self.m_memory.read_u64(access.gpa & ~7)))


def _run(source: str, hooked: bool) -> tuple[Vm, VcpuResult, Observing | None]:
    handler = Observing() if hooked else None
    vm, result = run1(source, (lambda: handler) if handler else MemoryHooks)
    return vm, result, handler


def _same(source: str) -> Observing:
    plain_vm, plain, _ = _run(source, hooked=False)
    hooked_vm, hooked, handler = _run(source, hooked=True)
    assert plain.reason is StopReason.GUEST_HLT, plain.message
    assert hooked.reason is plain.reason, hooked.message
    assert repr(hooked.state) == repr(plain.state)
    assert hooked_vm.memory.read(0, 0x400000) == plain_vm.memory.read(0, 0x400000)
    assert handler is not None
    return handler


def test_a_guest_under_observing_hooks_ends_as_without_them() -> None:
    kvm_gap("monitor_trap_flag")
    handler = _same(PROGRAM)
    kinds = {kind for kind, _, _ in handler.seen}
    assert kinds == {"read", "write", "fetch", "wrote"}
    assert [h.hits > 0 for h in handler.memory_hooks] == [True, True, True]
    # The store across two hooked pages: the first page's violation, then the second's.
    straddling = [(kind, gpa) for kind, gpa, _ in handler.seen if DATA + PAGE - 4 <= gpa <= OTHER]
    assert straddling == [("write", DATA + PAGE - 4), ("write", OTHER)]
    # The after-callback reads what each push wrote: RAX, RCX (0 after REP MOVSB), RFLAGS.
    pushed = [value for kind, _, value in handler.seen if kind == "wrote"]
    assert pushed[:2] == [0x1234, 0] and not pushed[2] & 0x100


def test_exceptions_and_their_frames_on_hooked_pages_are_exact() -> None:
    kvm_gap("monitor_trap_flag")
    source = with_idt(f"""
    mov rbx, {DATA:#x}
    mov rsp, {STACK + PAGE:#x}
    mov rax, 9
    xor ecx, ecx
    div rcx
    hlt
    """)
    _same(source)


@settings(max_examples=40)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["mov qword ptr [rbx + {o}], rax", "add dword ptr [rbx + {o}], eax",
                             "mov rax, qword ptr [rbx + {o}]", "inc byte ptr [rbx + {o}]",
                             "xchg qword ptr [rbx + {o}], rcx", "mov word ptr [rbx + {o}], ax"]),
            st.integers(min_value=0, max_value=2 * PAGE - 8),
        ),
        min_size=1,
        max_size=12,
    )
)  # fmt: skip
def test_random_accesses_to_hooked_pages_are_exact(accesses: list[tuple[str, int]]) -> None:
    kvm_gap("monitor_trap_flag")
    body = "\n".join("    " + form.format(o=offset) for form, offset in accesses)
    source = (
        f"    mov rbx, {DATA:#x}\n    mov rax, 0x0102030405060708\n    mov rcx, 3\n{body}\n    hlt"
    )
    _same(source)


# A ring-3 program: CPUID (where examples/write_watch.py starts watching the page of RSP),
# then writes of each width to its stack page, one across its end, a call, and a REP STOSB
# of three bytes.
WATCHED_PROGRAM = """
    lea rsp, [rip + ustack_top]
    and rsp, -4096
    add rsp, 0x800
    xor eax, eax
    cpuid
    push 0x1234
    mov qword ptr [rsp], 0x55
    mov byte ptr [rsp + 1], 0x77
    mov word ptr [rsp + 0x100], 0x9abc
    mov rax, 0x1122334455667788
    mov qword ptr [rsp + 0x804], rax  # across the page's end: its first half is reported
    call leaf
    lea rdi, [rsp - 0x100]
    mov al, 0xab
    mov ecx, 3
    rep stosb
    mov qword ptr [rsp - 0x1000], 1  # the page below: not watched
    hlt                              # ring 3: #GP, whose handler halts
leaf:
    ret
"""


def test_the_write_watch_example_reports_each_write_and_the_program_goes_on() -> None:
    kvm_gap("monitor_trap_flag")
    watch = example("write_watch").WriteWatch
    watch.writes.clear()
    source = kernel_source(
        "    jmp enter_user\n", user=WATCHED_PROGRAM, gates={13: ("on_gp", 0, 0)},
        extra="on_gp:\n    mov r12, 13\n    hlt\n",
    )  # fmt: skip
    vm, result = run1(source, watch, setup=user_pages)
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert result.state.r12 == 13 and result.state.rcx == 0
    [hook] = vm.vcpus[0].handler.memory_hooks  # type: ignore[attr-defined]
    top = hook.gpa + 0x800  # RSP at the CPUID (RAM is identity-mapped)
    code = vm.memory.read(0, vm.memory.size)
    cpuid = code.index(assemble("xor eax, eax\n cpuid", 0)) + 2
    at, rips = cpuid + 2, []
    for line in WATCHED_PROGRAM.split("cpuid\n", 1)[1].splitlines()[:11]:
        rips.append(at)
        at += len(assemble(line.split("#")[0].replace("leaf", hex(at)), at))
    push, mov_q, mov_b, mov_w, _rax, across, call, _lea, _mov, _ecx, stos = rips
    assert watch.writes == [
        (top - 8, 0x1234, push),
        (top - 8, 0x55, mov_q),
        (top - 7, 0x77, mov_b),
        (top - 8 + 0x100, 0x9ABC, mov_w),
        (top + 0x7FC, 0x55667788, across),
        (top - 16, call + 5, call),  # the return address
        (top - 0x108, 0xAB, stos),  # REP STOSB: one write per iteration
        (top - 0x107, 0xAB, stos),
        (top - 0x106, 0xAB, stos),
    ]
    assert vm.memory.read_u64(top - 8) == 0x7755
