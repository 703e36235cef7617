"""The snapshot file refuses what it cannot restore, in one line: another format or version,
a cut or corrupted file, a platform that does not fit; the state of plain objects
round-trips, and names no class but pyflank's own."""

from __future__ import annotations

import struct
from collections import deque
from pathlib import Path

import pytest
from snapshot_helpers import snapshot_at_exit

from pyflank.observe import Observer
from pyflank.platform.devices.clock import VirtualClock
from pyflank.platform.devices.pc import PcConfig, PcPlatform
from pyflank.snapshot import SnapshotError
from pyflank.snapshot import state as plain
from pyflank.snapshot.format import MAGIC
from pyflank.vmm import Vm
from small_guests import LOOP


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("snapshots") / "loop.pfs"

    def vm_of(observers: list[Observer]) -> Vm:
        vm = Vm(observers=observers)
        vm.load_asm(LOOP)
        return vm

    snapshot_at_exit(vm_of, 100, path)
    return path.read_bytes()


def refusal(path: Path) -> str:
    with pytest.raises(SnapshotError) as caught:
        Vm.restore(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_snapshot_restores(saved: bytes, tmp_path: Path) -> None:
    (tmp_path / "good.pfs").write_bytes(saved)
    [result] = Vm.restore(tmp_path / "good.pfs").run(timeout=30)
    assert result.exits == 3000


def test_not_a_snapshot(tmp_path: Path) -> None:
    (tmp_path / "x.pfs").write_bytes(b"hello, world\n" * 4)
    assert "is not a pyflank snapshot" in refusal(tmp_path / "x.pfs")


def test_another_version(saved: bytes, tmp_path: Path) -> None:
    (tmp_path / "v2.pfs").write_bytes(MAGIC + struct.pack("<I", 2) + saved[len(MAGIC) + 4 :])
    assert "is a version 2 snapshot; this pyflank reads version 1 only" in refusal(
        tmp_path / "v2.pfs"
    )


def test_a_cut_file(saved: bytes, tmp_path: Path) -> None:
    (tmp_path / "cut.pfs").write_bytes(saved[: len(saved) - 100])
    assert "is cut short" in refusal(tmp_path / "cut.pfs")


def test_a_corrupted_byte(saved: bytes, tmp_path: Path) -> None:
    damaged = bytearray(saved)
    damaged[len(saved) - 2000] ^= 0x40  # in the RAM section
    (tmp_path / "bad.pfs").write_bytes(bytes(damaged))
    assert "is corrupt: its RAM section fails its checksum" in refusal(tmp_path / "bad.pfs")


def test_a_missing_file(tmp_path: Path) -> None:
    assert "cannot read" in refusal(tmp_path / "absent.pfs")


def test_the_platform_state_round_trips() -> None:
    one = PcPlatform(VirtualClock(), PcConfig(rtc_start=0))
    one.clock.advance(123_456_789)
    one.pic.master.imr = 0xEF
    one.com1.feed(b"typed")
    one.rtc.cmos[0x30] = 0x42
    state, notes = plain.capture([one])
    assert notes == []
    other = PcPlatform(VirtualClock(), PcConfig(rtc_start=0))
    plain.load([other], state)
    assert plain.capture([other])[0] == state
    assert other.clock.now_ns() == 123_456_789 and other.pic.master.imr == 0xEF
    assert other.rtc.cmos[0x30] == 0x42 and other.wakeup.is_set()


def test_state_that_does_not_fit_is_refused() -> None:
    one = PcPlatform(VirtualClock())
    state, _ = plain.capture([one])
    state["0.pic.master.no_such_register"] = 1
    with pytest.raises(plain.StateError, match="no_such_register"):
        plain.load([PcPlatform(VirtualClock())], state)


def test_plain_values_and_only_pyflanks_classes() -> None:
    value = {"a": (1, b"\x00\xff", bytearray(b"x")), 2: deque([1, 2]), "s": frozenset({3})}
    assert plain.decode(plain.encode(value)) == value
    with pytest.raises(plain.StateError, match="not pyflank's"):
        plain.decode({"$enum": "os:SEEK_SET", "value": 0})
