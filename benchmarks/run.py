"""``make bench``: every benchmark in one run, printed and saved to build/bench/latest.json
(untracked); ``make bench-reference`` (``--reference``) keeps the run as the tracked
reference, benchmarks/results/reference.json.

Rates are measured back to back in one process so that ratios between them
are meaningful on a shared, noisy machine; absolute numbers are not.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

from benchmarks import dispatch
from benchmarks.registry import SECTIONS, register

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "build" / "bench" / "latest.json"  # build/ is ignored by git
REFERENCE = Path(__file__).with_name("results") / "reference.json"


def bench_dispatch() -> dict[str, float | str]:
    cpuid = dispatch.rate(dispatch.cpuid_handler())
    versions = dispatch.rate(dispatch.versions_handler())
    print(f"  dispatch() CPUID exit:            {cpuid:12,.0f} exits/s")
    print(f"  dispatch() VMCALL VERSIONS exit:  {versions:12,.0f} exits/s")
    print("  where the time goes (CPUID exit, share of own time under cProfile):")
    for line in dispatch.profile(dispatch.cpuid_handler(), exits=50_000):
        print("   ", line)
    return {"dispatch_cpuid_exits_per_s": cpuid, "dispatch_vmcall_versions_exits_per_s": versions}


register("software VMCS, no backend", bench_dispatch)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--reference"]):
        print("usage: python -m benchmarks.run [--reference]", file=sys.stderr)
        return 2
    target = REFERENCE if args else RESULTS
    for module in (
        "benchmarks.emu", "benchmarks.emu_ept", "benchmarks.kvm", "benchmarks.vcpus",
        "benchmarks.bfm",
        "benchmarks.observe", "benchmarks.linux", "benchmarks.snapshot",
    ):  # fmt: skip
        importlib.import_module(module)  # each registers its own section
    print(f"pyflank benchmarks — Python {platform.python_version()} on {platform.machine()}")
    results: dict[str, object] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    for name, section in SECTIONS.items():
        print(f"\n[{name}]")
        results[name] = section()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nsaved {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
