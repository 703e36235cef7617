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

    comparisons = bench.compare(count=20_000)
    for line in bench.report(comparisons).splitlines():
        print("  " + line)
    goals = {"vmcall": 1.5, "io-exit": 1.5, "io-device": 1.2}
    met = ", ".join(
        f"{row.pyflank.kind} {row.ratio(row.pyflank):.2f}x (<= {goals[row.pyflank.kind]}x)"
        for row in comparisons
    )
    print(f"  goals (C rate / pyflank rate): {met}")
    results: dict[str, float | str] = {}
    for row in comparisons:
        kind = row.pyflank.kind
        results[f"kvm_{kind}_pyflank_per_s"] = row.pyflank.per_second
        results[f"kvm_{kind}_pure_python_per_s"] = row.pure.per_second
        results[f"kvm_{kind}_c_runner_per_s"] = row.c.per_second
        results[f"kvm_{kind}_c_over_pyflank"] = row.ratio(row.pyflank)
        results[f"kvm_{kind}_c_over_pure_python"] = row.ratio(row.pure)
    return results


register(
    "KVM: pyflank (native, and pure Python) vs a minimal C runner (ratio = C rate / pyflank rate)",
    bench_kvm,
)
