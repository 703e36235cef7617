"""The i8042 through Linux's probe (i8042.c, atkbd), and its reset line."""

from __future__ import annotations

import pytest
from test_pit import Edges

from pyflank.platform.devices.i8042 import COMMAND, DATA, I8042
from pyflank.platform.devices.irq import IrqLine
from pyflank.platform.devices.power import MachineControl, MachineEvent


def controller() -> tuple[I8042, MachineControl, Edges, Edges]:
    machine, kbd, aux = MachineControl(), Edges(), Edges()
    return I8042(machine, IrqLine(kbd, 1), IrqLine(aux, 12)), machine, kbd, aux


def command(kbc: I8042, value: int, *params: int) -> list[int]:
    """i8042_command: wait for IBF clear, write, then read what arrives."""
    assert not kbc.read(COMMAND, 1) & 0x02
    kbc.write(COMMAND, 1, value)
    for param in params:
        kbc.write(DATA, 1, param)
    replies = []
    while kbc.read(COMMAND, 1) & 0x01:
        replies.append(kbc.read(DATA, 1))
    return replies


def test_the_controller_probe() -> None:
    kbc, _, _, _ = controller()
    assert kbc.read(COMMAND, 1) != 0xFF  # i8042_controller_check: a controller is there
    [ctr] = command(kbc, 0x20)
    assert ctr & 0x40  # translation on, as a BIOS leaves it
    assert command(kbc, 0xAA) == [0x55]
    assert command(kbc, 0x60, ctr & ~0x03) == []
    assert command(kbc, 0x20) == [ctr & ~0x03]


def test_aux_loopback_and_the_aux_irq_test() -> None:
    kbc, _, _, aux = controller()
    kbc.write(COMMAND, 1, 0xD3)
    kbc.write(DATA, 1, 0x5A)
    status = kbc.read(COMMAND, 1)
    assert status & 0x21 == 0x21  # the byte comes back from the AUX side
    assert kbc.read(DATA, 1) == 0x5A
    assert command(kbc, 0xA7) == [] and command(kbc, 0x20)[0] & 0x20
    assert command(kbc, 0xA8) == [] and not command(kbc, 0x20)[0] & 0x20
    ctr = command(kbc, 0x20)[0]
    command(kbc, 0x60, ctr | 0x02)  # AUX interrupts on
    kbc.write(COMMAND, 1, 0xD3)
    kbc.write(DATA, 1, 0xA5)
    assert aux.rises == 1 and kbc.read(DATA, 1) == 0xA5


def test_no_mouse_answers_on_the_aux_port() -> None:
    kbc, _, _, _ = controller()
    kbc.write(COMMAND, 1, 0xD4)
    kbc.write(DATA, 1, 0xFF)  # psmouse's reset
    assert kbc.read(COMMAND, 1) & 0x61 == 0x61  # timeout, from AUX, output full
    assert kbc.read(DATA, 1) == 0xFE


def test_the_keyboard_answers_atkbd() -> None:
    kbc, _, kbd, _ = controller()
    kbc.write(DATA, 1, 0xF2)  # GETID
    assert kbd.rises == 1  # IRQ1: the driver reads one byte per interrupt
    replies = [kbc.read(DATA, 1)]
    while kbc.read(COMMAND, 1) & 0x01:
        replies.append(kbc.read(DATA, 1))
    assert replies == [0xFA, 0xAB, 0x41]  # translated ID
    assert kbd.rises == 3
    for data, expected in ((0xED, [0xFA]), (0x02, [0xFA]), (0xFF, [0xFA, 0xAA])):
        kbc.write(DATA, 1, data)
        assert [kbc.read(DATA, 1) for _ in expected] == expected
    assert kbc.keyboard.leds == 0  # the reset cleared them


@pytest.mark.parametrize("how", ["pulse", "output-port"])
def test_the_reset_line(how: str) -> None:
    kbc, machine, _, _ = controller()
    if how == "pulse":
        kbc.write(COMMAND, 1, 0xFE)
    else:
        kbc.write(COMMAND, 1, 0xD1)
        kbc.write(DATA, 1, 0x02)
    assert machine.request is not None
    assert machine.request.event is MachineEvent.RESET and machine.request.source == "i8042"


def test_pulsing_other_lines_does_not_reset() -> None:
    kbc, machine, _, _ = controller()
    kbc.write(COMMAND, 1, 0xFF)
    kbc.write(COMMAND, 1, 0xFD)
    assert machine.request is None
