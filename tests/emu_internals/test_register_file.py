"""The software CPU reads unicorn's registers in place when it can prove the layout;
every exit must then see exactly what the C API would have reported."""

from collections.abc import Iterator

import pytest

from pyflank.backends.emu import register_probe
from pyflank.backends.emu.register_file import InPlace, ThroughApi
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.fields import FieldType
from pyflank.vmm import Vm

GUEST_FIELDS = tuple(
    fld.encoding for fld in f.ALL_FIELDS if fld.type is FieldType.GUEST_STATE and not fld.is_high
)
# State that moves between exits taken at one CPUID site, and at many sites.
STRESS = """
    mov r12, 6
again:
    mov eax, 0x10
    test r12, 1
    jz even
    xor eax, eax
even:
    mov es, ax
    mov rax, r12
    and rax, 1
    shl rax, 16
    mov dr7, rax
    cld
    test r12, 2
    jz no_std
    std
no_std:
    stc
    mov eax, r12d
    cpuid
    add rsp, 8
    sub rsp, 8
    clc
    xor ecx, ecx
    cpuid
    push r12
    popfq
    cpuid
    lea rbx, [rip + again]
    dec r12
    jnz again
    cld
    xor eax, eax
    mov dr7, rax
    .byte 0x48, 0x0f, 0xa2
    hlt
"""


class Snapshots(ExitHandlerIntelX64):
    """Remembers, at every exit, everything the handler can observe."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[object, ...]] = []

    def dispatch(self) -> None:
        read = self.m_vmcs.read
        fields = tuple(read(e) for e in GUEST_FIELDS)
        exit_info = (read(f.VM_EXIT_REASON), read(f.VM_EXIT_INSTRUCTION_LENGTH))
        self.seen.append((tuple(self.m_state_save.as_dict().values()), fields, exit_info))
        super().dispatch()


def run_stress() -> tuple[list[tuple[object, ...]], type]:
    vm = Vm(Snapshots)
    vm.load_asm(STRESS)
    [result] = vm.run(timeout=10)
    assert result.reason.value == "guest hlt", result.message
    handler = vm.vcpus[0].handler
    assert isinstance(handler, Snapshots)
    return handler.seen, type(vm.vcpus[0].engine.capture.registers)  # type: ignore[union-attr]


@pytest.fixture
def forced_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(register_probe.FORCE_API, "api")
    yield


def test_in_place_and_api_paths_see_the_same_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, fast_kind = run_stress()
    monkeypatch.setenv(register_probe.FORCE_API, "api")
    slow, slow_kind = run_stress()
    assert slow_kind is ThroughApi
    if fast_kind is not InPlace:
        pytest.skip("this unicorn's register layout was not recognised: the API path is in use")
    assert len(fast) == len(slow) == 6 * 3 + 1
    for i, (a, b) in enumerate(zip(fast, slow, strict=True)):
        assert a == b, f"exit {i} differs"
    assert fast[-1][2][1] == 3  # the prefixed CPUID: length from a full decode
