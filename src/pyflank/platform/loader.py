"""Putting a program into guest RAM: a flat binary, or an ELF64 executable's PT_LOAD segments."""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pyflank.memory import PAGE_SIZE_4K, GuestPhysicalMemory, PageTableBuilder

ELF_MAGIC = b"\x7fELF"  # how an ELF file begins (a vmlinux, a guest program)

_PF_X, _PF_W = 0x1, 0x2
_ELF64_HEADER, _ELF64_PHDR = 64, 56


class LoadError(ValueError):
    """The image cannot be loaded into this guest."""


@dataclass(frozen=True)
class LoadedImage:
    entry: int
    segments: tuple[tuple[int, int], ...]  # (gpa, size in memory)


def load_flat(memory: GuestPhysicalMemory, code: bytes, gpa: int) -> LoadedImage:
    if not memory.contains(gpa, len(code)):
        raise LoadError(f"{len(code)} bytes at gpa {gpa:#x} do not fit in {memory.size:#x} of RAM")
    memory.write(gpa, code)
    return LoadedImage(entry=gpa, segments=((gpa, len(code)),))


def _read_image(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = getattr(exc, "strerror", None) or exc
        raise LoadError(f"{path}: cannot read: {reason}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a regular file ends: /dev/zero does not
        os.close(fd)
        raise LoadError(f"{path}: not a regular file")
    try:
        with os.fdopen(fd, "rb") as stream:
            return stream.read()
    except OSError as exc:
        raise LoadError(f"{path}: cannot read: {exc.strerror or exc}") from None


def load_elf(
    memory: GuestPhysicalMemory,
    image: bytes | str | Path,
    page_tables: PageTableBuilder | None = None,
    *,
    physical: bool = False,
) -> LoadedImage:
    """Load PT_LOAD segments at their physical addresses, zero-filling to p_memsz.

    A segment whose virtual address differs from its physical one is mapped there with
    4 KiB pages (rights from its flags) when ``page_tables`` is given; ``physical`` loads
    without mapping anything (a kernel entered with paging off maps itself).  A truncated
    or malformed file is a ``LoadError`` naming the file and what is wrong; nothing is
    written to guest RAM unless every segment checks out.
    """
    name = "the ELF image" if isinstance(image, bytes) else str(image)
    data = image if isinstance(image, bytes) else _read_image(Path(image))
    try:
        segments, entry = _parse(data, memory)
    except LoadError as exc:
        raise LoadError(f"{name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - elftools on a hostile file can raise anything
        raise LoadError(f"{name}: malformed ELF file ({type(exc).__name__}: {exc})") from None
    mapped = [] if physical else [s for s in segments if s.vaddr != s.gpa]
    for segment in mapped:
        if (segment.vaddr - segment.gpa) % PAGE_SIZE_4K:
            raise LoadError(
                f"{name}: segment {segment.index} at {segment.vaddr:#x} and gpa "
                f"{segment.gpa:#x} differ within a page"
            )
        if page_tables is None:
            raise LoadError(
                f"{name}: segment {segment.index} at {segment.vaddr:#x} needs page tables "
                f"to map gpa {segment.gpa:#x}"
            )
    for segment in segments:
        memory.write(segment.gpa, data[segment.offset : segment.offset + segment.filesz])
        memory.fill(segment.gpa + segment.filesz, segment.memsz - segment.filesz)
    for segment in mapped:
        assert page_tables is not None
        try:
            _map_segment(page_tables, segment)
        except ValueError as exc:  # a non-canonical address, page-table area full, ...
            raise LoadError(f"{name}: segment {segment.index}: {exc}") from None
    return LoadedImage(entry=entry, segments=tuple((s.gpa, s.memsz) for s in segments))


@dataclass(frozen=True)
class _Segment:
    index: int
    offset: int
    gpa: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int


def _parse(data: bytes, memory: GuestPhysicalMemory) -> tuple[list[_Segment], int]:
    if len(data) < _ELF64_HEADER:
        raise LoadError(f"not an ELF file ({len(data)} bytes, shorter than an ELF64 header)")
    if not data.startswith(ELF_MAGIC):
        raise LoadError("not an ELF file (no ELF magic number)")
    from elftools.elf.elffile import ELFFile  # noqa: PLC0415 - a flat image (bfm's agent) needs none

    elf = ELFFile(io.BytesIO(data))
    if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
        raise LoadError("only ELF64 x86-64 executables can be loaded")
    if elf["e_type"] not in ("ET_EXEC", "ET_DYN"):
        raise LoadError(f"{elf['e_type']} is not an executable")
    table_end = elf["e_phoff"] + elf["e_phnum"] * elf["e_phentsize"]
    if elf["e_phnum"] and (elf["e_phentsize"] != _ELF64_PHDR or table_end > len(data)):
        raise LoadError(f"the program header table ends at {table_end:#x}, past the file")
    segments = []
    for index in range(elf["e_phnum"]):
        header = elf.get_segment(index).header
        if header["p_type"] != "PT_LOAD" or header["p_memsz"] == 0:
            continue
        segment = _Segment(
            index, header["p_offset"], header["p_paddr"], header["p_vaddr"],
            header["p_filesz"], header["p_memsz"], header["p_flags"],
        )  # fmt: skip
        if segment.offset + segment.filesz > len(data):
            raise LoadError(
                f"segment {index} is truncated: it needs bytes up to "
                f"{segment.offset + segment.filesz:#x}, the file has {len(data):#x}"
            )
        if segment.filesz > segment.memsz:
            raise LoadError(f"segment {index} has more file bytes than memory bytes")
        if not memory.contains(segment.gpa, segment.memsz):
            raise LoadError(
                f"segment {index} at gpa {segment.gpa:#x} (+{segment.memsz:#x}) does not fit "
                f"in {memory.size:#x} bytes of RAM"
            )
        segments.append(segment)
    if not segments:
        raise LoadError("the ELF file has no PT_LOAD segment")
    entry = elf["e_entry"]
    # A kernel's entry may be physical (vmlinux: e_entry is where startup_64 is loaded).
    if not any(entry - base in range(s.memsz) for s in segments for base in (s.vaddr, s.gpa)):
        raise LoadError(f"the entry point {entry:#x} is outside every PT_LOAD segment")
    return segments, entry


def _map_segment(tables: PageTableBuilder, segment: _Segment) -> None:
    vaddr, gpa, size, flags = segment.vaddr, segment.gpa, segment.memsz, segment.flags
    start = vaddr - vaddr % PAGE_SIZE_4K
    end = -(-(vaddr + size) // PAGE_SIZE_4K) * PAGE_SIZE_4K
    tables.map(
        start,
        gpa - (vaddr - start),
        end - start,
        writable=bool(flags & _PF_W),
        executable=bool(flags & _PF_X),
    )
