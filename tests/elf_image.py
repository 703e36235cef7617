"""A minimal ELF64 x86-64 executable, built in the test (no toolchain needed)."""

import struct


def elf_image(segments: list[tuple[int, int, bytes, int, int]], entry: int) -> bytes:
    """A minimal ELF64 x86-64 executable: (vaddr, paddr, data, memsz, flags) per PT_LOAD."""
    header_size, ph_size = 64, 56
    offset = header_size + ph_size * len(segments)
    phdrs, blobs = b"", b""
    for vaddr, paddr, data, memsz, flags in segments:
        phdrs += struct.pack(
            "<IIQQQQQQ", 1, flags, offset + len(blobs), vaddr, paddr, len(data), memsz, 0x1000
        )
        blobs += data
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, entry, header_size, 0, 0, header_size, ph_size,
        len(segments), 64, 0, 0,
    )  # fmt: skip
    return header + phdrs + blobs
