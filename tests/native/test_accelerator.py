"""The native accelerator on the software CPU: which path each exit takes, that the fused
path is taken only for the seed's own handling (an override always wins), and that every
path leaves what the pure-Python one leaves (``native_support``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from native_support import RunImage, accelerated, differences, pure_python
from pyflank import native
from pyflank.backends.base import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64.cpu import ModelCpu
from pyflank.vmm import VcpuResult, Vm

pytestmark = pytest.mark.skipif(not accelerated(), reason=native.status())

LOOPS = 2000


def cpuid_loop(count: int = LOOPS, leaf: int = 0) -> str:
    return f"""
        mov r15, {count}
    again:
        mov eax, {leaf}
        xor ecx, ecx
        cpuid
        dec r15
        jnz again
        hlt
    """


def run(
    source: str,
    handler: type[ExitHandlerIntelX64] = ExitHandlerIntelX64,
    *,
    vcpus: int = 1,
    trace: bool = False,
) -> tuple[Vm, list[VcpuResult]]:
    vm = Vm(handler, vcpus=vcpus, trace=trace)
    vm.load_asm(source)
    return vm, vm.run(timeout=60)


def counts(vm: Vm, vcpu: int = 0) -> dict[str, int]:
    engine = vm.vcpus[vcpu].engine
    hooks = getattr(engine, "native", None)
    assert hooks is not None, "the engine runs the pure-Python hooks"
    found: dict[str, int] = hooks.native.counts
    return found


def same_as_pure_python(source: str, handler: type[ExitHandlerIntelX64], **kwargs: object) -> Vm:
    """Run ``source`` accelerated and on the pure-Python paths: both leave the same."""
    with pure_python():
        reference = RunImage.of(*run(source, handler, **kwargs))  # type: ignore[arg-type]
    vm, results = run(source, handler, **kwargs)  # type: ignore[arg-type]
    assert differences(reference, RunImage.of(vm, results)) == []
    return vm


def test_pyflank_native_0_forces_the_pure_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "in use" in native.status()
    vm, _ = run(cpuid_loop(3))
    assert counts(vm)["fused"] > 0
    monkeypatch.setenv("PYFLANK_NATIVE", "0")
    assert native.accelerator() is None
    assert "disabled by PYFLANK_NATIVE=0" in native.status()
    vm, [result] = run(cpuid_loop(3))
    assert getattr(vm.vcpus[0].engine, "native", None) is None
    assert result.exits == 3


@pytest.mark.parametrize("trace", [False, True])
def test_the_seeds_cpuid_exits_are_fused_and_leave_what_dispatch_leaves(trace: bool) -> None:
    vm = same_as_pure_python(cpuid_loop(), ExitHandlerIntelX64, trace=trace)
    taken = counts(vm)
    # The first exit reports the guest state through Python, the second resumes with the
    # processor's reused plan: from the third on, the exits are fused.
    assert taken == {**taken, "python": 1, "native": 1, "fused": LOOPS - 2}
    assert vm.vcpus[0].processor is not None and vm.vcpus[0].processor.exits == LOOPS


class CountingCpuid(ExitHandlerIntelX64):
    calls = 0

    def handle_cpuid(self) -> None:
        type(self).calls += 1
        super().handle_cpuid()


class OwnDispatch(ExitHandlerIntelX64):
    def dispatch(self) -> None:
        super().dispatch()


class OwnAdvance(ExitHandlerIntelX64):
    def advance_rip(self) -> None:
        super().advance_rip()


class OwnTable(ExitHandlerIntelX64):
    EXIT_HANDLERS = {10: "answer"}

    def answer(self) -> None:
        self.handle_cpuid()


class OwnCpu(ExitHandlerIntelX64):
    def __init__(self) -> None:
        super().__init__()

    def set_cpu(self, cpu: object) -> None:
        class Probing(ModelCpu):  # a CPU whose answers are not a table's
            def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
                return super().cpuid(leaf, subleaf)

        super().set_cpu(Probing())


@pytest.mark.parametrize("handler", [CountingCpuid, OwnDispatch, OwnAdvance, OwnTable, OwnCpu])
def test_an_override_always_wins(handler: type[ExitHandlerIntelX64]) -> None:
    CountingCpuid.calls = 0
    vm = same_as_pure_python(cpuid_loop(50), handler)
    taken = counts(vm)
    assert taken["fused"] == 0 and taken["native"] == 49  # dispatch() for every exit
    if handler is CountingCpuid:
        assert CountingCpuid.calls == 100  # both runs


def test_an_override_on_the_instance_wins() -> None:
    seen: list[int] = []

    def instance() -> ExitHandlerIntelX64:
        handler = ExitHandlerIntelX64()
        plain = handler.advance_rip

        def advance() -> None:
            seen.append(handler.m_state_save.rip)
            plain()

        handler.advance_rip = advance  # type: ignore[method-assign]
        return handler

    vm = Vm(instance)
    vm.load_asm(cpuid_loop(20))
    [result] = vm.run(timeout=60)
    assert result.exits == 20 and len(seen) == 20
    assert counts(vm)["fused"] == 0


class ChangesTheModel(ExitHandlerIntelX64):
    """At each RDMSR exit, a new answer for CPUID leaf 0x16: the next CPUID must see it."""

    def handle_rdmsr(self) -> None:
        table = self.m_cpu.cpuid_table  # type: ignore[attr-defined]
        eax = table[0x16][0]
        table[0x16] = (eax + 1, 0, 0, 0)
        self.hypervisor_leaves[0x4000_0000] = (self.m_state_save.r15, 0, 0, 0)
        super().handle_rdmsr()


def test_a_table_changed_at_an_exit_reaches_the_next_fused_cpuid() -> None:
    source = """
        mov r15, 30
        lea rbx, [rip + answers]
    again:
        mov eax, 0x16
        cpuid
        mov [rbx + r15 * 8 - 8], eax
        mov eax, 0x16
        cpuid
        mov eax, 0x40000000
        cpuid
        add r14, rax
        lea rbx, [rip + answers]
        mov ecx, 0x39
        rdmsr
        dec r15
        jnz again
        hlt
    answers: .fill 30, 8, 0
    """
    vm = same_as_pure_python(source, ChangesTheModel)  # the answers in memory, R14: the same
    # After each RDMSR exit the first CPUID resumes through the processor, the next two are
    # fused (but for the very first, whose guest state Python reports).
    assert counts(vm)["fused"] == 2 * 30 - 1


def test_vcpus_of_fused_exits_run_side_by_side() -> None:
    vm, results = run(cpuid_loop(), vcpus=2)
    assert [r.reason for r in results] == [StopReason.GUEST_HLT] * 2
    assert [r.exits for r in results] == [LOOPS, LOOPS]
    assert [counts(vm, i)["fused"] for i in (0, 1)] == [LOOPS - 2, LOOPS - 2]


def test_a_computing_vcpu_lets_a_python_handler_run() -> None:
    """vCPU 0 computes without exits while vCPU 1's exits all run Python: vCPU 0 lets the
    GIL go once it ran long enough without Python, so both finish."""
    source = """
        test rdi, rdi
        jnz handler_side
        mov rcx, 3000000
    spin:
        dec rcx
        jnz spin
        hlt
    handler_side:
    """ + cpuid_loop(500)
    _, results = run(source, CountingCpuid, vcpus=2)
    assert [r.reason for r in results] == [StopReason.GUEST_HLT] * 2
    assert [r.exits for r in results] == [0, 500]


SNAPSHOT_LOOPS = 1_000_000
PROGRESS = 0x200000  # where the guest keeps its count of CPUIDs left


def test_a_snapshot_between_fused_exits_goes_on_as_the_original(tmp_path: Path) -> None:
    """Pausing a vCPU that runs fused exits hands them to the processor first: the
    snapshot holds the exits, VMCS and StateSave they left, and both the paused run and
    the restored one end exactly as a run that was never paused."""
    source = f"""
        mov r15, {SNAPSHOT_LOOPS}
    again:
        mov eax, 0
        xor ecx, ecx
        cpuid
        dec r15
        mov [{PROGRESS}], r15
        jnz again
        hlt
    """
    plain = RunImage.of(*run(source))
    vm = Vm(ExitHandlerIntelX64)
    vm.load_asm(source)
    finish = _running(vm)
    deadline = time.monotonic() + 30
    while vm.memory.read_u64(PROGRESS) == 0 and time.monotonic() < deadline:
        time.sleep(0.001)  # until the guest is in its loop, fused
    vm.snapshot(tmp_path / "fused.pfs")
    paused = RunImage.of(vm, finish())
    assert differences(plain, paused) == []
    assert counts(vm)["fused"] > 0

    again = Vm.restore(tmp_path / "fused.pfs")
    left = again.memory.read_u64(PROGRESS)
    assert 0 < left < SNAPSHOT_LOOPS, "the snapshot was not taken inside the loop"
    restored = RunImage.of(again, again.run(timeout=60))
    assert differences(plain, restored) == []
    assert counts(again)["fused"] > 0


def _running(vm: Vm) -> Callable[[], list[VcpuResult]]:
    results: list[list[VcpuResult]] = []
    thread = threading.Thread(target=lambda: results.append(vm.run(timeout=60)))
    thread.start()

    def finish() -> list[VcpuResult]:
        thread.join(90)
        assert not thread.is_alive()
        return results[0]

    return finish


def test_under_the_gdb_stub_every_exit_goes_through_dispatch() -> None:
    """A debugger may break on any exit (``debug.exit_breaks``): while the stub is there the
    fused path steps aside, and the native hooks hand each CPUID to the processor."""
    vm = Vm(ExitHandlerIntelX64, gdb=0, gdb_wait=False)
    vm.load_asm(cpuid_loop(50))
    [result] = vm.run(timeout=60)
    assert result.reason is StopReason.GUEST_HLT and result.exits == 50
    taken = counts(vm)
    assert taken["fused"] == 0 and taken["native"] + taken["python"] == 50
