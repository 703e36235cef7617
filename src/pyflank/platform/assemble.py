"""Assembling guest programs (Intel syntax) with keystone, with ``.include`` resolved here.

keystone handles ``.macro`` itself but has no file system, so ``.include "name"`` lines are
replaced by the named file, looked up in ``include_dirs`` (the guest SDK, package data of
``pyflank.guests``, by default).  It has no numeric local labels (``1:``/``1b``) and no ``\\@``:
guest sources use named labels.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from importlib.resources.abc import Traversable
from pathlib import Path

from keystone import KS_ARCH_X86, KS_MODE_64, Ks, KsError

from pyflank import guests

IncludeDir = Path | Traversable
SDK_INCLUDE_DIRS: tuple[IncludeDir, ...] = (guests.files(),)
_INCLUDE = re.compile(r'^\s*\.include\s+"([^"]+)"\s*$', re.MULTILINE)
_local = threading.local()


class AssemblyError(ValueError):
    """The source does not assemble (keystone's reason), or an include is missing."""


def preprocess(
    source: str, include_dirs: Sequence[IncludeDir] = SDK_INCLUDE_DIRS, depth: int = 0
) -> str:
    """``source`` with every ``.include "name"`` replaced by the file, recursively."""
    if depth > 8:
        raise AssemblyError(".include nested too deeply")

    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        for directory in include_dirs:
            candidate = directory.joinpath(name)
            if candidate.is_file():
                return preprocess(candidate.read_text(encoding="utf-8"), include_dirs, depth + 1)
        raise AssemblyError(f'.include "{name}": not found in {[str(d) for d in include_dirs]}')

    return _INCLUDE.sub(include, source)


def assemble(
    source: str, address: int = 0x100000, include_dirs: Sequence[IncludeDir] = SDK_INCLUDE_DIRS
) -> bytes:
    """Machine code of ``source`` placed at ``address``."""
    text = preprocess(source, include_dirs)
    ks: Ks | None = getattr(_local, "ks", None)
    if ks is None:
        ks = _local.ks = Ks(KS_ARCH_X86, KS_MODE_64)
    try:
        encoding, _count = ks.asm(text, address)
    except KsError as exc:
        raise AssemblyError(f"keystone: {exc}") from exc
    if encoding is None:
        raise AssemblyError("keystone produced no code")
    return bytes(encoding)
