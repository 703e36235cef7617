"""The guest's instruction count on the software CPU, kept only when someone asks for it.

unicorn counts nothing by itself: a UC_HOOK_CODE hook runs before every instruction.  A
Python hook there costs about a microsecond per instruction, so where the host runs it the
hook is native code (``native``): ``inc qword ptr [rcx]`` (RCX holds the hook's user data,
here the counter); a ctypes callback elsewhere.  An engine that nobody asked to count has
no such hook and runs exactly as before.

The count is of guest instructions begun: the exiting instruction is included (the hook
runs before an intercept or an instruction hook sees it), an instruction that faults is
counted each time it is tried.  The stub that loads the guest state (VMLOAD, VMRUN:
``svm``) lies in the host region, outside the hook's address ranges, so it is never
counted; a guest executing code at those very linear addresses (or on the page of the
compatibility-mode stub, below 4 GiB) would not be either.
The instructions a drained exit lets QEMU run to the end of its block (``hooks``) are
not counted: once emulation is asked to stop, unicorn calls no more code hooks.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import TYPE_CHECKING

from unicorn import unicorn_const as uc_const

from pyflank.backends.emu import engine as eng
from pyflank.backends.emu import svm
from pyflank.backends.emu.native import native_code

if TYPE_CHECKING:
    from pyflank.backends.emu.engine import Engine

_HOST_END = svm.HOST_BASE + svm.HOST_SIZE - 1
_TOP = (1 << 64) - 1
_COMPAT_PAGE = svm.COMPAT_STUB & ~0xFFF
# Every linear address but the stubs' (svm): the host region and the compatibility stub's page.
_GUEST_CODE = (
    (0, _COMPAT_PAGE - 1),
    (_COMPAT_PAGE + 0x1000, svm.HOST_BASE - 1),
    (_HOST_END + 1, _TOP),
)


@cache
def native_increment() -> int | None:
    """The address of the native counting hook, or None where the host cannot run it."""
    return native_code("inc qword ptr [rcx]\nret")


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

            callback = eng.BLOCK_CB(count)  # a code hook's callback has a block hook's shape
        user_data = ctypes.addressof(self.cell)
        for begin, end in _GUEST_CODE:
            engine.hook(uc_const.UC_HOOK_CODE, callback, begin=begin, end=end, user_data=user_data)
        # Code translated before the hook existed would run without it.
        engine.uc.ctl_flush_tb()

    def count(self) -> int:
        """Guest instructions begun since the counter was made."""
        return self.cell.value
