"""The kernel arguments the platform itself requires, appended to what the user passes.

A user passes what they would pass to QEMU (``console=ttyS0``); the platform adds what
follows from its hardware (firecracker adds its own boot arguments the same way): no
ACPI tables, no APICs, no PCI, a known TSC rate.  An argument the user gave themselves
is left as they gave it.  ``PLATFORM_ARGUMENTS`` is the one table of them, with why.
"""

from __future__ import annotations

from typing import Final

from pyflank.intel_x64.cpu import TSC_MHZ

DEFAULT_TSC_KHZ: Final = TSC_MHZ * 1000
DEFAULT_HZ: Final = 250  # Debian's CONFIG_HZ

# (argument, value or None for a flag, why the platform needs it); "{tsc_khz}" and
# "{lpj}" are filled in from the platform's TSC rate.
PLATFORM_ARGUMENTS: Final = (
    ("acpi", "off", "the platform has no ACPI tables"),
    ("noapic", None, "no IOAPIC: interrupts come from the 8259 pair"),
    ("nolapic", None, "no local APIC: the PIT is the timer"),
    ("nosmp", None, "one vCPU: without a local APIC there is no way to start others"),
    ("pci", "off", "no PCI host bridge (ports 0xCF8/0xCFC are unclaimed)"),
    ("tsc_early_khz", "{tsc_khz}", "the TSC rate is the platform's: no PIT calibration"),
    ("tsc", "reliable", "virtual time never drifts: no clocksource watchdog"),
    ("lpj", "{lpj}", "TSC cycles per jiffy: no delay-loop calibration"),
    ("io_delay", "none", "no port 0x80 delays: virtual devices need no settling time"),
    ("panic", "-1", "a panic ends the run at once (reboot) instead of hanging"),
    ("noreplace-smp", None,
     "keep the LOCK prefixes: one vCPU would patch each out with text_poke, two address-"
     "space switches apiece"),
    ("cryptomgr.notests", None,
     "the kernel's crypto self-tests (8192-bit DH, RSA) test the kernel, not the VMM, "
     "and are half a software-CPU boot"),
)  # fmt: skip


def _key(argument: str) -> str:
    return argument.split("=", 1)[0]


def platform_arguments(tsc_khz: int = DEFAULT_TSC_KHZ, hz: int = DEFAULT_HZ) -> list[str]:
    values = {"tsc_khz": str(tsc_khz), "lpj": str(tsc_khz * 1000 // hz)}
    return [
        name if value is None else f"{name}={value.format(**values)}"
        for name, value, _ in PLATFORM_ARGUMENTS
    ]


def compose(user: str, tsc_khz: int = DEFAULT_TSC_KHZ, hz: int = DEFAULT_HZ) -> str:
    """``user``'s arguments, then the platform's ones the user did not give (before any
    ``--``, which starts init's own arguments)."""
    kernel_part, separator, init_part = f" {user.strip()} ".partition(" -- ")
    given = {_key(a) for a in kernel_part.split()}
    added = [a for a in platform_arguments(tsc_khz, hz) if _key(a) not in given]
    words = kernel_part.split() + added
    if separator:
        words += ["--", *init_part.split()]
    return " ".join(words)
