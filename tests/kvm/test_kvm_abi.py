"""The ctypes layouts and ioctl numbers agree with the installed kernel headers.

The C compiler is the authority: a tiny program prints ``sizeof``/``offsetof``
and the ioctl macros; this needs ``cc`` and ``linux/kvm.h`` but not ``/dev/kvm``.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from pyflank.backends.kvm import abi
from pyflank.backends.kvm import structs as s

HEADER = Path("/usr/include/linux/kvm.h")
pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None or not HEADER.exists(),
    reason="needs a C compiler and the kernel UAPI headers (linux/kvm.h) to compare layouts",
)

# (ctypes type, C type, member paths to compare: python path -> C member expression)
LAYOUTS: list[tuple[type[ctypes._CData], str, dict[str, str]]] = [
    (s.KvmRegs, "struct kvm_regs", {"rip": "rip", "r8": "r8", "rflags": "rflags"}),
    (s.KvmSegment, "struct kvm_segment", {"selector": "selector", "unusable": "unusable"}),
    (s.KvmDtable, "struct kvm_dtable", {"limit": "limit"}),
    (
        s.KvmSregs,
        "struct kvm_sregs",
        {
            "tr": "tr",
            "gdt": "gdt",
            "idt": "idt",
            "cr0": "cr0",
            "efer": "efer",
            "interrupt_bitmap": "interrupt_bitmap",
        },
    ),
    (
        s.KvmVcpuEvents,
        "struct kvm_vcpu_events",
        {
            "sipi_vector": "sipi_vector",
            "flags": "flags",
            "smi": "smi",
            "exception_payload": "exception_payload",
        },
    ),
    (
        s.KvmRun,
        "struct kvm_run",
        {
            "immediate_exit": "immediate_exit",
            "exit_reason": "exit_reason",
            "cr8": "cr8",
            "exit": "io",
            "kvm_valid_regs": "kvm_valid_regs",
            "kvm_dirty_regs": "kvm_dirty_regs",
            "s": "s",
        },
    ),
    (
        s.KvmUserspaceMemoryRegion,
        "struct kvm_userspace_memory_region",
        {"userspace_addr": "userspace_addr"},
    ),
    (s.KvmEnableCap, "struct kvm_enable_cap", {"args": "args", "pad": "pad"}),
    (s.KvmPitConfig, "struct kvm_pit_config", {"pad": "pad"}),
    (s.KvmInterrupt, "struct kvm_interrupt", {"irq": "irq"}),
    (s.KvmMsrFilterRange, "struct kvm_msr_filter_range", {"base": "base", "bitmap": "bitmap"}),
    (s.KvmMsrFilter, "struct kvm_msr_filter", {"ranges": "ranges"}),
    (s.KvmCpuidEntry2, "struct kvm_cpuid_entry2", {"eax": "eax", "edx": "edx"}),
    (s.KvmCpuid2, "struct kvm_cpuid2", {}),
    (s.KvmMsrEntry, "struct kvm_msr_entry", {"data": "data"}),
    (s.KvmMsrs, "struct kvm_msrs", {}),
    (s.KvmSyncRegs, "struct kvm_sync_regs", {"sregs": "sregs", "events": "events"}),
]

# Members of the exit union: (python path, C member expression).
EXIT_MEMBERS = {
    "io.port": "io.port",
    "io.count": "io.count",
    "io.data_offset": "io.data_offset",
    "mmio.len": "mmio.len",
    "mmio.is_write": "mmio.is_write",
    "hypercall.ret": "hypercall.ret",
    "hypercall.longmode": "hypercall.longmode",
    "internal.data": "internal.data",
    "emulation_failure.insn_size": "emulation_failure.insn_size",
    "emulation_failure.insn_bytes": "emulation_failure.insn_bytes",
    "fail_entry.cpu": "fail_entry.cpu",
    "system_event.data": "system_event.data",
    "msr.reason": "msr.reason",
    "msr.index": "msr.index",
    "msr.data": "msr.data",
}

IOCTLS = [
    name
    for name in dir(abi)
    if name.startswith("KVM_")
    and name.split("_")[1] in {"GET", "SET", "CREATE", "RUN", "CHECK", "ENABLE", "INTERRUPT", "X86"}
    and not name.startswith(("KVM_EXIT", "KVM_CAP", "KVM_MSR", "KVM_SYNC", "KVM_SYSTEM"))
]


def _offset(ctype: type[ctypes._CData], path: str) -> int:
    offset = 0
    for part in path.split("."):
        field = getattr(ctype, part)
        offset += field.offset
        ctype = dict(ctype._fields_)[part]  # type: ignore[attr-defined]
    return offset


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    lines = []
    for _, cname, members in LAYOUTS:
        lines.append(f'printf("sizeof {cname} %zu\\n", sizeof({cname}));')
        for member in members.values():
            lines.append(
                f'printf("offsetof {cname} {member} %zu\\n", offsetof({cname}, {member}));'
            )
    for member in EXIT_MEMBERS.values():
        lines.append(f'printf("exit {member} %zu\\n", offsetof(struct kvm_run, {member}));')
    for name in IOCTLS:
        lines.append(f'printf("ioctl {name} %lu\\n", (unsigned long)({name}));')
    source = (
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\n"
        "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n"
    )
    workdir = tmp_path_factory.mktemp("kvm_abi")
    (workdir / "abi.c").write_text(source)
    subprocess.run(["cc", "-o", str(workdir / "abi"), str(workdir / "abi.c")], check=True)
    out = subprocess.run([str(workdir / "abi")], check=True, capture_output=True, text=True)
    facts: dict[str, int] = {}
    for line in out.stdout.splitlines():
        key, value = line.rsplit(" ", 1)
        facts[key] = int(value)
    return facts


@pytest.mark.parametrize(("ctype", "cname", "members"), LAYOUTS, ids=[c for _, c, _ in LAYOUTS])
def test_struct_layout(
    c_facts: dict[str, int], ctype: type[ctypes._CData], cname: str, members: dict[str, str]
) -> None:
    assert ctypes.sizeof(ctype) == c_facts[f"sizeof {cname}"]
    for path, member in members.items():
        assert _offset(ctype, path) == c_facts[f"offsetof {cname} {member}"], path


def test_exit_union_members(c_facts: dict[str, int]) -> None:
    base = s.KvmRun.exit.offset
    for path, member in EXIT_MEMBERS.items():
        assert base + _offset(s.KvmRunExit, path) == c_facts[f"exit {member}"], path


def test_ioctl_numbers(c_facts: dict[str, int]) -> None:
    assert IOCTLS, "no ioctl numbers found in the abi module"
    for name in IOCTLS:
        assert getattr(abi, name) == c_facts[f"ioctl {name}"], name
