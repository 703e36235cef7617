"""Small long-mode guests for the KVM backend tests, assembled with keystone at test time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import keystone

from pyflank.backends.kvm import KvmConfig, KvmMachine, KvmVcpu, StopReason
from pyflank.backends.kvm.guest_state import sregs_to_vmcs
from pyflank.backends.kvm.longmode import FlatLayout, flat_long_mode_sregs, write_flat_long_mode
from pyflank.backends.kvm.structs import KvmSregs
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.memory import GuestPhysicalMemory

COM1 = 0x3F8
LAYOUT = FlatLayout()


def assemble(source: str, address: int = LAYOUT.code) -> bytes:
    encoding, _ = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64).asm(source, address)
    return bytes(encoding or b"")


@dataclass
class Com1:
    """Captures what the guest writes to the COM1 data port; the line is always ready."""

    output: bytearray = field(default_factory=bytearray)

    def io_read(self, port: int, size: int) -> int:
        return 0x60 if port == COM1 + 5 else 0  # LSR: transmitter empty

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == COM1:
            self.output.append(value & 0xFF)

    @property
    def text(self) -> str:
        return self.output.decode("latin-1")


class Guest:
    """One handler, one vCPU, the flat long-mode layout, ``source`` at the code address."""

    def __init__(
        self,
        source: str,
        handler: ExitHandlerIntelX64 | None = None,
        *,
        config: KvmConfig | None = None,
        prepare: Callable[[ExitHandlerIntelX64], None] | None = None,
    ) -> None:
        self.memory = GuestPhysicalMemory(LAYOUT.ram)
        cr3 = write_flat_long_mode(self.memory, LAYOUT)
        self.memory.write(LAYOUT.code, assemble(source))
        self.handler = handler or ExitHandlerIntelX64()
        self.com1 = Com1()
        sregs = KvmSregs()
        flat_long_mode_sregs(sregs, cr3, LAYOUT)
        vmcs = self.handler.m_vmcs
        sregs_to_vmcs(sregs, vmcs)
        vmcs.processor_write(f.GUEST_RFLAGS, 0x2)
        state = self.handler.m_state_save
        state.rip, state.rsp = LAYOUT.code, LAYOUT.stack_top
        if prepare is not None:
            prepare(self.handler)
        self.machine = KvmMachine(self.memory, config)
        self.vcpu = KvmVcpu(self.machine, 0, self.handler, self.com1)
        self.vcpu.load()

    @property
    def ring(self) -> str:
        return self.handler.m_debug_ring.read()

    def run(self, timeout: float = 5.0) -> StopReason:
        """Run to the stop; the final guest registers are then in the handler's StateSave."""
        result = self.vcpu.run(timeout=timeout)
        if result.reason not in (StopReason.HALTED, StopReason.PROMOTED):
            self.vcpu.snapshot()  # a halted vCPU keeps the state of its last exit
        return result.reason

    def close(self) -> None:
        self.vcpu.close()
        self.machine.close()
        self.memory.close()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
