"""Stopping the engine from another thread, exactly at the start of a translation block.

``uc_emu_stop`` from another thread is not precise: unicorn checks for an exit request
after every guest memory access as well, and leaves from inside the instruction making it
-- after a read-modify-write instruction has stored, RIP still points at it and resuming
replays it (a timeout stopped an ``inc [mem]`` loop inconsistently nine times in ten).  So
another thread only raises a flag.  A block hook reads it as each block starts, before any
of the block runs (unicorn emits block hooks ahead of the block's own exit check), and
calls ``uc_emu_stop`` from the vCPU's thread there.

The hook runs for every block the guest executes, so it is native: five instructions,
assembled once per process into a page of its own and mapped executable, on System V
x86-64 hosts (Linux, macOS).  It costs nothing measurable on the exit path.  Elsewhere,
or where no executable page can be had, the same hook is a ctypes callback: as exact,
much slower.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from unicorn import unicorn_const as uc_const

from pyflank.backends.emu import engine as eng
from pyflank.backends.emu.engine import Engine
from pyflank.backends.emu.native import native_code

# void hook(uc_engine *uc, uint64_t address, uint32_t size, void *user_data): System V
# passes uc in RDI and user_data -- the flag -- in RCX; uc_emu_stop(uc) is a tail call.
_HOOK_SOURCE = """
    cmp byte ptr [rcx], 0
    jne stop
    ret
stop:
    movabs rax, {uc_emu_stop:#x}
    jmp rax
"""
_built = False
_native: Any = None  # the hook as a ctypes function, or None where it cannot be built
_lock = threading.Lock()


def _build_native() -> Any:
    """The hook as native code in an executable page, or None."""
    stop = ctypes.cast(eng.emu_stop, ctypes.c_void_p).value
    address = native_code(_HOOK_SOURCE.format(uc_emu_stop=stop))
    return None if address is None else ctypes.cast(address, eng.BLOCK_CB)


def native_hook() -> Any:
    """The native block hook of this process (built at first use), or None."""
    global _built, _native  # one page of code per process
    with _lock:
        if not _built:
            _built = True
            _native = _build_native()
        return _native


class StopGate:
    """A stop request for one engine that takes effect at the next block start."""

    def __init__(self, engine: Engine) -> None:
        self._flag = ctypes.c_uint8(0)
        self._handle = engine.handle
        hook = native_hook()
        self.native = hook is not None
        if hook is None:
            hook = eng.BLOCK_CB(self._hook)
        engine.hook(uc_const.UC_HOOK_BLOCK, hook, user_data=ctypes.addressof(self._flag))

    def request(self) -> None:
        """Stop at the next block start (any thread; it stays requested)."""
        self._flag.value = 1

    def _hook(self, _uc: int, _address: int, _size: int, _data: int) -> None:
        if self._flag.value:
            eng.emu_stop(self._handle)
