"""Debugging the software CPU: breakpoints, watchpoints, single steps, and stops asked for
from another thread, each taken between two guest instructions, outside unicorn's run loop.

A hook that hits asks unicorn to stop; from a code hook ``uc_emu_stop`` leaves before the
instruction runs, so the guest stops with RIP at it.  A breakpoint is a code hook on its
one address (it costs nothing anywhere else); a single step is a code hook on every guest
address, there only while stepping; a watchpoint is a memory hook on its range that
raises a flag, and a native code hook on every address (``native``) that stops the engine
before the next instruction once the flag is up, so the access has completed.  A stop
asked for from another thread (``request_stop``: a debugger's interrupt, a pause for a
snapshot) is the stop gate's: at the next start of a block of guest code.

The vCPU's run loop (``EmuVcpu._execute``) calls ``take_stop`` when unicorn returned with
nothing else to do; a stop goes to ``on_stop`` (the VMM's, handed in), which returns when
the guest may go on.  Hooks added or removed meanwhile take effect at ``before_start``
(translations are flushed then, outside unicorn's run loop: code translated before a
hook existed would run without it), and the guest restarts at its RIP, the breakpoint and
step hooks letting the instruction there run once: the guest has already stopped there.

Restarting counts the rest of the block as a new one (``stop_gate``), so a run that
stopped in the debugger keeps time a little differently from one that did not.  The hooks
never fire in the VM-entry stub's host region, nor for the instructions a drained exit
lets QEMU run to the end of its block (``hooks``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING, Any

from unicorn import unicorn_const as uc_const
from unicorn import x86_const as x86

from pyflank.backends.emu import cpu_msrs, svm
from pyflank.backends.emu import engine as eng
from pyflank.backends.emu.native import native_code
from pyflank.intel_x64.msrs import IA32_EFER
from pyflank.intel_x64.paging import guest_linear
from pyflank.intel_x64.register_set import X87_CONTROL

if TYPE_CHECKING:
    from pyflank.backends.emu.vcpu import EmuVcpu
    from pyflank.memory import GuestLinear

MEM_CB = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int, ctypes.c_int64,
    ctypes.c_void_p,
)  # fmt: skip
_HOST_END = svm.HOST_BASE + svm.HOST_SIZE - 1
_GUEST_RANGES = ((0, svm.HOST_BASE - 1), (_HOST_END + 1, (1 << 64) - 1))
_MEM_WRITE = uc_const.UC_MEM_WRITE
_MEM_READ = uc_const.UC_MEM_READ

# void hook(uc_engine *uc, uint64_t address, uint32_t size, void *flag): stop when *flag.
_WATCH_SOURCE = """
    cmp byte ptr [rcx], 0
    jne stop
    ret
stop:
    movabs rax, {uc_emu_stop:#x}
    jmp rax
"""

# name -> unicorn register, for the registers read and written one by one.
_PLAIN: dict[str, int] = {
    "rax": x86.UC_X86_REG_RAX, "rbx": x86.UC_X86_REG_RBX, "rcx": x86.UC_X86_REG_RCX,
    "rdx": x86.UC_X86_REG_RDX, "rsi": x86.UC_X86_REG_RSI, "rdi": x86.UC_X86_REG_RDI,
    "rbp": x86.UC_X86_REG_RBP, "rsp": x86.UC_X86_REG_RSP, "r8": x86.UC_X86_REG_R8,
    "r9": x86.UC_X86_REG_R9, "r10": x86.UC_X86_REG_R10, "r11": x86.UC_X86_REG_R11,
    "r12": x86.UC_X86_REG_R12, "r13": x86.UC_X86_REG_R13, "r14": x86.UC_X86_REG_R14,
    "r15": x86.UC_X86_REG_R15, "rip": x86.UC_X86_REG_RIP, "eflags": x86.UC_X86_REG_RFLAGS,
    "cs": x86.UC_X86_REG_CS, "ss": x86.UC_X86_REG_SS, "ds": x86.UC_X86_REG_DS,
    "es": x86.UC_X86_REG_ES, "fs": x86.UC_X86_REG_FS, "gs": x86.UC_X86_REG_GS,
    "fs_base": x86.UC_X86_REG_FS_BASE, "gs_base": x86.UC_X86_REG_GS_BASE,
    "cr0": x86.UC_X86_REG_CR0, "cr2": x86.UC_X86_REG_CR2, "cr3": x86.UC_X86_REG_CR3,
    "cr4": x86.UC_X86_REG_CR4, "cr8": x86.UC_X86_REG_CR8, "mxcsr": x86.UC_X86_REG_MXCSR,
    **{f"xmm{n}": getattr(x86, f"UC_X86_REG_XMM{n}") for n in range(16)},
}  # fmt: skip
_X87_CONTROL_IDS = (
    x86.UC_X86_REG_FPCW, x86.UC_X86_REG_FPSW, x86.UC_X86_REG_FPTAG, x86.UC_X86_REG_FCS,
    x86.UC_X86_REG_FIP, x86.UC_X86_REG_FDS, x86.UC_X86_REG_FDP, x86.UC_X86_REG_FOP,
)  # fmt: skip
_X87 = dict(zip(X87_CONTROL, _X87_CONTROL_IDS, strict=True))
WRITABLE = frozenset(
    ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip", "eflags", "fs_base",
     "gs_base", *(f"r{n}" for n in range(8, 16)), *(f"xmm{n}" for n in range(16)))
)  # fmt: skip
"""What a debugger may write while the guest is stopped in the engine (segment selectors
and control registers would need the descriptor loads and checks of a VM entry)."""


class StopCause(Enum):
    BREAKPOINT = "breakpoint"
    HARDWARE_BREAKPOINT = "hardware breakpoint"
    STEP = "step"
    WATCHPOINT = "watchpoint"
    REQUEST = "request"  # asked for from another thread


class WatchKind(Enum):
    WRITE = "watch"
    READ = "rwatch"
    ACCESS = "awatch"


@dataclass(frozen=True)
class EngineStop:
    """Why the guest stopped in the engine; ``address`` of the breakpoint or the watched
    access."""

    cause: StopCause
    address: int = 0
    watch: WatchKind | None = None


@cache
def _native_watch_hook() -> int | None:
    stop = ctypes.cast(eng.emu_stop, ctypes.c_void_p).value
    return native_code(_WATCH_SOURCE.format(uc_emu_stop=stop))


class EngineDebug:
    """The debugging hooks of one software vCPU; changes are made on its thread while it
    is stopped (or before it runs), and take effect when it goes on."""

    def __init__(self, vcpu: EmuVcpu) -> None:
        self.vcpu = vcpu
        self.engine = vcpu.engine
        self.on_stop: Callable[[EngineStop], None] | None = None
        """Called on the vCPU's thread at each stop; the guest goes on when it returns."""
        self.breakpoints: dict[int, bool] = {}  # address -> hardware
        self.watchpoints: dict[tuple[WatchKind, int, int], None] = {}  # (kind, address, length)
        self.stepping = False
        self.stop_requested = False
        self.flush_pending = False
        self._guest_stop = False  # a requested stop, at the guest's next instruction
        self._installed_breaks: dict[int, int] = {}  # address -> hook handle
        self._installed_watches: dict[tuple[WatchKind, int, int], list[int]] = {}
        self._step_hooks: list[int] = []
        self._watch_stop_hooks: list[int] = []
        self._changed = False
        self._stop: EngineStop | None = None
        self._break_skip: int | None = None  # the RIP the guest restarts at
        self._step_skip: int | None = None
        self._flag = ctypes.c_uint8(0)  # raised by a watched access
        self._watch_hit: tuple[WatchKind, int] | None = None
        self._break_cb = eng.BLOCK_CB(self._on_breakpoint)
        self._step_cb = eng.BLOCK_CB(self._on_step)
        self._watch_cb = MEM_CB(self._on_access)
        native = _native_watch_hook()
        self._watch_stop: Any = (
            ctypes.c_void_p(native) if native is not None else eng.BLOCK_CB(self._on_watch_stop)
        )

    # -- what a debugger changes (the vCPU's thread, while it is stopped) ---------------
    def set_breakpoint(self, address: int, *, hardware: bool = False) -> None:
        self.breakpoints[address] = hardware
        self._changed = True

    def clear_breakpoint(self, address: int) -> bool:
        """Remove the breakpoint at ``address``; whether there was one."""
        found = self.breakpoints.pop(address, None) is not None
        self._changed |= found
        return found

    def set_watchpoint(self, kind: WatchKind, address: int, length: int) -> None:
        if length <= 0:
            raise ValueError(f"a watchpoint covers at least one byte, not {length}")
        self.watchpoints[(kind, address, length)] = None
        self._changed = True

    def clear_watchpoint(self, kind: WatchKind, address: int, length: int) -> bool:
        """Remove that watchpoint; whether there was one."""
        found = (kind, address, length) in self.watchpoints
        if found:
            del self.watchpoints[(kind, address, length)]
            self._changed = True
        return found

    def set_stepping(self, stepping: bool) -> None:
        if stepping != self.stepping:
            self.stepping = stepping
            self._changed = True

    def clear_all(self) -> None:
        """No breakpoints, watchpoints or steps any more (a debugger left)."""
        self._changed |= bool(self.breakpoints or self.watchpoints or self.stepping)
        self.breakpoints.clear()
        self.watchpoints.clear()
        self.stepping = False

    def request_stop(self) -> None:
        """Stop at the next start of guest code (any thread)."""
        self.stop_requested = True
        self.vcpu.stop_gate.request()

    def memory_written(self) -> None:
        """A debugger wrote guest memory: translated code may be stale (any thread; the
        engine stops at the next block start to drop its translations)."""
        self.flush_pending = True
        self.vcpu.stop_gate.request()

    @property
    def pending(self) -> bool:
        """Hooks or translations change at the next ``before_start``."""
        return self._changed or self.flush_pending

    # -- the run loop's calls (the vCPU's thread, outside unicorn's run loop) ------------
    def before_start(self) -> None:
        """Install and remove what changed, and drop stale translations."""
        if self._changed:
            self._changed = False
            self._sync_hooks()
            self.flush_pending = True
        if self.flush_pending:
            self.flush_pending = False
            self.engine.uc.ctl_flush_tb()

    def take_stop(self) -> bool:
        """After unicorn returned with nothing else to do: hand a stop to ``on_stop`` and
        prepare the restart; whether there was one."""
        self.vcpu.cancel_block_stop()  # its reasons are all handled here
        stop = self._stop
        if stop is None and self._watch_hit is not None and self._flag.value:
            kind, address = self._watch_hit
            stop = EngineStop(StopCause.WATCHPOINT, address, kind)
        if stop is None:
            if not self.stop_requested:
                return False  # (a flush: done at the restart)
            if _in_host_region(self.engine.read(x86.UC_X86_REG_RIP)):
                # The VM-entry stub: stop at the guest's first instruction instead (the
                # step hooks never fire in the host region).
                self._guest_stop = True
                self._changed = True
                return False
            stop = EngineStop(StopCause.REQUEST)
        self.stop_requested = False
        if self._guest_stop:
            self._guest_stop = False
            self._changed = True
        self._stop = None
        self._flag.value = 0
        self._watch_hit = None
        if self.on_stop is not None:
            self.on_stop(stop)
        rip = self.engine.read(x86.UC_X86_REG_RIP)
        self._break_skip = rip
        self._step_skip = rip if self.stepping else None
        return True

    # -- the engine's state, as a debugger sees it --------------------------------------
    def read_register(self, name: str) -> int:
        e = self.engine
        if name in _PLAIN:
            value: int = e.read(_PLAIN[name])
            return value
        if name.startswith("st"):
            mantissa, exponent = e.uc.reg_read(getattr(x86, f"UC_X86_REG_FP{name[2:]}"))
            return int(exponent) << 64 | int(mantissa)
        if name in _X87:
            return int(e.read(_X87[name]))
        if name == "efer":
            return cpu_msrs.read_msr(e, IA32_EFER) & ~svm.EFER_SVME
        raise KeyError(f"no register {name!r}")

    def write_register(self, name: str, value: int) -> None:
        if name not in WRITABLE:
            raise PermissionError(f"{name} cannot be written while the guest is in the engine")
        self.engine.write(_PLAIN[name], value)

    def linear(self) -> GuestLinear:
        """Guest memory through the guest's paging now."""
        read = self.read_register
        return guest_linear(self.vcpu.memory, cr0=read("cr0"), cr3=read("cr3"), efer=read("efer"))

    # -- hooks ---------------------------------------------------------------------------
    def _sync_hooks(self) -> None:
        e = self.engine
        for address in set(self._installed_breaks) - set(self.breakpoints):
            e.unhook(self._installed_breaks.pop(address))
        for address in set(self.breakpoints) - set(self._installed_breaks):
            self._installed_breaks[address] = e.hook(
                uc_const.UC_HOOK_CODE, self._break_cb, begin=address, end=address
            )
        for watch in set(self._installed_watches) - set(self.watchpoints):
            for handle in self._installed_watches.pop(watch):
                e.unhook(handle)
        for watch in set(self.watchpoints) - set(self._installed_watches):
            self._installed_watches[watch] = self._watch_hooks(*watch)
        self._step_hooks = self._code_hooks(
            self.stepping or self._guest_stop, self._step_hooks, self._step_cb
        )
        self._watch_stop_hooks = self._code_hooks(
            bool(self.watchpoints), self._watch_stop_hooks, self._watch_stop
        )

    def _code_hooks(self, wanted: bool, handles: list[int], callback: Any) -> list[int]:
        """Hooks of ``callback`` on every guest address while ``wanted``."""
        if wanted and not handles:
            user_data = ctypes.addressof(self._flag)
            return [
                self.engine.hook(
                    uc_const.UC_HOOK_CODE, callback, begin=b, end=end, user_data=user_data
                )
                for b, end in _GUEST_RANGES
            ]
        if not wanted and handles:
            for handle in handles:
                self.engine.unhook(handle)
            return []
        return handles

    def _watch_hooks(self, kind: WatchKind, address: int, length: int) -> list[int]:
        kinds = {
            WatchKind.WRITE: (uc_const.UC_HOOK_MEM_WRITE,),
            WatchKind.READ: (uc_const.UC_HOOK_MEM_READ,),
            WatchKind.ACCESS: (uc_const.UC_HOOK_MEM_READ, uc_const.UC_HOOK_MEM_WRITE),
        }[kind]
        end = address + length - 1
        return [self.engine.hook(k, self._watch_cb, begin=address, end=end) for k in kinds]

    # -- the hooks themselves (inside unicorn; they must not raise) ----------------------
    def _on_breakpoint(self, _uc: int, address: int, _size: int, _data: int) -> None:
        skip, self._break_skip = self._break_skip, None
        hardware = self.breakpoints.get(address)
        if hardware is not None:  # (else removed, not yet unhooked)
            cause = StopCause.HARDWARE_BREAKPOINT if hardware else StopCause.BREAKPOINT
            self._stop_at(address, skip, cause)

    def _on_step(self, _uc: int, address: int, _size: int, _data: int) -> None:
        skip, self._step_skip = self._step_skip, None
        self._stop_at(address, skip, StopCause.STEP if self.stepping else StopCause.REQUEST)

    def _stop_at(self, address: int, skip: int | None, cause: StopCause) -> None:
        """Stop before the instruction at ``address``, unless it is the one the guest
        restarts at (``skip``) or this is not the guest's own code."""
        if self.vcpu.hooks.draining or self._stop is not None or skip == address:
            return
        self._stop = EngineStop(cause, address)
        self.engine.stop()

    def _on_access(
        self, _uc: int, access: int, address: int, size: int, _value: int, _data: int
    ) -> None:
        if self.vcpu.hooks.draining or self._watch_hit is not None:
            return
        write = access == _MEM_WRITE
        for kind, start, length in self.watchpoints:
            if (
                start < address + size
                and address < start + length
                and (kind is WatchKind.ACCESS or (kind is WatchKind.WRITE) == write)
            ):
                self._watch_hit = (kind, max(start, address))
                self._flag.value = 1
                return

    def _on_watch_stop(self, _uc: int, _address: int, _size: int, _data: int) -> None:
        if self._flag.value:  # what the native hook does, where there is none
            self.engine.stop()


def _in_host_region(rip: int) -> bool:
    return svm.HOST_BASE <= rip <= _HOST_END
