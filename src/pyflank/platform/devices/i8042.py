"""The i8042 keyboard controller with a keyboard and an empty mouse port.

Offset 0 is the data port (0x60), offset 4 the status/command port (0x64); the PC places
both through windows.  Commands complete at once (the input buffer is never busy), so a
driver polling the status register never waits.  Enough for Linux's probe: the command
byte, self-tests, the AUX loopback and enable bits, a keyboard that answers its commands
(reset, identify, LEDs, rate, scancode set, enable) and an AUX port with nothing attached
(every byte sent to it times out).  The reset line: command 0xFE (pulse output line 0) or
writing the output port with bit 0 clear asks the machine for a reset.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from pyflank.platform.devices.irq import IrqLine, disconnected
from pyflank.platform.devices.power import MachineControl

DATA, COMMAND = 0, 4
STATUS_OBF, STATUS_SYS, STATUS_CMD, STATUS_UNLOCKED = 0x01, 0x04, 0x08, 0x10
STATUS_AUX, STATUS_TIMEOUT = 0x20, 0x40
CTR_KBD_INT, CTR_AUX_INT, CTR_SYS, CTR_KBD_OFF, CTR_AUX_OFF, CTR_XLATE = (
    0x01, 0x02, 0x04, 0x10, 0x20, 0x40,
)  # fmt: skip
OUTPUT_RESET, OUTPUT_A20 = 0x01, 0x02
ACK, RESEND, SELF_TEST_OK, BAT_OK = 0xFA, 0xFE, 0x55, 0xAA
KEYBOARD_ID: Final = (0xAB, 0x83)
_TRANSLATED_ID: Final = 0x41  # what 0x83 becomes through scancode translation
_WRITE_CTR, _WRITE_OUTPUT, _WRITE_KBD_OUT, _WRITE_AUX_OUT, _WRITE_AUX = (
    0x60, 0xD1, 0xD2, 0xD3, 0xD4,
)  # fmt: skip


class Keyboard:
    """A PS/2 keyboard as far as commands go (no keys are ever pressed)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.scancode_set = 2
        self.scanning = True
        self.leds = 0
        self._pending: int | None = None  # a command waiting for its parameter byte

    def command(self, value: int, *, translated: bool) -> list[int]:
        pending, self._pending = self._pending, None
        if pending == 0xED:
            self.leds = value & 7
            return [ACK]
        if pending == 0xF3:
            return [ACK]
        if pending == 0xF0:
            if value == 0:
                return [ACK, self.scancode_set]
            if value in (1, 2, 3):
                self.scancode_set = value
                return [ACK]
            return [RESEND]
        if value in (0xED, 0xF3, 0xF0):
            self._pending = value
            return [ACK]
        if value == 0xFF:
            self.reset()
            return [ACK, BAT_OK]
        if value == 0xF2:
            return [ACK, KEYBOARD_ID[0], _TRANSLATED_ID if translated else KEYBOARD_ID[1]]
        if value == 0xEE:
            return [0xEE]
        if value in (0xF4, 0xF5, 0xF6):
            self.scanning = value != 0xF5
            return [ACK]
        if 0xF7 <= value <= 0xFD or value == 0xE6 or value == 0xE7:
            return [ACK]
        return [RESEND]


class I8042:
    def __init__(
        self,
        machine: MachineControl,
        kbd_irq: IrqLine | None = None,
        aux_irq: IrqLine | None = None,
    ) -> None:
        self.machine = machine
        self.kbd_irq = kbd_irq or disconnected()
        self.aux_irq = aux_irq or disconnected()
        self.keyboard = Keyboard()
        self.ctr = CTR_KBD_INT | CTR_SYS | CTR_AUX_OFF | CTR_XLATE
        self.output_port = OUTPUT_RESET | OUTPUT_A20
        self._queue: deque[tuple[int, int]] = deque()  # (byte, status bits that go with it)
        self._last_write_command = False
        self._last_data = 0  # what the data port reads when nothing is queued
        self._pending: int | None = None  # a controller command waiting for its data byte

    # -- registers ----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == COMMAND:
            return self._status()
        if not self._queue:
            return self._last_data
        self._last_data, _ = self._queue.popleft()
        self.kbd_irq.set_level(False)  # the buffer empties; the next byte is a new edge
        self.aux_irq.set_level(False)
        self._update()
        return self._last_data

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        self._last_write_command = offset == COMMAND
        if offset == COMMAND:
            self._command(value)
        else:
            self._data(value)
        self._update()

    def _status(self) -> int:
        status = STATUS_UNLOCKED | (self.ctr & CTR_SYS)
        status |= STATUS_CMD if self._last_write_command else 0
        if self._queue:
            status |= STATUS_OBF | self._queue[0][1]
        return status

    def _queue_bytes(self, data: list[int], status: int = 0) -> None:
        self._queue.extend((byte, status) for byte in data)

    def _update(self) -> None:
        """The byte in the output buffer raises IRQ1 or IRQ12 while its interrupt is on."""
        aux = bool(self._queue and self._queue[0][1] & STATUS_AUX)
        kbd = bool(self._queue) and not aux
        self.kbd_irq.set_level(kbd and bool(self.ctr & CTR_KBD_INT))
        self.aux_irq.set_level(aux and bool(self.ctr & CTR_AUX_INT))

    # -- controller commands --------------------------------------------------------------
    def _command(self, value: int) -> None:
        self._pending = None
        if value == 0x20:
            self._queue_bytes([self.ctr])
        elif value in (_WRITE_CTR, _WRITE_OUTPUT, _WRITE_KBD_OUT, _WRITE_AUX_OUT, _WRITE_AUX):
            self._pending = value
        elif value in (0xA7, 0xA8):
            self.ctr = self.ctr | CTR_AUX_OFF if value == 0xA7 else self.ctr & ~CTR_AUX_OFF
        elif value in (0xAD, 0xAE):
            self.ctr = self.ctr | CTR_KBD_OFF if value == 0xAD else self.ctr & ~CTR_KBD_OFF
        elif value in (0xA9, 0xAB):
            self._queue_bytes([0x00])  # interface tests: no clock or data line stuck
        elif value == 0xAA:
            self.ctr |= CTR_SYS
            self._queue_bytes([SELF_TEST_OK])
        elif value == 0xC0:
            self._queue_bytes([0x80])  # input port: keyboard not inhibited
        elif value == 0xD0:
            self._queue_bytes([self.output_port])
        elif value == 0xDD:
            self.output_port &= ~OUTPUT_A20
        elif value == 0xDF:
            self.output_port |= OUTPUT_A20
        elif value == 0xE0:
            self._queue_bytes([0x00])
        elif value >= 0xF0 and not value & OUTPUT_RESET:  # pulse output lines, line 0 low
            self.machine.reset("i8042")

    def _data(self, value: int) -> None:
        pending, self._pending = self._pending, None
        if pending == _WRITE_CTR:
            self.ctr = value
        elif pending == _WRITE_OUTPUT:
            self.output_port = value
            if not value & OUTPUT_RESET:
                self.machine.reset("i8042")
        elif pending == _WRITE_KBD_OUT:
            self._queue_bytes([value])
        elif pending == _WRITE_AUX_OUT:
            self._queue_bytes([value], STATUS_AUX)  # the AUX loopback
        elif pending == _WRITE_AUX:
            self._queue_bytes([RESEND], STATUS_AUX | STATUS_TIMEOUT)  # no mouse answers
        else:
            self.ctr &= ~CTR_KBD_OFF  # sending to the keyboard enables its interface
            translated = bool(self.ctr & CTR_XLATE)
            self._queue_bytes(self.keyboard.command(value, translated=translated))
