"""ExitStatistics on a real guest: the counts per vCPU and reason are the guest's, with a
user's handler left as it is; the table reaches the debug ring at the stop."""

from __future__ import annotations

import pytest
from observe_helpers import EXPECTED, CountingPortExits, rounds_vm

from pyflank.backends.base import StopReason
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.observe import ExitStatistics
from pyflank.vmm import Vm


def test_counts_per_vcpu_and_reason_are_the_guests(backend: str) -> None:
    stats = ExitStatistics()
    vm = rounds_vm(backend, CountingPortExits, vcpus=2, observers=[stats])
    results = vm.run(timeout=10)
    assert stats.vcpus == [0, 1]
    for result in results:
        assert result.reason is StopReason.GUEST_HLT, result.message
        n = result.vcpuid
        reasons = stats.reasons(n)
        assert {r: s.count for r, s in reasons.items()} == {r: f(n) for r, f in EXPECTED.items()}
        assert stats.exits(n) == result.exits
        # The user's own count, through the user's unchanged handler, agrees.
        handler = vm.vcpus[n].handler
        assert isinstance(handler, CountingPortExits)
        assert handler.counts == {r: s.count for r, s in reasons.items()}
        for row in reasons.values():
            assert 0 < row.min_ns <= row.mean_ns <= row.max_ns
            assert row.total_ns >= row.count * row.min_ns
        assert stats.stop_reason(n) == "guest hlt"
    total = stats.reasons()
    assert total[ExitReason.RDMSR].count == 3 + 6
    assert total[ExitReason.IO_INSTRUCTION].count == 2 + 4
    assert stats.exits() == sum(r.exits for r in results)


def test_the_table_goes_to_each_debug_ring_at_the_stop(backend: str) -> None:
    stats = ExitStatistics()
    [result] = rounds_vm(backend, observers=[stats]).run(timeout=10)
    table = stats.table(0)
    assert table in result.debug_ring
    assert table.splitlines()[0] == "vCPU 0 (stopped: guest hlt): 5 exits"
    rows = {line.split()[1]: line.split()[2] for line in table.splitlines()[2:]}
    assert rows == {"rdmsr": "3", "io_instruction": "2"}
    quiet = ExitStatistics(log_table=False)
    [result] = rounds_vm(backend, observers=[quiet]).run(timeout=10)
    assert "exits" not in result.debug_ring
    assert quiet.exits() == 5


def test_figures_as_data_and_timeline(backend: str) -> None:
    stats = ExitStatistics()
    rounds_vm(backend, vcpus=2, observers=[stats]).run(timeout=10)
    data = stats.as_dict()["vcpus"]
    assert data["1"]["reasons"][str(int(ExitReason.RDMSR))]["count"] == 6
    assert data["1"]["stop"] == "guest hlt"
    timeline = stats.timeline()
    assert len(timeline) == stats.exits() == 15
    assert [t for t, _, _ in timeline] == sorted(t for t, _, _ in timeline)
    assert sum(1 for _, vcpu, _ in timeline if vcpu == 1) == 10
    assert "all vCPUs: 15 exits" in stats.table()


def test_a_new_run_starts_new_figures(backend: str) -> None:
    stats = ExitStatistics()
    rounds_vm(backend, vcpus=2, observers=[stats]).run(timeout=10)
    rounds_vm(backend, observers=[stats]).run(timeout=10)
    assert stats.vcpus == [0]
    assert stats.exits() == 5


def test_no_observer_means_nothing_on_the_exit_path(backend: str) -> None:
    vm = rounds_vm(backend)
    vm.run(timeout=10)
    assert vm.vcpus[0].processor is not None
    assert vm.vcpus[0].processor.observer is None  # the exit path calls nothing extra
    traced = rounds_vm(backend, trace=True)
    [result] = traced.run(timeout=10)
    assert result.trace is not None and len(result.trace) == 5


def test_what_is_not_an_observer_is_refused_at_once() -> None:
    with pytest.raises(TypeError, match=r"observers\[0\] is the class ExitStatistics: pass one"):
        Vm(observers=[ExitStatistics])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"observers\[1\] \(str\) is no observer"):
        Vm(observers=[ExitStatistics(), "stats"])  # type: ignore[list-item]
