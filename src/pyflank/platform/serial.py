"""COM1: enough of a 16550 UART for a guest to print (and read, when input is queued).

Transmit is instantaneous, so LSR always reports the holding register and the shifter
empty; received bytes come from ``feed``.  Divisor latch, IER, FCR, MCR and the scratch
register keep what the guest writes; no interrupts are ever raised.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Final

COM1_BASE: Final = 0x3F8
PORT_COUNT: Final = 8

_RBR_THR, _IER, _IIR_FCR, _LCR, _MCR, _LSR, _MSR, _SCR = range(8)
_LCR_DLAB = 0x80
LSR_DATA_READY: Final = 0x01
LSR_THR_EMPTY: Final = 0x20
LSR_TRANSMITTER_EMPTY: Final = 0x40
_IIR_NO_INTERRUPT = 0x01
_MSR_CONNECTED = 0xB0  # DCD, DSR, CTS: a terminal is attached


class Serial16550:
    """One UART at ``base``; ``output`` collects what the guest transmitted."""

    def __init__(self, base: int = COM1_BASE) -> None:
        self.base = base
        self._out = bytearray()
        self._in: deque[int] = deque()
        self._lock = threading.Lock()
        self._regs = [0] * PORT_COUNT
        self._divisor = [0x01, 0x00]  # 115200 baud
        self._listener: Callable[[bytes], None] | None = None

    def listen(self, listener: Callable[[bytes], None] | None) -> None:
        """Call ``listener`` with each byte the guest transmits, as it does (a live console)."""
        self._listener = listener

    # -- what the host sees ------------------------------------------------------------
    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._out)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def feed(self, data: bytes) -> None:
        """Queue bytes for the guest to receive."""
        with self._lock:
            self._in.extend(data)

    # -- port access -------------------------------------------------------------------
    def handles(self, port: int) -> bool:
        return self.base <= port < self.base + PORT_COUNT

    def io_read(self, port: int, size: int) -> int:
        offset = port - self.base
        regs = self._regs
        dlab = regs[_LCR] & _LCR_DLAB
        with self._lock:
            if offset == _RBR_THR:
                if dlab:
                    return self._divisor[0]
                return self._in.popleft() if self._in else 0
            if offset == _IER:
                return self._divisor[1] if dlab else regs[_IER]
            if offset == _IIR_FCR:
                return _IIR_NO_INTERRUPT
            if offset == _LSR:
                ready = LSR_DATA_READY if self._in else 0
                return LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY | ready
            if offset == _MSR:
                return _MSR_CONNECTED
            return regs[offset]

    def io_write(self, port: int, size: int, value: int) -> None:
        offset = port - self.base
        value &= 0xFF
        regs = self._regs
        dlab = regs[_LCR] & _LCR_DLAB
        with self._lock:
            if offset == _RBR_THR and not dlab:
                self._out.append(value)
                if self._listener is not None:
                    self._listener(bytes((value,)))
            elif offset in (_RBR_THR, _IER) and dlab:
                self._divisor[offset] = value
            elif offset not in (_LSR, _MSR, _IIR_FCR):
                regs[offset] = value
