"""IN/OUT: platform devices by default, I/O exits with the SDM qualification when asked."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from emu_helpers import Proc, Recorder, controls, kvm_gap, run, run1

from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.qualifications import IoDirection, IoInstruction, IoOperandEncoding
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.vmm import Vm


class IoEmulator(Recorder):
    """Handles I/O exits: IN returns 0x5A5A5A5A (masked to the size), OUT is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.outs: list[tuple[int, int]] = []

    def handle_exit(self, reason: int) -> None:
        if reason != ExitReason.IO_INSTRUCTION:
            super().handle_exit(reason)
            return
        io = IoInstruction.decode(self.m_vmcs.read(f.EXIT_QUALIFICATION))
        state = self.m_state_save
        mask = (1 << (8 * io.size)) - 1
        if io.direction is IoDirection.IN:
            state.rax = (state.rax & ~mask) | (0x5A5A5A5A & mask)
        else:
            self.outs.append((io.port, state.rax & mask))
        self.advance_rip()


def test_serial_output_without_io_exits() -> None:
    source = """
        mov dx, 0x3fd
        in al, dx
        mov r8, rax
        mov dx, 0x3f8
        mov al, 0x4f
        out dx, al
        mov al, 0x4b
        out dx, al
        hlt
    """
    vm, result = run1(source)
    assert vm.serial_output == b"OK"
    assert result.state.r08 & 0x60 == 0x60  # LSR: transmitter empty
    assert result.exits == 0


@pytest.mark.parametrize(
    ("instruction", "size", "direction", "encoding", "port", "length"),
    [
        ("out dx, al", 1, IoDirection.OUT, IoOperandEncoding.DX, 0x3F8, 1),
        ("out dx, ax", 2, IoDirection.OUT, IoOperandEncoding.DX, 0x3F8, 2),
        ("out dx, eax", 4, IoDirection.OUT, IoOperandEncoding.DX, 0x3F8, 1),
        ("in al, 0x80", 1, IoDirection.IN, IoOperandEncoding.IMMEDIATE, 0x80, 2),
        ("in eax, 0x71", 4, IoDirection.IN, IoOperandEncoding.IMMEDIATE, 0x71, 2),
        ("in ax, dx", 2, IoDirection.IN, IoOperandEncoding.DX, 0x3F8, 2),
    ],
)
def test_unconditional_io_exit_qualification(
    instruction: str, size: int, direction: IoDirection, encoding: IoOperandEncoding, port: int,
    length: int,
) -> None:  # fmt: skip
    handler = IoEmulator()
    source = f"mov dx, 0x3f8\n mov eax, 0x11223344\n {instruction}\n mov r9, rax\n hlt"
    vm, [result] = run(source, lambda: handler, configure=controls(Proc.UNCONDITIONAL_IO_EXITING))
    [record] = handler.records
    assert record.reason == ExitReason.IO_INSTRUCTION
    assert IoInstruction.decode(record.qualification) == IoInstruction(
        size=size, direction=direction, port=port, operand_encoding=encoding
    )
    assert record.length == length
    assert record.rip == 0x100009
    if direction is IoDirection.IN:
        mask = (1 << (8 * size)) - 1
        expected = 0x5A5A5A5A & mask if size == 4 else (0x11223344 & ~mask) | (0x5A5A5A5A & mask)
        assert result.state.r09 == expected  # what the handler supplied reached the guest
    else:
        assert handler.outs == [(0x3F8, 0x11223344 & ((1 << (8 * size)) - 1))]
        assert vm.serial_output == b""  # the device never saw it
    assert result.reason is StopReason.GUEST_HLT


def test_rep_outsb_exit_reports_string_rep_and_linear_address() -> None:
    kvm_gap("io_strings")

    class StringIo(Recorder):
        def handle_exit(self, reason: int) -> None:
            if reason == ExitReason.IO_INSTRUCTION:
                s = self.m_state_save
                s.rsi += s.rcx  # emulate the whole REP OUTSB at once
                s.rcx = 0
                self.advance_rip()
                return
            super().handle_exit(reason)

    handler = StringIo()
    source = """
        mov dx, 0x3f8
        lea rsi, [rip + text]
        mov rcx, 4
        rep outsb
        mov r10, rsi
        mov r11, rcx
        hlt
    text: .ascii "abcd"
    """
    vm, [result] = run(source, lambda: handler, configure=controls(Proc.UNCONDITIONAL_IO_EXITING))
    [record] = handler.records
    io = IoInstruction.decode(record.qualification)
    assert (io.string, io.rep, io.direction, io.size, io.port) == (
        True,
        True,
        IoDirection.OUT,
        1,
        0x3F8,
    )
    text = result.state.r10 - 4
    assert record.linear_address == text
    assert record.information == 2 << 7 | 3 << 15  # 64-bit addresses, DS
    assert record.length == 2
    assert result.state.r11 == 0
    assert vm.serial_output == b""


def _io_bitmaps(a: int, b: int) -> Callable[[Vmcs], None]:
    def change(vmcs: Vmcs) -> None:
        controls(Proc.USE_IO_BITMAPS | Proc.UNCONDITIONAL_IO_EXITING)(vmcs)
        vmcs.write(f.ADDRESS_OF_IO_BITMAP_A, a)
        vmcs.write(f.ADDRESS_OF_IO_BITMAP_B, b)

    return change


def test_io_bitmaps_select_ports() -> None:
    a, b = 0x200000, 0x201000
    handler = IoEmulator()

    def setup(vm: Vm) -> None:
        vm.memory.fill(a, 0x2000)
        vm.memory.write_u8(a + (0x80 >> 3), 1 << (0x80 & 7))  # port 0x80 in bitmap A
        port = 0xC001 - 0x8000
        vm.memory.write_u8(b + (port >> 3), 1 << (port & 7))  # port 0xC001 in bitmap B

    source = """
        mov al, 0x41
        mov dx, 0x3f8
        out dx, al
        out 0x80, al
        mov dx, 0xc000
        in ax, dx
        mov r8, rax
        mov dx, 0x3f8
        mov al, 0x42
        out dx, al
        hlt
    """
    vm, [result] = run(source, lambda: handler, configure=_io_bitmaps(a, b), setup=setup)
    ports = [IoInstruction.decode(r.qualification).port for r in handler.records]
    assert ports == [0x80, 0xC000]  # the 2-byte IN at 0xC000 touches 0xC001
    assert vm.serial_output == b"AB"  # COM1 is not in the bitmaps: no exit
    assert result.state.r08 & 0xFFFF == 0x5A5A
