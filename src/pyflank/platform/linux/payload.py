"""The ELF ``vmlinux`` inside a bzImage: its compressed payload, decompressed.

Debian compresses the payload with LZ4 (the kernel's "legacy" LZ4 frame: a magic, then
blocks of at most 8 MiB each prefixed by their compressed size, then the build's
4-byte uncompressed-size trailer).  gzip, xz, lzma and bzip2 come from the standard
library; LZ4 blocks from the system's liblz4 through ctypes (every Debian system has it,
apt links it) or, without it, a small decoder in Python.
"""

from __future__ import annotations

import bz2
import ctypes
import ctypes.util
import gzip
import lzma
import struct
from typing import Final

from pyflank.platform.linux.setup_header import BootProtocolError, parse
from pyflank.platform.loader import ELF_MAGIC

LZ4_LEGACY_MAGIC: Final = 0x184C2102
LZ4_LEGACY_BLOCK: Final = 8 << 20


def _length(block: bytes, i: int, nibble: int) -> tuple[int, int]:
    """A sequence's literal or match length: the token's nibble, and while it is at its
    maximum, the bytes after it added up until one is not 255."""
    length = nibble
    if nibble == 15:
        while True:
            extra = block[i]
            i += 1
            length += extra
            if extra != 255:
                break
    return length, i


def _lz4_block_python(block: bytes, capacity: int) -> bytes:
    out = bytearray()
    i, end = 0, len(block)
    while i < end:
        token = block[i]
        literals, i = _length(block, i + 1, token >> 4)
        out += block[i : i + literals]
        i += literals
        if i >= end:
            break  # the last sequence has literals only
        offset = block[i] | block[i + 1] << 8
        length, i = _length(block, i + 2, token & 15)
        length += 4
        if not 0 < offset <= len(out):
            raise BootProtocolError("corrupt LZ4 block: a match reaches before the output")
        start = len(out) - offset
        if offset >= length:
            out += out[start : start + length]
        else:  # overlapping: the match repeats the last ``offset`` bytes
            pattern = bytes(out[start:])
            out += (pattern * (length // offset + 1))[:length]
        if len(out) > capacity:
            raise BootProtocolError("corrupt LZ4 block: longer than a legacy block")
    return bytes(out)


def _liblz4() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("lz4")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return None
    library.LZ4_decompress_safe.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    library.LZ4_decompress_safe.restype = ctypes.c_int
    return library


def lz4_legacy(data: bytes, *, native: bool = True) -> bytes:
    if len(data) < 4 or struct.unpack_from("<I", data)[0] != LZ4_LEGACY_MAGIC:
        raise BootProtocolError("not a legacy LZ4 stream")
    library = _liblz4() if native else None
    buffer = ctypes.create_string_buffer(LZ4_LEGACY_BLOCK) if library else None
    parts, offset = [], 4
    while offset + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        if size == LZ4_LEGACY_MAGIC:  # a concatenated stream
            offset += 4
            continue
        if offset + 4 + size > len(data):
            break  # the uncompressed-size trailer, not a block
        block = data[offset + 4 : offset + 4 + size]
        offset += 4 + size
        if library is not None and buffer is not None:
            length = library.LZ4_decompress_safe(block, buffer, size, LZ4_LEGACY_BLOCK)
            if length < 0:
                raise BootProtocolError("corrupt LZ4 block")
            parts.append(buffer.raw[:length])
        else:
            parts.append(_lz4_block_python(block, LZ4_LEGACY_BLOCK))
    return b"".join(parts)


def decompress(payload: bytes) -> bytes:
    if payload.startswith(b"\x1f\x8b"):
        return gzip.decompress(payload)
    if payload.startswith(b"\xfd7zXZ\0") or payload.startswith(b"\x5d\0\0"):
        return lzma.LZMADecompressor().decompress(payload)
    if payload.startswith(b"BZh"):
        return bz2.decompress(payload)
    if payload[:4] == struct.pack("<I", LZ4_LEGACY_MAGIC):
        return lz4_legacy(payload)
    raise BootProtocolError(f"payload compression {payload[:4].hex()} is not supported")


def extract_vmlinux(image: bytes) -> bytes:
    """The ELF kernel a bzImage carries (with the relocation table the build appends)."""
    header = parse(image)
    if not header.payload_length:
        raise BootProtocolError("this bzImage does not describe its payload (protocol < 2.08)")
    start = header.setup_size + header.payload_offset
    elf = decompress(image[start : start + header.payload_length])
    if not elf.startswith(ELF_MAGIC):
        raise BootProtocolError("the decompressed payload is not an ELF file")
    return elf
