"""The software VMCS: widths, unknown encodings, read-only fields, lifecycle."""

import pytest

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.vmcs import Vmcs, VmcsError, VmcsState


@pytest.mark.parametrize(
    ("encoding", "bits"),
    [
        (f.GUEST_CS_SELECTOR, 16),
        (f.GUEST_CS_LIMIT, 32),
        (f.GUEST_IA32_EFER, 64),
        (f.GUEST_RIP, 64),
        (f.GUEST_IA32_EFER_HIGH, 32),
    ],
)
def test_writes_truncate_to_field_width(encoding: int, bits: int) -> None:
    vmcs = Vmcs()
    vmcs.write(encoding, (1 << 80) - 1)
    assert vmcs.read(encoding) == (1 << bits) - 1


def test_high_half_aliases_the_full_field() -> None:
    vmcs = Vmcs()
    vmcs.write(f.GUEST_IA32_EFER, 0x1111_2222_3333_4444)
    assert vmcs.read(f.GUEST_IA32_EFER_HIGH) == 0x1111_2222
    vmcs.write(f.GUEST_IA32_EFER_HIGH, 0xAAAA_BBBB)
    assert vmcs.read(f.GUEST_IA32_EFER) == 0xAAAA_BBBB_3333_4444


@pytest.mark.parametrize("encoding", [0x0001, 0x6C40, 0xFFFF, -1, f.GUEST_RIP + 1])
def test_unknown_encodings_are_refused(encoding: int) -> None:
    vmcs = Vmcs()
    with pytest.raises(VmcsError, match="unsupported VMCS component"):
        vmcs.read(encoding)
    with pytest.raises(VmcsError):
        vmcs.write(encoding, 0)


@pytest.mark.parametrize(
    "encoding",
    [f.VM_EXIT_REASON, f.EXIT_QUALIFICATION, f.GUEST_PHYSICAL_ADDRESS, f.VM_INSTRUCTION_ERROR],
)
def test_read_only_fields_refuse_guest_writes_but_not_the_processor(encoding: int) -> None:
    vmcs = Vmcs()
    with pytest.raises(VmcsError, match="read-only"):
        vmcs.write(encoding, 1)
    vmcs.processor_write(encoding, 5)
    assert vmcs.read(encoding) == 5


def test_every_field_is_present() -> None:
    vmcs = Vmcs()
    for field in f.ALL_FIELDS:
        assert vmcs.read(field.encoding) == 0


def test_dirty_tracks_handler_writes_only() -> None:
    vmcs = Vmcs()
    vmcs.processor_write(f.GUEST_RIP, 1)
    assert not vmcs.dirty
    vmcs.write(f.GUEST_CR0, 1)
    vmcs.write(f.GUEST_IA32_PAT_HIGH, 1)
    assert vmcs.dirty == {f.GUEST_CR0, f.GUEST_IA32_PAT}


def test_lifecycle() -> None:
    vmcs = Vmcs()
    with pytest.raises(VmcsError, match="VMPTRLD"):
        vmcs.launch()
    vmcs.load()
    with pytest.raises(VmcsError, match="VM instruction error 5"):
        vmcs.resume()
    assert vmcs.read(f.VM_INSTRUCTION_ERROR) == 5
    vmcs.launch()
    assert vmcs.state is VmcsState.LAUNCHED
    with pytest.raises(VmcsError, match="VM instruction error 4"):
        vmcs.launch()
    vmcs.resume()
    assert vmcs.entries == 2
    vmcs.clear()
    assert vmcs.state is VmcsState.CLEAR and not vmcs.current
    vmcs.load()
    vmcs.launch()
    vmcs.promote()
    assert not vmcs.running
    with pytest.raises(VmcsError, match="promoted"):
        vmcs.resume()
