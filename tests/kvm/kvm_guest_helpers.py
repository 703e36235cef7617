"""Small long-mode guests for the KVM backend tests, assembled with keystone at test time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import keystone

from pyflank.abi import HypervisorFeatures, hypervisor_leaves
from pyflank.backends.kvm import KvmConfig, KvmMachine, KvmVcpu, StopReason
from pyflank.backends.kvm.guest_state import sregs_to_vmcs
from pyflank.backends.kvm.longmode import FlatLayout, flat_long_mode_sregs, write_flat_long_mode
from pyflank.backends.kvm.policy import unsupported
from pyflank.backends.kvm.structs import KvmSregs
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks.valid_state import default_controls
from pyflank.memory import GuestPhysicalMemory
from pyflank.processor import Stop, VmxProcessor
from pyflank.processor.cpuid_table import sample_cpuid
from pyflank.vmm import run_loop

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
        default_controls(vmcs, self.handler.m_cpu)  # what VMLAUNCH checks
        state = self.handler.m_state_save
        state.rip, state.rsp = LAYOUT.code, LAYOUT.stack_top
        if prepare is not None:
            prepare(self.handler)
        self.machine = KvmMachine(self.memory, config)
        self.vcpu = KvmVcpu(self.machine, 0, self.com1)
        self.handler.set_cpu(self.vcpu.cpu)
        doorbell = self.machine.config.doorbell_port
        if doorbell is not None:
            self.handler.hypervisor_leaves = hypervisor_leaves(
                HypervisorFeatures.IO_PORT_DOORBELL, doorbell
            )
        self.vcpu.set_cpuid(sample_cpuid(self.handler, self.vcpu.cpuid_leaves()))
        self.processor = VmxProcessor(self.handler, unsupported, engine="kvm backend")

    @property
    def ring(self) -> str:
        return self.handler.m_debug_ring.read()

    @property
    def dispatched(self) -> int:
        """VM exits the handler saw."""
        return self.processor.exits

    def stop(self) -> None:
        self.vcpu.request_stop(StopReason.STOPPED)

    def run_to_stop(self, timeout: float = 5.0) -> Stop:
        """Run on this thread to the stop (``timeout`` seconds at most)."""
        timer = threading.Timer(timeout, self.vcpu.request_stop, (StopReason.TIMEOUT,))
        timer.daemon = True
        timer.start()
        try:
            return run_loop(self.vcpu, self.processor)
        finally:
            timer.cancel()

    def run(self, timeout: float = 5.0) -> StopReason:
        """Run to the stop; the final guest registers are then in the handler's StateSave."""
        return self.run_to_stop(timeout).reason

    def close(self) -> None:
        self.vcpu.close()
        self.machine.close()
        self.memory.close()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
