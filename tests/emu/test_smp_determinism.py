"""Two vCPUs issuing vmcalls at once; the same guest twice gives the same exits."""

from __future__ import annotations

import threading

from emu_helpers import cpuid_exits, on_kvm, run

from pyflank.abi import VmcallRegisters
from pyflank.backends.base import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.testing import versions_loop

CALLS = 400
COUNTS = 0x280000  # shared RAM: vCPU n stores its call count at COUNTS + 8 n

PROGRAM = versions_loop(CALLS, COUNTS)


class ThreadRecorder(ExitHandlerIntelX64):
    """Remembers which threads ran its vmcalls: each vCPU must stay on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[threading.Thread] = set()  # not idents: a finished one's is reused
        self.ids: set[int] = set()

    def handle_vmcall_versions(self, regs: VmcallRegisters) -> None:
        self.threads.add(threading.current_thread())
        self.ids.add(self.m_state_save.vcpuid)
        super().handle_vmcall_versions(regs)


def test_two_vcpus_vmcall_concurrently_without_lost_or_mixed_replies() -> None:
    handlers: list[ThreadRecorder] = []

    def make() -> ThreadRecorder:
        handlers.append(ThreadRecorder())
        return handlers[-1]

    vm, results = run(PROGRAM, make, vcpus=2, timeout=20)
    for vcpuid, result in enumerate(results):
        assert result.reason is StopReason.GUEST_HLT, result.message
        assert result.state.r12 == CALLS
        assert result.state.r13 == 0, f"vCPU {vcpuid}: {result.state.r13} wrong replies"
        assert result.state.rbp == vcpuid  # RDI held the vCPU id at entry
        assert result.exits == CALLS + cpuid_exits(1)  # the vmcalls and PYFLANK_INIT's CPUID
    assert [h.ids for h in handlers] == [{0}, {1}]
    assert len(handlers[0].threads | handlers[1].threads) == 2
    assert (vm.memory.read_u64(COUNTS), vm.memory.read_u64(COUNTS + 8)) == (CALLS, CALLS)


DETERMINISTIC = """
    mov ecx, 0xC0000080
    rdmsr
    xor r8, r8
loop_top:
    mov eax, r8d
    and eax, 3
    cpuid
    invd
    mov ecx, 0x277
    rdmsr
    inc r8
    cmp r8, 20
    jne loop_top
    vmxoff
"""


def test_the_same_guest_twice_gives_the_same_exit_sequence() -> None:
    traces = []
    for _ in range(2):
        _, [result] = run(DETERMINISTIC)
        assert result.reason is StopReason.PROMOTED
        traces.append(result.trace)
    assert traces[0] == traces[1]
    per_loop = 1 if on_kvm() else 3  # CPUID and INVD never leave KVM (gaps 'cpuid', 'invd')
    assert traces[0] is not None and len(traces[0]) == 1 + 20 * per_loop + 1
