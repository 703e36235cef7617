"""The processor's own MSRs, reached past the SVM intercepts that make guest accesses exit.

Every RDMSR/WRMSR is intercepted (the MSR permission map is all ones); the VMM's own
accesses open the map for the one MSR, make the access and close it again.

TSC_AUX changes only by WRMSR, which always exits to the VMM, so its value is kept on the
engine (``Engine.tsc_aux``) for RDTSCP, which Linux executes on every clock read.
"""

from __future__ import annotations

from pyflank.backends.emu import svm
from pyflank.backends.emu.engine import Engine


def _open(engine: Engine, msr: int) -> tuple[int, bytes]:
    bit = svm.msrpm_bit(msr)
    if bit is None:
        raise ValueError(f"MSR {msr:#x} is outside the SVM permission map")
    address = svm.MSRPM + bit // 8
    old = engine.read_physical(address, 1)
    engine.write_physical(address, bytes([old[0] & ~(3 << (bit % 8))]))
    return address, old


TSC_AUX = 0xC000_0103


def read_msr(engine: Engine, msr: int) -> int:
    if msr == TSC_AUX and engine.tsc_aux is not None:
        return engine.tsc_aux
    address, old = _open(engine, msr)
    try:
        value = engine.read_msr_raw(msr)
    finally:
        engine.write_physical(address, old)
    if msr == TSC_AUX:
        engine.tsc_aux = value
    return value


def write_msr(engine: Engine, msr: int, value: int) -> None:
    if msr == TSC_AUX:
        engine.tsc_aux = None
    address, old = _open(engine, msr)
    try:
        engine.write_msr_raw(msr, value)
    finally:
        engine.write_physical(address, old)
