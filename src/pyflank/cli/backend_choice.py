"""What ``--backend auto`` means for bfm: KVM where this host runs the guest natively.

``Vm(backend="auto")`` stays the deterministic software CPU; a person starting a VMM
wants the fast backend when it is the real thing.  KVM is chosen only where the probe's
tiny guests show ring-0 code running natively: on a KVM that runs ring-0 code in its
instruction emulator (as nested ``kvm_pvm`` does), guests meet instructions it cannot
emulate, so the software CPU is the faithful choice there.  Either way bfm says which
backend it chose and why.  The answer is kept in the runtime directory until the host
reboots or its KVM module changes (the probe runs guests: about half a second).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyflank.cli.runtime import RuntimeDir, RuntimeDirError

if TYPE_CHECKING:
    from pyflank.backends.kvm.probe import KvmCapabilities

_KVM_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "emu" or "kvm"
    why: str = ""  # for auto: one line saying which backend and why; empty when named


def decide(caps: KvmCapabilities) -> BackendChoice:
    """The auto choice for a host whose KVM probe says ``caps``."""
    software = "backend auto: chose emu (the software CPU)"
    if not caps.usable:
        return BackendChoice("emu", f"{software}: {caps.reason}")
    nested = ", nested" if caps.host_is_guest else ""
    where = f"KVM ({caps.device}, module {caps.module}{nested})"
    if caps.cpl0_emulated is None:
        return BackendChoice("emu", f"{software}: {where} was not measured")
    if caps.cpl0_emulated:
        return BackendChoice(
            "emu",
            f"{software}: on this host's {where}, ring-0 guest code runs in KVM's "
            "instruction emulator, not natively",
        )
    return BackendChoice("kvm", f"backend auto: chose kvm: {where} runs ring-0 guest code natively")


def _host_key() -> str:
    """What the choice depends on: this boot, the KVM device and module loaded."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""  # no way to tell a reboot: do not keep the answer
    try:
        device = str(os.stat("/dev/kvm").st_rdev)
    except OSError:
        device = "none"
    modules = ",".join(m for m in _KVM_MODULES if Path("/sys/module", m).exists())
    return f"{boot}/{device}/{modules}"


def _probed() -> BackendChoice:
    from pyflank.backends.kvm.platform import measured_capabilities  # noqa: PLC0415 - slow

    return decide(measured_capabilities())


def choose_backend(requested: str, cache: RuntimeDir | None = None) -> BackendChoice:
    """``requested`` as a backend name; "auto" decided (kept in ``cache``'s directory)."""
    if requested != "auto":
        return BackendChoice(requested)
    key = _host_key()
    path = cache.backend_choice if cache is not None else None
    if cache is not None and path is not None and key:
        with contextlib.suppress(RuntimeDirError):
            kept = cache.read_record(path) if cache.exists() else None
            if kept and kept.get("key") == key and kept.get("name") in ("emu", "kvm"):
                return BackendChoice(str(kept["name"]), str(kept.get("why", "")))
    choice = _probed()
    if cache is not None and path is not None and key:
        with contextlib.suppress(RuntimeDirError, OSError):
            cache.write_record(path, {"key": key, "name": choice.name, "why": choice.why})
    return choice
