"""Putting a program into guest RAM: a flat binary, or an ELF64 executable's PT_LOAD segments."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from pyflank.memory import PAGE_SIZE_4K, GuestPhysicalMemory, PageTableBuilder

_PF_X, _PF_W = 0x1, 0x2


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
    without mapping anything (a kernel entered with paging off maps itself).
    """
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    try:
        elf = ELFFile(io.BytesIO(data))
    except Exception as exc:
        raise LoadError(f"not an ELF file: {exc}") from exc
    if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
        raise LoadError("only ELF64 x86-64 executables can be loaded")
    if elf["e_type"] not in ("ET_EXEC", "ET_DYN"):
        raise LoadError(f"{elf['e_type']} is not an executable")
    segments = []
    for segment in elf.iter_segments():
        if segment["p_type"] != "PT_LOAD" or segment["p_memsz"] == 0:
            continue
        gpa, vaddr = segment["p_paddr"], segment["p_vaddr"]
        filesz, memsz = segment["p_filesz"], segment["p_memsz"]
        if filesz > memsz or not memory.contains(gpa, memsz):
            raise LoadError(f"segment at gpa {gpa:#x} (+{memsz:#x}) does not fit in RAM")
        memory.write(gpa, segment.data()[:filesz])
        memory.fill(gpa + filesz, memsz - filesz)
        if vaddr != gpa and not physical:
            if page_tables is None:
                raise LoadError(f"segment at {vaddr:#x} needs page tables to map gpa {gpa:#x}")
            _map_segment(page_tables, vaddr, gpa, memsz, segment["p_flags"])
        segments.append((gpa, memsz))
    if not segments:
        raise LoadError("the ELF file has no PT_LOAD segment")
    return LoadedImage(entry=elf["e_entry"], segments=tuple(segments))


def _map_segment(tables: PageTableBuilder, vaddr: int, gpa: int, size: int, flags: int) -> None:
    if (vaddr - gpa) % PAGE_SIZE_4K:
        raise LoadError(f"segment at {vaddr:#x} and gpa {gpa:#x} differ within a page")
    start = vaddr - vaddr % PAGE_SIZE_4K
    end = -(-(vaddr + size) // PAGE_SIZE_4K) * PAGE_SIZE_4K
    tables.map(
        start,
        gpa - (vaddr - start),
        end - start,
        writable=bool(flags & _PF_W),
        executable=bool(flags & _PF_X),
    )
