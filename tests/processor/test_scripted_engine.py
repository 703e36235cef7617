"""A third engine that exists only here: it replays a script of exit records.

It runs a handler through ``Vm``/``Vcpu`` without anything in ``processor/`` knowing it
exists: a backend is a folder implementing the engine protocol (``backends/base.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from counting import CountingExits
from pyflank.abi import (
    BF_VMCALL_SUCCESS,
    VMCALL_MAGIC_NUMBER,
    VMCALL_VERSION,
    VmcallOpcode,
    hypervisor_leaves,
)
from pyflank.backends.base import PortIo
from pyflank.intel_x64.cpu import CpuidRegisters
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory import GuestPhysicalMemory
from pyflank.processor import EntryPlan, ExitInformation, ExitRecord, Stop, StopReason
from pyflank.vmm import Vm

Step = Callable[[tuple[int, ...], int], ExitRecord]  # (registers, RIP) -> the next exit


SDM_ORDER = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             *(f"r{n:02d}" for n in range(8, 16)))  # fmt: skip


def exit_at(reason: int, length: int, **changes: int) -> Step:
    """An exit of ``reason`` at the RIP the last plan resumed at, after the guest set the
    registers in ``changes``."""

    def step(regs: tuple[int, ...], rip: int) -> ExitRecord:
        values = list(regs)
        for name, value in changes.items():
            values[SDM_ORDER.index(name)] = value
        return ExitRecord(ExitInformation(reason, 0, length), (*values, rip, 0), rip, 0x2)

    return step


class ScriptedEngine:
    """Replays ``script``; remembers what each entry plan asked for."""

    cpu = None

    def __init__(self, script: Iterable[Step]) -> None:
        self.script = list(script)
        self.entries: list[tuple[tuple[int, ...], int, bool]] = []

    def cpuid_leaves(self) -> None:
        return None

    def set_cpuid(self, answers: dict[tuple[int, int], CpuidRegisters | None]) -> None:
        raise AssertionError("a scripted engine traps CPUID")

    def run(self, plan: EntryPlan, decide: object) -> ExitRecord | EntryPlan | Stop:
        self.entries.append((plan.regs, plan.rip, plan.launch))  # plans are messages: copy
        if not self.script:
            return Stop(StopReason.GUEST_HLT, "the script ended")
        return self.script.pop(0)(plan.regs, plan.rip)

    def count_instructions(self) -> None:
        return None  # a script has no instructions

    def request_stop(self, reason: StopReason = StopReason.STOPPED) -> None:
        self.script.clear()

    def close(self) -> None:
        pass


class ScriptedBackend:
    name = "scripted"
    capabilities = None
    script: list[Step] = []

    def __init__(self, memory: GuestPhysicalMemory, ports: PortIo) -> None:
        self.engines: list[ScriptedEngine] = []

    def hypervisor_leaves(self) -> dict[int, CpuidRegisters]:
        return hypervisor_leaves()

    def unsupported(self, vmcs: Vmcs) -> list[str]:
        return []

    def create_vcpu(self, vcpuid: int) -> ScriptedEngine:
        engine = ScriptedEngine(self.script)
        self.engines.append(engine)
        return engine

    def close(self) -> None:
        pass


def test_a_handler_runs_through_vm_on_a_scripted_engine() -> None:
    class Backend(ScriptedBackend):
        script = [
            exit_at(ExitReason.CPUID, 2, rax=0, rcx=0),
            exit_at(ExitReason.RDMSR, 2, rcx=0x10),  # IA32_TIME_STAMP_COUNTER
            # VERSIONS, index PROTOCOL: opcode in RAX, the magic in RDX, the index in RCX
            exit_at(
                ExitReason.VMCALL, 3, rax=VmcallOpcode.VERSIONS, rdx=VMCALL_MAGIC_NUMBER, rcx=0
            ),
        ]

    vm = Vm(CountingExits, backend=Backend)
    [result] = vm.run(timeout=5)
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert result.exits == 3
    [engine] = vm.backend.engines  # type: ignore[attr-defined]
    (_, start, launch), cpuid, rdmsr, vmcall = engine.entries
    assert launch and start == vm.layout.load_address
    handler = vm.vcpus[0].handler
    vendor = handler.m_cpu.cpuid(0, 0)
    assert (cpuid[0][0], cpuid[0][3], cpuid[0][1], cpuid[0][2]) == vendor
    assert cpuid[1] == start + 2
    assert rdmsr[1] == start + 4  # RIP advanced past each exiting instruction
    assert vmcall[0][SDM_ORDER.index("rdx")] == BF_VMCALL_SUCCESS  # the status
    assert vmcall[0][SDM_ORDER.index("rbx")] == VMCALL_VERSION  # r03: the protocol version
    assert vmcall[1] == start + 7
    assert isinstance(handler, CountingExits)
    assert handler.counts == {ExitReason.CPUID: 1, ExitReason.RDMSR: 1, ExitReason.VMCALL: 1}
