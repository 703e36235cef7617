"""VMs and vCPUs: guest RAM, a handler per vCPU, a thread per vCPU, and why each stopped.

    vm = Vm(MyHandler, vcpus=2)
    vm.load_asm(source)            # or load_flat(code) / load_elf(path)
    vm.configure(lambda vmcs: ...) # optional: VMCS controls, checked against the backend
    for result in vm.run(timeout=5.0):
        print(result.reason, result.debug_ring)

Every vCPU starts at the program's entry point in 64-bit mode with RDI = its vCPU id and
its own stack, so several vCPUs can run one program.  Guest RAM is shared.

``backend`` picks the processor: "emu" (the software CPU, also what "auto" means) or
"kvm" (``BackendUnavailable`` with the probe's reason where /dev/kvm cannot be used;
``vm.capabilities`` is then the probe's report, and ``pyflank.backends.kvm`` lists what
differs from the software CPU).  Either way the handlers, VMCS and StateSave are the same.
A Vm frees its backend when it has run (or on ``close()``).

On the software CPU a running Vm can be stopped and looked into: ``pause()``/``resume()``
park every vCPU where its state is whole (``debug.parking``), ``snapshot(path)`` saves it
and ``Vm.restore(path)`` goes on from there (``pyflank.snapshot``); ``Vm(gdb=PORT)`` serves
gdb (``pyflank.gdbstub``); ``observe.Recorder`` and ``observe.Replayer`` record and replay.

Limits of the software CPU with several vCPUs: each runs its own unicorn engine over the
shared RAM, truly in parallel.  unicorn does not make LOCK-prefixed read-modify-write
instructions atomic between engines, and an engine does not notice another engine writing
code it has already translated.  Guests that synchronise vCPUs through shared memory
(spinlocks) or patch each other's code need the KVM backend.  (Each engine stops exactly
at a block start -- ``backends.emu.stop_gate`` -- so taking turns would be correct, but it
would serialise the vCPUs.)
"""

from __future__ import annotations

import atexit
import copy
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyflank.backends.base import (
    Backend,
    BackendUnavailable,
    Capabilities,
    PortIo,
    StopReason,
    VcpuEngine,
)
from pyflank.backends.factory import open_backend
from pyflank.debug.exit_breaks import DebuggerExits
from pyflank.debug.parking import Parking
from pyflank.exit_handler import DebugRing, ExitHandlerIntelX64, StateSave
from pyflank.exit_handler.fault import capture, handler_fault
from pyflank.exit_handler.state_save import GENERAL_REGISTERS
from pyflank.exit_handler.unrestricted import UnrestrictedGuest
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.controls import SecondaryProcessorBasedControls as Proc2
from pyflank.intel_x64.controls import VmEntryControls
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory import GuestPhysicalMemory, PageTableBuilder
from pyflank.platform.assemble import assemble
from pyflank.platform.boot import (
    BootLayout,
    boot_vcpu,
    identity_page_tables,
    write_descriptor_tables,
)
from pyflank.platform.devices.bus import PortBus
from pyflank.platform.devices.clock import VirtualClock
from pyflank.platform.devices.pc import PC_PORTS, PcConfig, PcPlatform
from pyflank.platform.devices.uart import Uart16550
from pyflank.platform.linux.cmdline import compose
from pyflank.platform.loader import ELF_MAGIC, LoadedImage, load_elf, load_flat
from pyflank.processor import EntryPlan, ExitRecord, Pause, Stop, VmxProcessor
from pyflank.processor.cpuid_table import sample_cpuid
from pyflank.processor.machine import Machine
from pyflank.processor.observer import VmObserver, checked_observers, compose_observers
from pyflank.processor.time import TSC_HZ

if TYPE_CHECKING:
    from pyflank.gdbstub.server import GdbStub
    from pyflank.platform.linux.bzimage import LinuxBoot
    from pyflank.snapshot import Restoring, SnapshotInfo

__all__ = ["BackendUnavailable", "StopReason", "Vcpu", "VcpuResult", "Vm", "run_loop"]

log = logging.getLogger("pyflank")
DEFAULT_MEMORY_SIZE = 16 * 1024 * 1024
LINUX_MEMORY_SIZE = 256 * 1024 * 1024
RTC_EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z: the RTC of a PC Vm, for repeatable runs
STOP_PATIENCE = 5.0  # seconds an interrupted run waits for its vCPUs to stop
HandlerFactory = type[ExitHandlerIntelX64] | Callable[[], ExitHandlerIntelX64]
BackendFactory = Callable[[GuestPhysicalMemory, PortIo], Backend]


@dataclass
class VcpuResult:
    """Why a vCPU stopped, and its state then (a copy of StateSave; the VMCS itself)."""

    vcpuid: int
    """Which vCPU (0, 1, ...)."""
    reason: StopReason
    """Why it stopped: guest HLT, halted or promoted by the handler, a fault, the timeout..."""
    message: str
    """The backend's words on the stop (the instruction, the failed check, ...)."""
    state: StateSave
    """A copy of the guest registers when it stopped."""
    vmcs: Vmcs
    """The vCPU's VMCS itself, with the last exit's information."""
    debug_ring: str
    """The handler's log for this vCPU."""
    exits: int
    """How many VM exits the handler saw."""
    trace: list[tuple[int, int]] | None = field(default=None, repr=False)
    """(basic exit reason, guest RIP) of every exit when the Vm was made with ``trace=True``."""


StopCallback = Callable[[VcpuResult], None]


def run_loop(
    engine: VcpuEngine,
    processor: VmxProcessor,
    start: Callable[[], EntryPlan | Stop] | None = None,
) -> Stop:
    """Run one vCPU to its stop: the processor launches, the engine runs the guest to the
    next exit, the processor dispatches it and plans the next entry, and so on.  ``start``
    gives the first step instead of the launch (a restored vCPU goes on)."""
    decide = processor.exit
    fuse = getattr(engine, "fuse", None)  # an engine that can carry out exits itself
    if fuse is not None:
        fuse(processor.fusion())
    step: EntryPlan | Stop = processor.launch() if start is None else start()
    while not isinstance(step, Stop):
        happened = engine.run(step, decide)
        if isinstance(happened, ExitRecord):
            step = decide(happened)
        elif isinstance(happened, Stop):
            return processor.stopped(happened)
        elif isinstance(happened, Pause):
            step = processor.pause(happened)
        else:
            step = happened
    return step


class Vcpu:
    """A vCPU's handler, VMCS, StateSave and debug ring; its engine and processor exist
    while it runs (``run_loop``, the same for every engine)."""

    def __init__(self, vm: Vm, vcpuid: int, handler: ExitHandlerIntelX64) -> None:
        self.vcpuid = vcpuid
        """This vCPU's id: RDI at its first instruction."""
        self.handler = handler
        """Its exit handler (one instance per vCPU)."""
        self.vmcs = handler.m_vmcs
        """Its VMCS; write controls before ``Vm.run`` (``Vm.configure`` checks them)."""
        self.state = handler.m_state_save
        """Its guest registers (RIP, RSP, RDI set at boot)."""
        self.debug_ring: DebugRing = handler.m_debug_ring
        """Its handler's log."""
        self.backend = vm.backend.name
        """The backend's name ("emu", "kvm", ...)."""
        self.memory = vm.memory
        self.serial = vm.serial
        """COM1 (every vCPU's view of the console)."""
        self.machine: Machine | None = None
        """The machine whose interrupts and time this vCPU has (vCPU 0 of a PC Vm)."""
        self.state.vcpuid = vcpuid
        handler.set_memory(vm.memory)
        handler.set_ports(vm.bus)
        # How guests reach the VMM (CPUID 0x40000001) depends on what the backend can trap.
        handler.hypervisor_leaves = vm.backend.hypervisor_leaves()
        self.engine: VcpuEngine | None = None
        """The engine's vCPU while the Vm runs."""
        self.processor: VmxProcessor | None = None
        """Its VMX processor while the Vm runs."""
        self.result: VcpuResult | None = None
        """Why and how it stopped, once it has."""
        self.finished = threading.Event()
        """Set when its thread is done with the engine (``result`` is then final)."""
        self._thread: threading.Thread | None = None
        self._parking: Parking | None = None
        self._parking_lock = threading.Lock()
        self.first_step: Callable[[], EntryPlan | Stop] | None = None
        """The first step of a restored vCPU (``snapshot``), instead of the launch."""

    def count_instructions(self) -> Callable[[], int] | None:
        """Start counting guest instructions (observers ask, before the run); a reader of
        the count, or None where the engine cannot count them."""
        assert self.engine is not None, "the engine exists while the Vm runs"
        return self.engine.count_instructions()

    def _attach(
        self,
        backend: Backend,
        *,
        trace: bool,
        machine: Machine | None = None,
        observers: Sequence[VmObserver] = (),
        gdb: GdbStub | None = None,
    ) -> None:
        """Make this vCPU's engine and processor (after the guest is loaded)."""
        self.machine = machine
        engine = self.engine = backend.create_vcpu(self.vcpuid)
        if engine.cpu is not None:
            self.handler.set_cpu(engine.cpu)
        leaves = engine.cpuid_leaves()
        if leaves is not None:
            engine.set_cpuid(sample_cpuid(self.handler, leaves, self.vcpuid))
        watching = [w for w in (o.attach(self) for o in observers) if w is not None]
        observer = compose_observers(watching)
        if gdb is not None:  # breaks on exits park the vCPU for gdb
            observer = DebuggerExits(self._new_parking(), gdb.breaks, observer)
        self.processor = VmxProcessor(
            self.handler,
            backend.unsupported,
            engine=f"{backend.name} backend",
            trace=trace,
            machine=machine,
            observer=observer,
        )
        if self._parking is not None:
            self._wire_parking(self._parking)
        if gdb is not None:
            gdb.attach(self.parking(), self._ending, lambda: self.request_stop(StopReason.STOPPED))

    def parking(self) -> Parking:
        """Where this vCPU parks for a debugger or a pause (``debug.parking``), made on first
        use; the software CPU only (``ValueError`` elsewhere), while the Vm runs."""
        with self._parking_lock:
            if self._parking is None:
                self._new_parking()
                assert self._parking is not None
                if self.processor is not None:
                    self._wire_parking(self._parking)
            return self._parking

    def _new_parking(self) -> Parking:
        debugger = getattr(self.engine, "debugger", None)
        if debugger is None:
            raise ValueError(f"vCPU {self.vcpuid}: stopping the guest needs the software CPU "
                             f"(emu), not the {self.backend} backend")  # fmt: skip
        self._parking = Parking(
            self.vcpuid, debugger(), state=self.state, vmcs=self.vmcs, memory=self.memory
        )
        return self._parking

    def _wire_parking(self, parking: Parking) -> None:
        processor = self.processor
        assert processor is not None
        parking.processor = processor
        if processor.clock is not None:
            processor.clock.idle_hook = parking.at_idle

    def _ending(self) -> str:
        result = self.result
        if result is None:
            return "stopped"
        return f"{result.reason.value}: {result.message}" if result.message else result.reason.value

    def request_stop(self, reason: StopReason = StopReason.STOPPED) -> None:
        """Ask the running vCPU to stop (any thread): its engine, and a halted processor."""
        if self.engine is not None:
            self.engine.request_stop(reason)
        if self.processor is not None:
            self.processor.request_stop(reason)
        if self._parking is not None:
            self._parking.abandon()

    def start(self, on_stop: StopCallback | None) -> None:
        """Run on a thread of its own; ``finished`` is set when it is done."""
        self._thread = threading.Thread(
            target=self._run, args=(on_stop,), name=f"vcpu{self.vcpuid}", daemon=True
        )
        self._thread.start()

    def join(self) -> None:
        """Wait for its thread to end (``Vm.run`` does, before it frees the engine)."""
        if self._thread is not None:
            self._thread.join(1.0)  # it has set ``finished``: only its return is left

    def _run(self, on_stop: StopCallback | None) -> None:
        try:
            self.result = self._stop_result()
            if self._parking is not None:
                self._parking.finished()
            if on_stop is not None:
                try:
                    on_stop(self.result)
                except Exception:  # the caller's callback must not kill the vCPU thread
                    log.exception("on_stop callback failed for vCPU %d", self.vcpuid)
        finally:
            self.finished.set()

    def _stop_result(self) -> VcpuResult:
        engine, processor = self.engine, self.processor
        assert engine is not None and processor is not None
        try:
            stop = run_loop(engine, processor, self.first_step)
        except BaseException as exc:  # an engine failure stops this vCPU only
            log.exception("vCPU %d failed", self.vcpuid)
            stop = Stop(StopReason.ERROR, f"the engine raised {capture(exc).exception}")
        if processor.observer is not None:
            try:
                processor.observer.stopped(stop)
            except Exception:  # an observer's failure loses no result
                log.exception("vCPU %d: an observer failed at the stop", self.vcpuid)
        reason, message = stop.reason, stop.message
        fault = handler_fault(self.handler)
        if fault is not None:  # dispatch() halted the vCPU: say why, not just "halted"
            reason, message = StopReason.HANDLER_ERROR, fault.describe()
        return VcpuResult(
            vcpuid=self.vcpuid,
            reason=reason,
            message=message,
            state=copy.copy(self.state),
            vmcs=self.vmcs,
            debug_ring=self.debug_ring.read(),
            exits=processor.exits,
            trace=processor.trace,
        )


class Vm:
    """Guest RAM, a platform, boot state, and ``vcpus`` vCPUs each with its own exit handler.

    ``platform``: "minimal" (COM1 without interrupts: what short guest programs need) or
    "pc" (the legacy PC Linux runs on: 8259 pair, 8254, CMOS, i8042, COM1 with interrupts,
    all on virtual time).  ``serial`` is COM1 (``serial_output``; ``serial.feed`` gives it
    input); ``bus`` the port bus (``insert`` a device at a port range before the run);
    ``console`` receives each byte COM1 sends, as it sends it.

    ``gdb``: serve gdb's remote protocol on this port (``HOST:PORT``; the loopback only; 0
    for a free port, in ``vm.gdb.address``) -- the software CPU only.  ``gdb_wait``: every
    vCPU waits for gdb before its first instruction (QEMU's ``-S``); give ``run`` a timeout
    that covers the session, or None.
    """

    def __init__(
        self,
        handler: HandlerFactory = ExitHandlerIntelX64,
        *,
        memory_size: int = DEFAULT_MEMORY_SIZE,
        vcpus: int = 1,
        backend: str | BackendFactory = "emu",
        layout: BootLayout | None = None,
        trace: bool = False,
        observers: Sequence[VmObserver] = (),
        platform: str = "minimal",
        console: Callable[[int], None] | None = None,
        gdb: int | str | None = None,
        gdb_wait: bool = True,
        _setup: bool = True,
    ) -> None:
        self.layout = layout or BootLayout()
        """Where the boot structures, stacks and program live in guest-physical memory."""
        self.trace = trace
        self.observers = checked_observers(observers)
        """What watches the run's exits (``pyflank.observe``: statistics, traces, breaks)."""
        self.memory = GuestPhysicalMemory(memory_size)
        """Guest RAM, shared by every vCPU (and readable after the run)."""
        write_descriptor_tables(self.memory, self.layout, vcpus)
        self.page_tables: PageTableBuilder = identity_page_tables(self.memory, self.layout)
        """The guest's page tables (all of RAM identity-mapped); ``map`` adds mappings."""
        self.platform: PcPlatform | None = None
        """The PC platform (``platform="pc"``): 8259 pair, 8254, CMOS, i8042, COM1 with
        interrupts, on virtual time; None for the minimal one (COM1, no interrupts)."""
        if platform == "pc":
            config = PcConfig(memory_size=memory_size, rtc_start=RTC_EPOCH)
            self.platform = PcPlatform(VirtualClock(), config, console=console)
            self.serial: Uart16550 = self.platform.com1
            self.bus: PortBus = self.platform.io
        elif platform == "minimal":
            self.serial = Uart16550(sink=console)
            self.bus = PortBus()
            self.bus.insert(self.serial, *PC_PORTS["com1"], "com1")
        else:
            raise ValueError(f"platform {platform!r}: choose 'minimal' or 'pc'")
        if isinstance(backend, str):
            self.backend: Backend = open_backend(backend, self.memory, self.bus)
        else:
            self.backend = backend(self.memory, self.bus)
        """The engine: the software CPU, KVM, or one of the caller's."""
        self.gdb: GdbStub | None = None
        """The gdb stub (``Vm(gdb=PORT)``), listening at ``gdb.address`` from now on."""
        if gdb is not None:
            if self.backend.name != "emu":
                self.backend.close()
                raise ValueError(f"the gdb stub needs the software CPU (emu), not the "
                                 f"{self.backend.name} backend")  # fmt: skip
            try:
                from pyflank.gdbstub.server import GdbStub, loopback  # noqa: PLC0415 - emu's

                self.gdb = GdbStub(loopback(gdb), wait=gdb_wait, snapshot=_snapshots_of(self))
            except (OSError, ValueError):
                self.backend.close()
                raise
        self._finalizer = weakref.finalize(self, _close, self.backend, self.gdb)
        self.vcpus = [Vcpu(self, i, handler()) for i in range(vcpus)]
        """The vCPUs, by id."""
        for vcpu in self.vcpus:
            boot_vcpu(
                vcpu.vmcs,
                vcpu.handler.m_cpu,
                self.layout,
                vcpuid=vcpu.vcpuid,
                vcpus=vcpus,
                cr3=self.page_tables.cr3,
                entry=self.layout.load_address,
            )
            vcpu.state.rsp = self.layout.stack_top(vcpu.vcpuid)
            vcpu.state.rdi = vcpu.vcpuid
        self.set_entry(self.layout.load_address)
        self.linux: LinuxBoot | None = None
        """What ``boot_linux`` put where (kernel, initrd, command line, zero page)."""
        self.restored: SnapshotInfo | None = None
        """The snapshot this Vm was restored from (``Vm.restore``)."""
        self._restoring: Restoring | None = None
        self._running = threading.Event()
        self._ran = False
        self._started: list[Vcpu] = []
        if _setup:
            self._setup()

    def _setup(self) -> None:
        for vcpu in self.vcpus:  # the extension chooses its exits, on the boot state
            vcpu.handler.setup(vcpu.vmcs)
            self._check_controls(vcpu, f"{type(vcpu.handler).__name__}.setup asks for ")

    @classmethod
    def boot_linux(
        cls,
        kernel: bytes | str | Path,
        *,
        initrd: bytes | str | Path | None = None,
        append: str = "console=ttyS0",
        handler: HandlerFactory = ExitHandlerIntelX64,
        memory_size: int = LINUX_MEMORY_SIZE,
        backend: str | BackendFactory = "emu",
        trace: bool = False,
        console: Callable[[int], None] | None = None,
        observers: Sequence[VmObserver] = (),
        decompress_in_guest: bool = False,
        gdb: int | str | None = None,
        gdb_wait: bool = True,
    ) -> Vm:
        """A PC Vm that boots the Linux ``kernel``: a bzImage by the x86 boot protocol,
        or an ELF ``vmlinux`` by its PVH entry.

        ``append`` is the command line as QEMU takes it; the platform adds what its
        hardware needs (``platform.linux.cmdline``: no ACPI, APICs or PCI, the TSC rate).
        A bzImage's vCPU starts at a 64-bit entry with RSI at the zero page: the kernel's
        own, decompressed here (``load_vmlinux``), or with ``decompress_in_guest`` the
        bzImage's, whose decompressor then runs in the guest (seconds on the software
        CPU).  A vmlinux's starts as PVH defines, in 32-bit protected mode without paging
        and EBX at ``hvm_start_info``: the handler must run it as an unrestricted guest
        (``exit_handler.unrestricted.UnrestrictedGuest``, the default for a vmlinux).
        ``console`` receives COM1's output as it is sent; ``serial.feed`` types into the
        guest.
        """
        image = _read(kernel)
        pvh = image.startswith(ELF_MAGIC)  # an ELF vmlinux
        if pvh and handler is ExitHandlerIntelX64:
            handler = UnrestrictedGuest
        vm = cls(
            handler, memory_size=memory_size, backend=backend, trace=trace, platform="pc",
            console=console, observers=observers, gdb=gdb, gdb_wait=gdb_wait, _setup=False,
        )  # fmt: skip
        # Imported here: a VM that boots no kernel (bfm's service) skips their import.
        from pyflank.platform.linux.bzimage import load_bzimage, load_vmlinux  # noqa: PLC0415
        from pyflank.platform.linux.pvh import load_pvh  # noqa: PLC0415

        vcpu = vm.vcpus[0]
        if pvh and not isinstance(vcpu.handler, UnrestrictedGuest):
            vm.close()
            raise ValueError(
                f"the PVH entry starts the vCPU in 32-bit protected mode without paging: "
                f"{type(vcpu.handler).__name__} must run it as an unrestricted guest "
                "(subclass pyflank.exit_handler.unrestricted.UnrestrictedGuest)"
            )
        load: Callable[..., LinuxBoot] = (
            load_pvh if pvh else load_bzimage if decompress_in_guest else load_vmlinux
        )
        boot = load(
            vm.memory,
            image,
            cmdline=compose(append, tsc_khz=TSC_HZ // 1000),
            initrd=None if initrd is None else _read(initrd),
        )
        for encoding, value in boot.entry.vmcs_fields().items():
            vcpu.vmcs.write(encoding, value)
        if not boot.entry.long_mode:
            entry = vcpu.vmcs.read(f.VM_ENTRY_CONTROLS)
            vcpu.vmcs.write(f.VM_ENTRY_CONTROLS, entry & ~VmEntryControls.IA_32E_MODE_GUEST)
        state = vcpu.state
        state.update({name: 0 for name in GENERAL_REGISTERS} | dict(boot.entry.registers))
        state.rip, state.rsp = boot.entry.rip, boot.entry.rsp
        # Linux reads the clock with RDTSCP once its alternatives are patched in.
        secondary = f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        wanted = vcpu.vmcs.read(secondary) | Proc2.ENABLE_RDTSCP
        primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        vcpu.vmcs.write(primary, vcpu.vmcs.read(primary) | Proc.ACTIVATE_SECONDARY_CONTROLS)
        vcpu.vmcs.write(secondary, wanted)
        if vm.backend.unsupported(vcpu.vmcs):  # an engine that cannot: RDTSCP follows it
            vcpu.vmcs.write(secondary, wanted & ~Proc2.ENABLE_RDTSCP)
        vm.linux = boot
        vm._setup()
        return vm

    @classmethod
    def restore(
        cls,
        snapshot: str | Path,
        *,
        handler: HandlerFactory = ExitHandlerIntelX64,
        trace: bool = False,
        observers: Sequence[VmObserver] = (),
        console: Callable[[int], None] | None = None,
        gdb: int | str | None = None,
        gdb_wait: bool = True,
    ) -> Vm:
        """A Vm that goes on from ``snapshot`` (``Vm.snapshot``'s file), as its Vm would
        have: RAM, vCPUs, devices and guest time as they were; ``run`` continues them.
        ``SnapshotError`` (a ``ValueError``) with the reason for a file it cannot use."""
        from pyflank.snapshot import SnapshotFile  # noqa: PLC0415 - the software CPU's

        with SnapshotFile(snapshot) as file:
            meta = file.meta
            vm = cls(
                handler, memory_size=int(meta["memory_size"]), vcpus=int(meta["vcpus"]),
                platform=str(meta["platform"]), trace=trace, observers=observers,
                console=console, gdb=gdb, gdb_wait=gdb_wait, _setup=False,
            )  # fmt: skip
            try:
                vm._restoring = file.load_into(vm)
            except BaseException:
                vm.close()
                raise
        vm.restored = vm._restoring.info
        return vm

    # -- loading ------------------------------------------------------------------------
    def set_entry(self, rip: int) -> None:
        """Start every vCPU at guest address ``rip``."""
        for vcpu in self.vcpus:
            vcpu.state.rip = rip
            vcpu.vmcs.write(f.GUEST_RIP, rip)

    def load_flat(self, code: bytes, gpa: int | None = None) -> LoadedImage:
        """Copy ``code`` to ``gpa`` (default: the load address) and start there."""
        image = load_flat(self.memory, code, self.layout.load_address if gpa is None else gpa)
        self.set_entry(image.entry)
        return image

    def load_asm(self, source: str, gpa: int | None = None) -> LoadedImage:
        """Assemble ``source`` (Intel syntax, the guest SDK's includes), load it."""
        address = self.layout.load_address if gpa is None else gpa
        return self.load_flat(assemble(source, address), address)

    def load_elf(self, image: bytes | str | Path) -> LoadedImage:
        """Load an ELF64 executable's PT_LOAD segments and start at its entry point."""
        loaded = load_elf(self.memory, image, self.page_tables)
        self.set_entry(loaded.entry)
        return loaded

    # -- configuration ---------------------------------------------------------------------
    def configure(self, change: Callable[[Vmcs], None], vcpu: int | None = None) -> None:
        """Apply ``change`` to each vCPU's VMCS (or one); ``ValueError`` if the backend
        cannot run the result (an unsupported control)."""
        targets = self.vcpus if vcpu is None else [self.vcpus[vcpu]]
        for target in targets:
            change(target.vmcs)
            self._check_controls(target)

    def _check_controls(self, vcpu: Vcpu, what: str = "") -> None:
        problems = self.backend.unsupported(vcpu.vmcs)
        if problems:
            raise ValueError(
                f"vCPU {vcpu.vcpuid}: {what}unsupported on the {self.backend.name} backend: "
                + "; ".join(problems)
            )

    @property
    def serial_output(self) -> bytes:
        """Everything the guest wrote to COM1 so far."""
        return self.serial.output

    @property
    def capabilities(self) -> Capabilities | None:
        """What the host lets the backend do (KVM's probe report); None for the software CPU."""
        return self.backend.capabilities

    def close(self) -> None:
        """Free the backend (KVM file descriptors); guest RAM stays readable."""
        self._finalizer()

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pausing and snapshots -----------------------------------------------------------
    def request_pause(self) -> None:
        """Ask every running vCPU to park (``debug.parking``) at its next point where its
        state is whole, and return (any thread; a vCPU's own, in a device, too)."""
        self._wait_running()
        for vcpu in self.vcpus:
            if vcpu.result is None:
                vcpu.parking().request()

    def pause(self, timeout: float | None = 10.0) -> None:
        """Stop the guest: every running vCPU parked between two instructions, or halted
        waiting for an interrupt.  Guest time stands still with it.  ``TimeoutError`` if
        they are not all parked within ``timeout`` seconds; ``resume()`` lets them go on."""
        if self.gdb is not None:
            raise RuntimeError("this Vm is stopped and started by gdb (Vm(gdb=...))")
        self.request_pause()
        deadline = None if timeout is None else time.monotonic() + timeout
        for vcpu in self.vcpus:
            parking = vcpu.parking()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not parking.wait(left) and not parking.ended:
                raise TimeoutError(f"vCPU {vcpu.vcpuid} did not pause within {timeout} s")

    def resume(self) -> None:
        """Let paused vCPUs go on."""
        for vcpu in self.vcpus:
            if vcpu._parking is not None:
                vcpu._parking.resume()

    def snapshot(self, path: str | Path) -> SnapshotInfo:
        """Save the whole VM to ``path`` (``pyflank.snapshot``) while it runs: paused
        already, it stays paused; else it is paused for the save and resumed after."""
        self._wait_running()
        paused = all(v._parking is not None and v._parking.stopped for v in self.vcpus)
        if not paused:
            self.pause()
        try:
            from pyflank.snapshot import save as save_snapshot  # noqa: PLC0415

            return save_snapshot(self, path)
        finally:
            if not paused:
                self.resume()

    def _wait_running(self) -> None:
        if not self._ran or not self._running.wait(10.0):
            raise RuntimeError("the Vm is not running (pause and snapshot a running Vm)")
        if all(v.result is not None for v in self.vcpus):
            raise RuntimeError("the Vm has stopped (pause and snapshot a running Vm)")

    # -- running -------------------------------------------------------------------------
    def run(
        self, timeout: float | None = 5.0, *, on_stop: StopCallback | None = None
    ) -> list[VcpuResult]:
        """Run every vCPU until it stops or ``timeout`` seconds pass; one result each.

        ``timeout=None`` (or ``math.inf``) waits for the vCPUs however long they run (time
        stopped in a debugger counts).
        ``on_stop(result)``, if given, is called on each vCPU's thread as that vCPU stops.
        The arguments are checked before any vCPU starts; whatever ends the run (a
        timeout, an exception, Ctrl-C in the caller), every vCPU thread is stopped and
        joined before the backend is freed.
        """
        limit = _checked_timeout(timeout)
        if on_stop is not None and not callable(on_stop):
            raise TypeError(f"on_stop must be callable, not {type(on_stop).__name__}")
        if self._ran:
            raise RuntimeError("a Vm runs once")
        self._ran = True
        try:
            return self._run(limit, on_stop)
        finally:
            if self._threads_stopped():
                self.close()
            else:  # freeing the engines under a running vCPU would crash the process
                _STRANDED.append(self)
                log.error("vCPU threads did not stop: the backend stays allocated")

    def _run(self, timeout: float | None, on_stop: StopCallback | None) -> list[VcpuResult]:
        for vcpu in self.vcpus:  # without local APICs only the boot vCPU takes interrupts
            machine = self.platform if vcpu.vcpuid == 0 else None
            vcpu._attach(
                self.backend, trace=self.trace, machine=machine, observers=self.observers,
                gdb=self.gdb,
            )  # fmt: skip
        if self._restoring is not None:
            self._restoring.start(self)  # each vCPU goes on from the snapshot
        try:
            for vcpu in self.vcpus:
                vcpu.start(on_stop)
                self._started.append(vcpu)
            self._running.set()
            if self.gdb is not None:
                self.gdb.start()
            deadline = None if timeout is None else time.monotonic() + timeout
            for vcpu in self.vcpus:
                vcpu.finished.wait(None if deadline is None else deadline - time.monotonic())
            self._stop_vcpus(StopReason.TIMEOUT)
            if self.gdb is not None:
                self.gdb.finish()
        finally:
            # An exception or Ctrl-C while waiting: the vCPUs must still stop before the
            # engines go.  Bounded, so a vCPU blocked in a device cannot hang the caller.
            self._stop_vcpus(StopReason.STOPPED, patience=STOP_PATIENCE)
        for observer in self.observers:
            try:
                observer.finished()
            except Exception:  # an observer's failure loses no result
                log.exception("an observer failed at the end of the run")
        return [vcpu.result or _lost_result(vcpu) for vcpu in self.vcpus]

    def _stop_vcpus(self, reason: StopReason, patience: float | None = None) -> None:
        """Ask each live vCPU to stop until its thread ends (or ``patience`` runs out).

        Waits on the vCPU's own event, not ``Thread.join``: CPython 3.11 marks a thread
        stopped when Ctrl-C interrupts a join of it, although it still runs.
        """
        deadline = None if patience is None else time.monotonic() + patience
        for vcpu in self._started:
            # A stop request can race with the vCPU re-entering the guest: repeat it.
            while not vcpu.finished.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    return
                try:
                    vcpu.request_stop(reason)
                    vcpu.finished.wait(0.01)
                except KeyboardInterrupt:
                    if deadline is None:
                        raise  # the bounded stop in _run's finally takes over
                    # else: a second Ctrl-C while stopping; the first one is on its way up
            vcpu.join()

    def _threads_stopped(self) -> bool:
        return all(vcpu.finished.is_set() for vcpu in self._started)


def _checked_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be at least 0 seconds, not {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


def _lost_result(vcpu: Vcpu) -> VcpuResult:
    """A vCPU whose thread could not be stopped (or ended without a result)."""
    processor = vcpu.processor
    return VcpuResult(
        vcpuid=vcpu.vcpuid,
        reason=StopReason.ERROR,
        message="the vCPU did not stop when asked",
        state=copy.copy(vcpu.state),
        vmcs=vcpu.vmcs,
        debug_ring=vcpu.debug_ring.read(),
        exits=processor.exits if processor is not None else 0,
    )


def _stop_stranded() -> None:
    """At exit, stop vCPUs a run could not: unicorn must not run while RAM is unmapped."""
    for vm in _STRANDED:
        vm._stop_vcpus(StopReason.STOPPED, patience=STOP_PATIENCE)


_STRANDED: list[Vm] = []
atexit.register(_stop_stranded)


def _snapshots_of(vm: Vm) -> Callable[[str], str]:
    """What gdb's ``monitor snapshot FILE`` does (holding no reference to ``vm``)."""
    ref = weakref.ref(vm)

    def snapshot(path: str) -> str:
        target = ref()
        if target is None:
            raise ValueError("the Vm is gone")
        from pyflank.snapshot import save as save_snapshot  # noqa: PLC0415

        info = save_snapshot(target, path)
        return f"saved {info.path} ({info.size} bytes) in {info.seconds:.2f} s"

    return snapshot


def _close(backend: Backend, gdb: GdbStub | None) -> None:
    if gdb is not None:
        gdb.close()
    backend.close()


def _read(source: bytes | str | Path) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()
