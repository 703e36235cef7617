"""A 16550A UART (COM1 on the PC): FIFOs, interrupts through IER/IIR, input from the host.

Transmission is instantaneous (THR and the shifter are always empty again at once), so
the THRE interrupt re-arms as soon as a byte is written.  Received bytes come from the
host (``feed``, from any thread) into a 16-byte FIFO as it has room, as a serial line
with flow control would bring them, so nothing overruns.  The receive interrupt fires
when the FIFO reaches its trigger level, or after four character times without activity
(the character-timeout interrupt), measured on the virtual clock.  As on the PC the
interrupt reaches its line only while MCR.OUT2 is set (and not in loopback).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Final

from pyflank.platform.devices.clock import NS_PER_S, Clock, VirtualClock
from pyflank.platform.devices.irq import IrqLine, disconnected

PORT_COUNT: Final = 8
FIFO_SIZE: Final = 16
BASE_BAUD: Final = 115_200  # the 1.8432 MHz crystal / 16

RBR_THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
IER_RDA, IER_THRE, IER_LINE, IER_MODEM = 0x01, 0x02, 0x04, 0x08
IIR_NONE, IIR_MODEM, IIR_THRE, IIR_RDA, IIR_LINE, IIR_TIMEOUT = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FIFO_ENABLED: Final = 0xC0
FCR_ENABLE, FCR_CLEAR_RX, FCR_CLEAR_TX = 0x01, 0x02, 0x04
LCR_DLAB: Final = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
LSR_DATA_READY, LSR_OVERRUN, LSR_BREAK_ERRORS = 0x01, 0x02, 0x1E
LSR_THR_EMPTY, LSR_TRANSMITTER_EMPTY = 0x20, 0x40
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
_TRIGGER_LEVELS = (1, 4, 8, 14)
_CONNECTED = MSR_CTS | MSR_DSR | MSR_DCD  # a terminal is attached


class Uart16550:
    """One UART; ``output`` is what the guest transmitted, ``feed`` what it will receive.

    ``sink``, when given, is called with each transmitted byte (a live console);
    ``wakeup`` is set whenever host input arrives, so a halted vCPU can wake for it.
    """

    def __init__(
        self,
        irq: IrqLine | None = None,
        clock: Clock | None = None,
        *,
        sink: Callable[[int], None] | None = None,
        wakeup: threading.Event | None = None,
    ) -> None:
        self.irq = irq or disconnected()
        self.clock = clock or VirtualClock()
        self.sink = sink
        self.wakeup = wakeup
        self.input_gate: Callable[[bytes], None] | None = None
        """Takes host input instead of ``feed`` (a recording decides when the guest gets it,
        and gives it with ``deliver``)."""
        self._lock = threading.Lock()
        self._out = bytearray()
        self._host: deque[int] = deque()
        self._rx: deque[int] = deque()
        self._divisor = 1
        self._ier = self._lcr = self._mcr = self._scr = self._fcr = 0
        self._lsr_errors = 0
        self._msr_delta = 0
        self._thre_pending = False
        self._rx_activity_ns = 0  # last byte into, or out of, the receive FIFO
        self._timeout_pending = False

    # -- the host's side ---------------------------------------------------------------
    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._out)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def feed(self, data: bytes) -> None:
        """Queue bytes for the guest to receive (any thread)."""
        gate = self.input_gate
        if gate is not None:
            gate(bytes(data))
            return
        self.deliver(data)
        if self.wakeup is not None:
            self.wakeup.set()

    def deliver(self, data: bytes) -> None:
        """Bytes from the host the guest can receive from now on."""
        with self._lock:
            self._host.extend(data)

    # -- time --------------------------------------------------------------------------
    def char_time_ns(self) -> int:
        lcr = self._lcr
        stop_bits = 2 if lcr & 0x04 else 1
        bits = 1 + 5 + (lcr & 3) + (lcr >> 3 & 1) + stop_bits
        return bits * NS_PER_S * max(self._divisor, 1) // BASE_BAUD

    def next_deadline_ns(self) -> int | None:
        with self._lock:
            if self._host and len(self._rx) < self._fifo_size():
                return self.clock.now_ns()
            waiting = 0 < len(self._rx) < self._trigger() and self._ier & IER_RDA
            if waiting and self._fifo_enabled() and not self._timeout_pending:
                return self._rx_activity_ns + 4 * self.char_time_ns()
            return None

    def service(self) -> None:
        with self._lock:
            self._pull_host_input()
            self._update()

    # -- registers ---------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            if self._lcr & LCR_DLAB and offset in (RBR_THR, IER):
                return self._divisor >> (8 * offset) & 0xFF
            if offset == RBR_THR:
                value = self._receive()
            elif offset == IER:
                value = self._ier
            elif offset == IIR_FCR:
                value = self._read_iir()
            elif offset == LCR:
                value = self._lcr
            elif offset == MCR:
                value = self._mcr
            elif offset == LSR:
                if self._host:
                    self._pull_host_input()
                value = self._lsr()
                self._lsr_errors = 0
            elif offset == MSR:
                value = self._msr() | self._msr_delta
                self._msr_delta = 0
            else:
                value = self._scr
            self._update()
            return value

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if self._lcr & LCR_DLAB and offset in (RBR_THR, IER):
                shift = 8 * offset
                self._divisor = (self._divisor & ~(0xFF << shift)) | value << shift
            elif offset == RBR_THR:
                self._transmit(value)
            elif offset == IER:
                if value & IER_THRE and not self._ier & IER_THRE:
                    self._thre_pending = True  # THR is empty: enabling THRE interrupts at once
                self._ier = value & 0x0F
            elif offset == IIR_FCR:
                self._write_fcr(value)
            elif offset == LCR:
                self._lcr = value
            elif offset == MCR:
                self._write_mcr(value & 0x1F)
            elif offset == SCR:
                self._scr = value
            self._update()

    # -- internals (lock held) ---------------------------------------------------------
    def _fifo_enabled(self) -> bool:
        return bool(self._fcr & FCR_ENABLE)

    def _fifo_size(self) -> int:
        return FIFO_SIZE if self._fifo_enabled() else 1

    def _trigger(self) -> int:
        return _TRIGGER_LEVELS[self._fcr >> 6] if self._fifo_enabled() else 1

    def _pull_host_input(self) -> None:
        if self._mcr & MCR_LOOP:
            return  # the receiver listens to the transmitter only
        room = self._fifo_size() - len(self._rx)
        moved = False
        while room > 0 and self._host:
            self._rx.append(self._host.popleft())
            room -= 1
            moved = True
        if moved:
            self._rx_activity_ns = self.clock.now_ns()
            self._timeout_pending = False

    def _receive(self) -> int:
        value = self._rx.popleft() if self._rx else 0
        self._rx_activity_ns = self.clock.now_ns()
        self._timeout_pending = False
        self._pull_host_input()
        return value

    def _transmit(self, value: int) -> None:
        self._thre_pending = True  # instantaneous: THR is empty again at once
        if self._mcr & MCR_LOOP:
            if len(self._rx) < self._fifo_size():
                self._rx.append(value)
            else:
                self._lsr_errors |= LSR_OVERRUN
            self._rx_activity_ns = self.clock.now_ns()
            self._timeout_pending = False
            return
        self._out.append(value)
        if self.sink is not None:
            self.sink(value)

    def _write_fcr(self, value: int) -> None:
        if (value ^ self._fcr) & FCR_ENABLE or value & FCR_CLEAR_RX:
            self._rx.clear()
            self._timeout_pending = False
        self._fcr = value & 0xC1
        self._pull_host_input()

    def _write_mcr(self, value: int) -> None:
        before = self._msr()
        self._mcr = value
        after = self._msr()
        delta = ((before ^ after) & (MSR_CTS | MSR_DSR | MSR_DCD)) >> 4
        if before & MSR_RI and not after & MSR_RI:
            delta |= 0x04  # the ring indicator's trailing edge
        self._msr_delta |= delta
        self._pull_host_input()

    def _msr(self) -> int:
        mcr = self._mcr
        if not mcr & MCR_LOOP:
            return _CONNECTED
        value = MSR_CTS if mcr & MCR_RTS else 0
        value |= MSR_DSR if mcr & MCR_DTR else 0
        value |= MSR_RI if mcr & MCR_OUT1 else 0
        return value | (MSR_DCD if mcr & MCR_OUT2 else 0)

    def _lsr(self) -> int:
        ready = LSR_DATA_READY if self._rx else 0
        return LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY | self._lsr_errors | ready

    def _check_timeout(self) -> None:
        waiting = self._rx and self._fifo_enabled() and not self._timeout_pending
        if waiting and self.clock.now_ns() >= self._rx_activity_ns + 4 * self.char_time_ns():
            self._timeout_pending = True

    def _source(self) -> int:
        """The highest-priority pending interrupt (IIR's identification), or IIR_NONE."""
        ier = self._ier
        if ier & IER_LINE and self._lsr_errors:
            return IIR_LINE
        if ier & IER_RDA:
            if self._rx and len(self._rx) >= self._trigger():
                return IIR_RDA
            self._check_timeout()
            if self._timeout_pending and self._rx:
                return IIR_TIMEOUT
        if ier & IER_THRE and self._thre_pending:
            return IIR_THRE
        if ier & IER_MODEM and self._msr_delta:
            return IIR_MODEM
        return IIR_NONE

    def _read_iir(self) -> int:
        source = self._source()
        if source == IIR_THRE:
            self._thre_pending = False  # reading IIR with THRE as the source clears it
        fifo = IIR_FIFO_ENABLED if self._fifo_enabled() else 0
        return fifo | source

    def _update(self) -> None:
        if not self._ier and not self.irq.level:
            return  # the common polled console: nothing can be pending
        gated = self._mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2
        self.irq.set_level(gated and self._source() != IIR_NONE)
