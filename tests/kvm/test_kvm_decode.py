"""Instruction-boundary helpers and the probe's answer without KVM (no /dev/kvm needed)."""

from __future__ import annotations

from pyflank.backends.kvm.decode import io_ending_at, memory_access_ending_at, parse_io
from pyflank.backends.kvm.machine import allow_ranges
from pyflank.backends.kvm.probe import probe_kvm


def test_parse_io_forms() -> None:
    assert parse_io(b"\xee", port=0x3F8, size=1, is_in=False, dx=0x3F8) is not None
    assert parse_io(b"\xee", port=0x3F8, size=1, is_in=False, dx=0x3F9) is None
    imm = parse_io(b"\xe6\x80", port=0x80, size=1, is_in=False, dx=0)
    assert imm is not None and imm.immediate and imm.length == 2
    word = parse_io(b"\x66\xe7\x80", port=0x80, size=2, is_in=False, dx=0)
    assert word is not None and word.length == 3
    assert parse_io(b"\xe7\x80", port=0x80, size=2, is_in=False, dx=0) is None  # that is 4 bytes
    rep = parse_io(b"\xf3\x6e", port=0x80, size=1, is_in=False, dx=0x80)
    assert rep is not None and rep.string and rep.rep


def test_io_ending_at_prefers_the_shortest_fit() -> None:
    code = b"\x90\x66\xba\xf8\x03\xee"  # nop; mov dx, 0x3f8; out dx, al
    match = io_ending_at(code, port=0x3F8, size=1, is_in=False, dx=0x3F8)
    assert match is not None and match.length == 1
    assert io_ending_at(b"\x90\x90", port=0x3F8, size=1, is_in=False, dx=0x3F8) is None


def test_memory_access_ending_at() -> None:
    code = b"\x48\xc7\xc3\x00\x00\x00\x40\xc7\x03\x44\x33\x22\x11"  # mov rbx,..; mov [rbx],imm32
    assert memory_access_ending_at(code, 0x1000 + len(code), 4) == 6


def test_msr_filter_ranges() -> None:
    [deny_all] = allow_ranges(frozenset())
    assert deny_all.bitmap == b"\0"
    [one] = allow_ranges(frozenset({0x10}))
    assert one.base == 0 and one.bitmap[2] == 1


def test_probe_without_a_device_says_why() -> None:
    caps = probe_kvm("/dev/no-such-kvm")
    assert not caps.usable
    assert "does not exist" in caps.reason
    assert "not usable" in caps.describe()
