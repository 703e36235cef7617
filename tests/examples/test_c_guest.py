"""The C guest SDK: pyflank.h and pyflank.ld with the system's gcc, run on every backend."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyflank import StopReason, Vm
from pyflank.guests import GCC_FLAGS, gcc_command

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc on this machine")


def example_runner():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(EXAMPLES))
    try:
        import c_json_guest
    finally:
        sys.path.remove(str(EXAMPLES))
    return c_json_guest


def test_c_guest_talks_json_over_vmcalls(backend: str) -> None:
    result, console = example_runner().run(backend)
    assert result.reason is StopReason.GUEST_HLT, result.message
    method = "I/O-port doorbell" if backend == "kvm" else "VMCALL"
    assert console.splitlines() == [
        f"c guest on vCPU 0: {method}",
        '> {"cmd": "add", "args": [1, 2, 39]}',
        '< {"result":42}  (result 42)',
        '> {"cmd": "max", "args": [3, 17, 5]}',
        '< {"result":17}  (result 17)',
        '> {"cmd": "launch"}',
        '< {"error":"unknown command","known":["add","echo","max"]}',
    ]


C_SMP = r"""
#include "pyflank.h"
static void guest_main(uint64_t vcpuid)
{
    struct pyflank_vmm vmm = pyflank_init();
    struct pyflank_vmcall_registers regs;
    regs.r02 = 0x100 + vcpuid;
    regs.r12 = 0xC0FFEE;
    uint64_t status = pyflank_vmcall_registers(&vmm, &regs);
    pyflank_vmcall_event(&vmm, &regs, status == PYFLANK_SUCCESS ? 0x600 + vcpuid : 0xBAD);
    if (pyflank_vmcall_versions(&vmm, &regs, 99) == PYFLANK_FAILURE)
        pyflank_vmcall_unittest(&vmm, &regs, 1);
}
PYFLANK_ENTRY(guest_main)
"""


def _build(tmp_path: Path, source: str, flags: tuple[str, ...] | None = None) -> Path:
    c_file, elf = tmp_path / "guest.c", tmp_path / "guest.elf"
    c_file.write_text(source)
    command = gcc_command([str(c_file)], str(elf))
    if flags is not None:
        command = [command[0], *flags, *command[1 + len(GCC_FLAGS) :]]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return elf


def test_every_vcpu_enters_with_its_id_and_its_stack(backend: str, tmp_path: Path) -> None:
    vm = Vm(vcpus=2, backend=backend)
    vm.load_elf(_build(tmp_path, C_SMP))
    results = vm.run(timeout=20)
    for result in results:
        ring = result.debug_ring
        assert result.reason is StopReason.GUEST_HLT, result.message
        assert f"r02: {0x100 + result.vcpuid:#x}\n" in ring and "r12: 0xc0ffee\n" in ring
        assert f"vmcall event:\nr02: {0x600 + result.vcpuid:#x}\n" in ring
        assert "vmm unittest 1 (unittest_state_save_matches_vmcs): passed" in ring


def test_the_header_compiles_cleanly_with_warnings_on(tmp_path: Path) -> None:
    flags = (*GCC_FLAGS, "-Wall", "-Wextra", "-Werror", "-std=gnu11")
    _build(tmp_path, "#define PYFLANK_DEFINE_RUNTIME\n" + C_SMP, flags)


def test_linker_script_matches_the_boot_layout() -> None:
    from pyflank.guests import read
    from pyflank.platform.boot import BootLayout

    assert f". = {BootLayout().load_address:#x};" in read("pyflank.ld")


SSE = r"""
#include "pyflank.h"
static volatile double scale = 1.5;
static void guest_main(uint64_t vcpuid)
{
    volatile double x = (double)vcpuid + 2.0;
    scale = x * scale;
}
PYFLANK_ENTRY(guest_main)
"""


def test_an_emulation_failure_names_the_instruction(backend: str, tmp_path: Path) -> None:
    """Built without -mgeneral-regs-only, SSE reaches KVM's emulator where ring 0 runs there."""
    flags = tuple(f for f in GCC_FLAGS if f != "-mgeneral-regs-only")
    vm = Vm(backend=backend)
    vm.load_elf(_build(tmp_path, SSE, flags))
    [result] = vm.run(timeout=20)
    if result.reason is StopReason.GUEST_HLT:
        return  # the software CPU, or KVM running ring-0 code natively: SSE just works
    assert result.reason is StopReason.EMULATION_FAILURE, result.message
    # "... instruction at 0x100019: pxor xmm0,xmm0 (bytes 66 0f ef c0)"
    decoded = r"at 0x[0-9a-f]+: [a-z]+ \S*xmm\S* \(bytes ([0-9a-f]{2} ?)+\)$"
    assert re.search(decoded, result.message), result.message
