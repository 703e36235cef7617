"""The ELF loader refuses truncated or malformed files with one line naming the file and
what is wrong, before writing anything to guest RAM (issue 11 defect 8)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elf_image import elf_image
from pyflank.memory import GuestPhysicalMemory
from pyflank.platform.loader import LoadError, load_elf

CODE = b"\x90" * 0x40 + b"\xf4"
GOOD = elf_image([(0x100000, 0x100000, CODE, 0x1000, 5)], 0x100000)


def _memory() -> GuestPhysicalMemory:
    return GuestPhysicalMemory(4 << 20)


def test_a_good_image_loads() -> None:
    memory = _memory()
    loaded = load_elf(memory, GOOD)
    assert loaded.entry == 0x100000
    assert memory.read(0x100000, len(CODE)) == CODE


def test_a_truncated_segment_is_refused_not_zero_filled(tmp_path: Path) -> None:
    path = tmp_path / "cut.elf"
    path.write_bytes(GOOD[:-8])  # the segment's last file bytes are missing
    memory = _memory()
    memory.write(0x100000, b"\xcc" * 0x100)
    with pytest.raises(LoadError) as caught:
        load_elf(memory, path)
    message = str(caught.value)
    assert message.startswith(f"{path}: segment 0 is truncated")
    assert "\n" not in message
    assert memory.read(0x100000, 0x100) == b"\xcc" * 0x100  # nothing was written


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (b"", "shorter than an ELF64 header"),
        (b"\x7fELF", "shorter than an ELF64 header"),
        (b"MZ" + bytes(100), "no ELF magic number"),
        (GOOD[:4] + b"\x01" + GOOD[5:], "only ELF64 x86-64"),
        (GOOD[:4] + b"\x07" + GOOD[5:], "malformed ELF file"),
        (GOOD[:0x38] + b"\xff\x00" + GOOD[0x3A:], "program header table ends at"),
        (elf_image([(0x100000, 0x100000, CODE, 0x1000, 5)], 0x900000), "entry point 0x900000"),
        (elf_image([(0x100000, 0x100000, CODE, 8, 5)], 0x100000), "more file bytes"),
        (elf_image([(0x100000, 0x10000000, CODE, 0x1000, 5)], 0x100000), "does not fit"),
        (elf_image([], 0x100000), "no PT_LOAD segment"),
        (elf_image([(0x1000_0123, 0x100000, CODE, 0x1000, 5)], 0x1000_0123), "within a page"),
    ],
)
def test_malformed_images_are_refused_with_the_reason(image: bytes, reason: str) -> None:
    with pytest.raises(LoadError, match=reason) as caught:
        load_elf(_memory(), image)
    assert str(caught.value).startswith("the ELF image: ")


def test_files_that_are_not_regular_are_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path / "fifo", Path("/dev/zero"), tmp_path):
        with pytest.raises(LoadError, match=r"not a regular file|cannot read"):
            load_elf(_memory(), path)
    with pytest.raises(LoadError, match="cannot read"):
        load_elf(_memory(), tmp_path / "missing.elf")


def _fuzz(examples: int) -> int:
    tried = 0

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=8),
        st.integers(0, len(GOOD)),
    )
    def check(flips: list[tuple[int, int]], length: int) -> None:
        nonlocal tried
        tried += 1
        image = bytearray(GOOD)
        for offset, value in flips:
            image[offset] = value
        try:
            load_elf(_memory(), bytes(image[:length]))
        except LoadError as exc:
            assert "\n" not in str(exc)

    check()
    return tried


def test_fuzz_the_loader(capsys: pytest.CaptureFixture[str]) -> None:
    tried = _fuzz(300)
    with capsys.disabled():
        print(f"\nfuzz: {tried} mutated ELF images tried, none failed")


@pytest.mark.slow
def test_fuzz_the_loader_long(capsys: pytest.CaptureFixture[str]) -> None:
    tried = _fuzz(20_000)
    with capsys.disabled():
        print(f"\nfuzz: {tried} mutated ELF images tried, none failed")
