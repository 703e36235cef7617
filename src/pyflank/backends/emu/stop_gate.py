"""Stopping the engine exactly at the start of a translation block: when another thread
asks, or when the guest has run the code its entry plan allowed.

``uc_emu_stop`` from another thread is not precise: unicorn checks for an exit request
after every guest memory access as well, and leaves from inside the instruction making it
-- after a read-modify-write instruction has stored, RIP still points at it and resuming
replays it (a timeout stopped an ``inc [mem]`` loop inconsistently nine times in ten).  So
another thread only raises a flag.  A block hook reads it as each block starts, before any
of the block runs (unicorn emits block hooks ahead of the block's own exit check), and
calls ``uc_emu_stop`` from the vCPU's thread there.

The same hook measures the guest's progress, deterministically: it adds the size of each
block it lets start to ``executed`` (the units of ``processor.time``), and stops the
engine at the first block start at or past ``budget_end``.  The count includes a block an
exit then leaves halfway (the rest is counted again when it runs): exact, not a count of
instructions, but the same from run to run.

The hook runs for every block the guest executes, so it is native: nine instructions,
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
# passes uc in RDI, the block's size in EDX and user_data -- a GateState -- in RCX;
# uc_emu_stop(uc) is a tail call.
_HOOK_SOURCE = """
    mov rax, qword ptr [rcx]
    cmp rax, qword ptr [rcx + 8]
    jae stop
    cmp byte ptr [rcx + 16], 0
    jne stop
    mov eax, edx
    add qword ptr [rcx], rax
    ret
stop:
    movabs rax, {uc_emu_stop:#x}
    jmp rax
"""
NO_BUDGET = (1 << 64) - 1


class GateState(ctypes.Structure):
    _fields_ = (
        ("executed", ctypes.c_uint64),  # bytes of guest code in the blocks let start
        ("budget_end", ctypes.c_uint64),  # stop at the first block start at or past it
        ("stop", ctypes.c_uint8),  # another thread asked
    )


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
    """Stops for one engine that take effect at a block start; its progress count."""

    def __init__(self, engine: Engine) -> None:
        self.state = GateState(0, NO_BUDGET, 0)
        self._handle = engine.handle
        hook = native_hook()
        self.native = hook is not None
        if hook is None:
            hook = eng.BLOCK_CB(self._hook)
        self._engine = engine
        self._installed = engine.hook(
            uc_const.UC_HOOK_BLOCK, hook, user_data=ctypes.addressof(self.state)
        )

    def replace_hook(self, hook: Any, user_data: int) -> None:
        """Run ``hook`` (with ``user_data``) instead: a hook that keeps this gate's state
        exactly as its own does, and does more (the native exits' GIL bookkeeping)."""
        self._engine.unhook(self._installed)
        self._installed = self._engine.hook(uc_const.UC_HOOK_BLOCK, hook, user_data=user_data)
        self.native = True

    def request(self) -> None:
        """Stop at the next block start (any thread; it stays requested)."""
        self.state.stop = 1

    def allow(self, budget: int | None) -> None:
        """Let the guest run ``budget`` more units of code before stopping (None: any)."""
        state = self.state
        state.budget_end = NO_BUDGET if budget is None else state.executed + budget

    @property
    def spent(self) -> bool:
        """The last stop came from the budget."""
        return bool(self.state.executed >= self.state.budget_end)

    def _hook(self, _uc: int, _address: int, size: int, _data: int) -> None:
        state = self.state
        if state.executed >= state.budget_end or state.stop:
            eng.emu_stop(self._handle)
        else:
            state.executed += size
