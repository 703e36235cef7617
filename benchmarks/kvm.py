"""KVM: pyflank's exit path against a minimal C VMM on the same guest loop (issue 5)."""

from __future__ import annotations

from benchmarks.registry import register
from pyflank.backends.kvm.probe import probe_kvm


def bench_kvm() -> dict[str, float | str]:
    capabilities = probe_kvm("/dev/kvm", measure=False)
    if not capabilities.usable:
        print(f"  skipped: {capabilities.reason}")
        return {"skipped": str(capabilities.reason)}
    from benchmarks import kvm_compare as bench  # noqa: PLC0415 - only when KVM is usable

    pairs = bench.compare(count=20_000)
    for line in bench.report(pairs).splitlines():
        print("  " + line)
    results: dict[str, float | str] = {}
    for py, c in pairs:
        results[f"kvm_{py.kind}_pyflank_per_s"] = py.per_second
        results[f"kvm_{py.kind}_c_runner_per_s"] = c.per_second
        results[f"kvm_{py.kind}_c_over_pyflank"] = c.per_second / py.per_second
    return results


register("KVM: pyflank vs a minimal C runner (ratio = C rate / pyflank rate)", bench_kvm)
