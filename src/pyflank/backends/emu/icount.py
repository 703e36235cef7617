"""The guest's instruction count on the software CPU, kept only when someone asks for it.

unicorn counts nothing by itself: a UC_HOOK_CODE hook runs before every instruction.  A
Python hook there costs about a microsecond per instruction, so where the host allows it
the hook is four bytes of x86-64 machine code in a page of its own, ``inc qword [rcx];
ret`` (the System V ABI passes the hook's user data, here the counter, in RCX), and a
ctypes callback elsewhere.  An engine that nobody asked to count has no such hook and
runs exactly as before.

The count is of guest instructions begun: the exiting instruction is included (the hook
runs before an intercept or an instruction hook sees it), an instruction that faults is
counted each time it is tried.  The VMLOAD/VMRUN stub that loads the guest state lies
outside the hook's address ranges, so it is never counted; a guest executing code at
those very linear addresses would not be either.  The instructions a drained exit lets
QEMU run to the end of its block (``hooks``) are not counted: once emulation is asked to
stop, unicorn calls no more code hooks.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
from functools import cache
from typing import TYPE_CHECKING

from unicorn import unicorn_const as uc_const

from pyflank.backends.emu import svm

if TYPE_CHECKING:
    from pyflank.backends.emu.engine import Engine

_INCREMENT_RCX = bytes.fromhex("48ff01c3")  # inc qword ptr [rcx]; ret
_CODE_CB = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p
)  # uc_cb_hookcode_t
_STUB_END = svm.STUB + len(svm.VMLOAD_VMRUN) - 1
_TOP = (1 << 64) - 1


@cache
def native_increment() -> int | None:
    """The address of the machine-code hook, or None where the host cannot run it (not
    x86-64 System V, or no page may be made executable)."""
    if os.name != "posix" or platform.machine() not in ("x86_64", "amd64"):
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError:
        return None
    page.write(_INCREMENT_RCX)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.mprotect(address, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        return None
    _PAGES.append(page)  # lives as long as the process: hooks may run it at any time
    return address


_PAGES: list[mmap.mmap] = []


class InstructionCounter:
    """Counts the guest instructions ``engine`` runs from now on; ``count()`` reads it.

    ``native=False`` uses the ctypes callback even where the machine code would run (the
    two count the same; tests compare them).
    """

    def __init__(self, engine: Engine, *, native: bool = True) -> None:
        self.cell = ctypes.c_uint64(0)
        increment = native_increment() if native else None
        self.native = increment is not None
        callback: object
        if increment is not None:
            callback = ctypes.c_void_p(increment)
        else:
            cell = self.cell

            def count(_uc: int, _address: int, _size: int, _data: int) -> None:
                cell.value += 1

            callback = _CODE_CB(count)
        user_data = ctypes.addressof(self.cell)
        for begin, end in ((0, svm.STUB - 1), (_STUB_END + 1, _TOP)):
            engine.hook(uc_const.UC_HOOK_CODE, callback, begin=begin, end=end, user_data=user_data)
        # Code translated before the hook existed would run without it.
        engine.uc.ctl_flush_tb()

    def count(self) -> int:
        """Guest instructions begun since the counter was made."""
        return self.cell.value
