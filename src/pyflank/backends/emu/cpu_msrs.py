"""The processor's own MSRs, reached past the SVM intercepts that make guest accesses exit.

Every RDMSR/WRMSR is intercepted (the MSR permission map is all ones); the VMM's own
accesses open the map for the one MSR, make the access and close it again.
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


def read_msr(engine: Engine, msr: int) -> int:
    address, old = _open(engine, msr)
    try:
        return engine.read_msr_raw(msr)
    finally:
        engine.write_physical(address, old)


def write_msr(engine: Engine, msr: int, value: int) -> None:
    address, old = _open(engine, msr)
    try:
        engine.write_msr_raw(msr, value)
    finally:
        engine.write_physical(address, old)
