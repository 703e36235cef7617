"""The software CPU's exit hooks with the native accelerator (``pyflank.native``, emu.c).

The hottest instruction hooks -- CPUID, RDTSC, RDTSCP, IN and OUT -- become C functions
that do natively what needs no decision of Python's (RDTSC from virtual time, whether an
IN/OUT exits, an exit's record when nothing but general registers moved, the fused path)
and call the Python hooks of ``ExitHooks`` for everything else: those stay the reference,
and the pure-Python path is what runs wherever the accelerator is not built, cannot find
unicorn's register file in place, or ``PYFLANK_NATIVE=0`` says so.

What the two halves share: the C object owns ``draining``, the exit controls and guest
time it needs, and the TSC_AUX copy; Python tells it when a report it made invalidates
what the C side remembers (``StateCapture.capture``, ``forget``); before any Python exit
of its own it hands over the exits the C side carried out by itself (``flush``).
"""

from __future__ import annotations

import ctypes
import functools
from typing import TYPE_CHECKING, Any

from unicorn import unicorn_const as uc_const
from unicorn import x86_const as x86

from pyflank.backends.emu import engine as eng
from pyflank.backends.emu.capture import Captured, StateCapture
from pyflank.backends.emu.hooks import _CPUID_INFO, Decide, ExitHooks, _undecided
from pyflank.backends.emu.register_file import InPlace, RegisterFile
from pyflank.native import accelerator
from pyflank.processor import ExitPolicy, time
from pyflank.processor.fusion import Fusion

if TYPE_CHECKING:
    from pyflank.backends.base import PortIo
    from pyflank.backends.emu.engine import Engine
    from pyflank.backends.emu.physical_cpu import EngineCpu
    from pyflank.backends.emu.stop_gate import StopGate
    from pyflank.memory import GuestPhysicalMemory

# The instructions whose hooks are native, by the name emu.c gives their callbacks.
_NATIVE_HOOKS = {
    x86.UC_X86_INS_CPUID: "cpuid",
    x86.UC_X86_INS_RDTSC: "rdtsc",
    x86.UC_X86_INS_RDTSCP: "rdtscp",
    x86.UC_X86_INS_IN: "in",
    x86.UC_X86_INS_OUT: "out",
}


def native_exits_for(registers: RegisterFile) -> Any | None:
    """The accelerator's module where an engine with ``registers`` can use it, else None."""
    module = accelerator()
    if module is None or not isinstance(registers, InPlace):
        return None  # the C hooks read CPUX86State in place
    return module


class NativeCapture(StateCapture):
    """A ``StateCapture`` whose reports the native exits learn of (``native.forget``)."""

    __slots__ = ("native",)

    def __init__(
        self, engine: Engine, memory: GuestPhysicalMemory, registers: RegisterFile
    ) -> None:
        super().__init__(engine, memory, registers)
        self.native: Any = None

    def capture(self) -> Captured:
        captured = super().capture()
        if self.native is not None:
            self.native.remember()  # what this report showed is the state now
        return captured

    def forget(self) -> None:
        if self.native is not None:
            self.native.forget()
        super().forget()


class NativeExitHooks(ExitHooks):
    """``ExitHooks`` with the hot instruction hooks in C (``module.EmuExits``)."""

    __slots__ = ("_flushing", "native")

    def __init__(
        self,
        module: Any,
        engine: Engine,
        capture: NativeCapture,
        memory: GuestPhysicalMemory,
        ports: PortIo,
        cpu: EngineCpu,
        gate: StopGate,
    ) -> None:
        registers = capture.registers
        assert isinstance(registers, InPlace)
        lib = eng.native_functions()
        self.native = module.EmuExits(
            hooks=self,
            capture=capture,
            ports=ports,
            engine=(
                engine.handle.value, lib["uc_emu_start"], lib["uc_emu_stop"],
                lib["uc_vmem_read"], lib["uc_reg_read"], lib["uc_reg_write"],
                lib["uc_mem_read"], lib["uc_mem_write"], memory.address, memory.size,
            ),
            layout=(
                registers.env, ctypes.addressof(registers.dr7), registers.cc_op_clr,
                ctypes.addressof(gate.state), x86.UC_X86_REG_RFLAGS, x86.UC_X86_REG_MSR,
            ),
            time=(time.UNITS_PER_NS, time.TSC_HZ),
            cpuid_info=_CPUID_INFO,
        )  # fmt: skip
        self._flushing: Decide = _undecided
        capture.native = self.native
        super().__init__(engine, capture, memory, ports, cpu)
        engine.tsc_aux_sink = functools.partial(setattr, self.native, "tsc_aux")
        self.native.tsc_aux = engine.tsc_aux
        engine.native_msrs = self.native
        gate.replace_hook(ctypes.c_void_p(self.native.callbacks()["block"]), id(self.native))

    # -- what the C side owns ---------------------------------------------------------
    @property
    def draining(self) -> bool:
        return bool(self.native.draining)

    @draining.setter
    def draining(self, value: bool) -> None:
        self.native.draining = value

    @property
    def decide(self) -> Decide:
        """What the Python hooks call: the processor's exit, after the native exits
        handed over theirs (the C hooks call the processor directly)."""
        return self._flushing

    @decide.setter
    def decide(self, decide: Decide) -> None:
        native = self.native
        native.decide = decide
        flush = native.flush

        def flushing(record: Any) -> Any:
            flush()
            return decide(record)

        self._flushing = flushing

    def set_policy(self, policy: ExitPolicy) -> None:
        super().set_policy(policy)
        self.native.set_policy(policy)

    def set_timing(self, timed: bool, idle_ns: int) -> None:
        super().set_timing(timed, idle_ns)
        self.native.set_timing(timed, idle_ns)

    def fuse(self, fusion: Fusion | None) -> None:
        """Let the C side carry out the exits ``fusion`` allows (None: none)."""
        if fusion is None:
            self.native.fuse(None, None, None, None)
            return
        trace: list[int] | None = [] if fusion.trace else None
        self.native.fuse(fusion.resume, fusion.cpuid, fusion.absorb, trace)

    def start(self, rip: int) -> int:
        """``Engine.start``, with the GIL released by the C side while the guest runs."""
        status: int = self.native.start(rip)
        return status

    # -- the hooks ----------------------------------------------------------------------
    def _hook_instruction(self, instruction: int, callback: Any) -> int:
        name = _NATIVE_HOOKS.get(instruction)
        if name is None:
            return super()._hook_instruction(instruction, callback)
        address = self.native.callbacks()[name]
        return self.engine.hook(
            uc_const.UC_HOOK_INSN,
            ctypes.c_void_p(address),
            ctypes.c_int(instruction),
            user_data=id(self.native),
        )

    # The Python hooks that remain may run the handler (an intercept's exit): the C side
    # hands over its exits first, and forgets what Python may change.
    def _on_interrupt(self, uc: int, number: int, data: int) -> None:
        self.native.flush()
        super()._on_interrupt(uc, number, data)

    def _on_fast_call(self, kind: Any, uc: int, data: int) -> None:
        self.native.flush()
        super()._on_fast_call(kind, uc, data)


__all__ = ["NativeCapture", "NativeExitHooks", "native_exits_for"]
