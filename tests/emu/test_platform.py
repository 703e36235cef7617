"""The platform: boot state, loaders, COM1, the assembler front end."""

from __future__ import annotations

from pathlib import Path

import pytest
from emu_helpers import RUNTIME, SDK, run1

from elf_image import elf_image
from pyflank.backends.base import StopReason
from pyflank.intel_x64 import checks
from pyflank.intel_x64 import fields as f
from pyflank.platform.assemble import AssemblyError, assemble
from pyflank.platform.loader import LoadError
from pyflank.vmm import Vm


def test_boot_vmcs_passes_every_vm_entry_check(backend: str) -> None:
    vm = Vm(vcpus=3, backend=backend)
    for vcpu in vm.vcpus:
        assert checks.check_all(vcpu.vmcs, vcpu.handler.m_cpu) == []
        assert vcpu.vmcs.read(f.GUEST_TR_SELECTOR) == vm.layout.tss_selector(vcpu.vcpuid)


def test_each_vcpu_gets_its_id_and_stack(backend: str) -> None:
    vm = Vm(vcpus=2, backend=backend)
    vm.load_asm("mov r8, rdi\n mov r9, rsp\n hlt")
    results = vm.run(timeout=5)
    for vcpuid, result in enumerate(results):
        assert result.reason is StopReason.GUEST_HLT
        assert result.state.r08 == vcpuid
        assert result.state.r09 == vm.layout.stack_top(vcpuid)


def test_guest_prints_through_the_sdk() -> None:
    source = (
        SDK
        + """
        PUTS text, 13
        mov al, 0x21
        PUTC
        PYFLANK_HALT
    text: .ascii "hello, world\\n"
    """
        + RUNTIME
    )
    vm, result = run1(source)
    assert vm.serial_output == b"hello, world\n!"
    assert result.reason is StopReason.GUEST_HLT


def test_elf_segments_load_at_their_addresses_with_bss_and_a_high_mapping(
    tmp_path: Path, backend: str
) -> None:
    high = 0xFFFF_8000_0020_0000
    code = assemble(f"mov rax, {high:#x}\n mov r8, [rax]\n mov r9, [rax + 0x100]\n hlt", 0x100000)
    data = (0x1122334455667788).to_bytes(8, "little")
    image = elf_image(
        [(0x100000, 0x100000, code, len(code), 5), (high, 0x200000, data, 0x200, 6)], 0x100000
    )
    path = tmp_path / "guest.elf"
    path.write_bytes(image)
    vm = Vm(backend=backend)
    vm.memory.write(0x200100, b"\xff" * 8)  # stale bytes the loader must zero (bss)
    loaded = vm.load_elf(path)
    assert loaded.entry == 0x100000
    [result] = vm.run(timeout=5)
    assert result.state.r08 == 0x1122334455667788
    assert result.state.r09 == 0


@pytest.mark.backend_independent  # no guest
def test_loaders_refuse_what_does_not_fit() -> None:
    vm = Vm(memory_size=4 * 1024 * 1024)
    with pytest.raises(LoadError):
        vm.load_flat(b"\x90" * 16, gpa=vm.memory.size - 8)
    with pytest.raises(LoadError):
        vm.load_elf(b"not an elf")
    with pytest.raises(LoadError):
        vm.load_elf(elf_image([(0x100000, 0x10000000, b"\x90", 1, 5)], 0x100000))


@pytest.mark.backend_independent  # no guest
def test_assembler_includes_and_reports_errors(tmp_path: Path) -> None:
    (tmp_path / "lib.inc").write_text(".macro SEVEN reg\n mov \\reg, 7\n.endm\n")
    code = assemble('.include "lib.inc"\n SEVEN rax', include_dirs=[tmp_path])
    assert code == assemble("mov rax, 7")
    with pytest.raises(AssemblyError, match="not found"):
        assemble('.include "missing.inc"', include_dirs=[tmp_path])
    with pytest.raises(AssemblyError):
        assemble("mov rax, nonsense_register_name_")


def test_a_vm_runs_once(backend: str) -> None:
    vm = Vm(backend=backend)
    vm.load_asm("hlt")
    vm.run(timeout=5)
    with pytest.raises(RuntimeError):
        vm.run()
