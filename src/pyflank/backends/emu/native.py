"""Native hooks: a few instructions of x86-64 machine code in an executable page of their
own, for hooks that run at every block or instruction, where a Python callback would cost
more than the work (``stop_gate``, ``icount``).

unicorn calls a hook as ``void hook(uc_engine *uc, uint64_t address, uint32_t size, void
*user_data)``: on System V x86-64 hosts (Linux, macOS) ``uc`` is in RDI and ``user_data``
in RCX.  Elsewhere, or where the host lets no page be made executable (a W^X policy), there
is no native code and callers fall back to ctypes callbacks.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import sys
import threading

from keystone import KS_ARCH_X86, KS_MODE_64, Ks, KsError

_PAGE = mmap.PAGESIZE
_pages: list[mmap.mmap] = []  # kept for the life of the process: hooks may run them anytime
_lock = threading.Lock()


def system_v_x86_64() -> bool:
    """Whether this host calls functions as native hooks expect (System V x86-64)."""
    return sys.platform != "win32" and platform.machine().lower() in ("x86_64", "amd64")


def native_code(source: str) -> int | None:
    """``source`` (Intel syntax) assembled into an executable page of its own: its address,
    or None where the host cannot run it."""
    if not system_v_x86_64():
        return None
    try:
        code, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(source, 0)
        page = mmap.mmap(-1, _PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (KsError, OSError, ValueError):
        return None
    page.write(bytes(code or b""))
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.mprotect(address, _PAGE, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        return None  # W^X policy: no executable page for us
    with _lock:
        _pages.append(page)
    return address
