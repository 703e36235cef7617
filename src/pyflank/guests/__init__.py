"""The guest SDK and pyflank's own guest programs, shipped as package data.

- ``pyflank.inc`` (assembly, keystone's Intel syntax) with the generated ``pyflank_abi.inc``;
  ``Vm.load_asm`` resolves ``.include "pyflank.inc"`` from here.
- ``pyflank.h`` (C, generated) and ``pyflank.ld`` (the linker script) for freestanding C
  guests: ``python -m pyflank.guests cflags`` prints the gcc flags that use them.
- ``agent.s`` (the ``bfm`` guest agent), ``demo.s`` (``python -m pyflank.demo``) and
  ``versions_loop.s`` (``pyflank.testing.versions_loop``).

Everything is read with ``importlib.resources``, so an installed wheel works like a checkout.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

# What matters for a C guest on pyflank's direct 64-bit boot, on both backends:
GCC_FLAGS = (
    "-O2",
    "-ffreestanding",  # no hosted C library behind the compiler's assumptions
    "-nostdlib",  # and none linked: the guest brings its own (PYFLANK_DEFINE_RUNTIME)
    "-static",
    "-fno-pic",
    "-no-pie",  # linked at the load address, not relocated
    "-mgeneral-regs-only",  # no SSE/x87: KVM's instruction emulator stops at them (kvm_pvm)
    "-mno-red-zone",  # an exception or interrupt taken on the guest stack would clobber it
    "-fno-stack-protector",  # no thread pointer (FS base 0) to hold the canary
    "-fcf-protection=none",  # no ENDBR64 for emulators that do not know it
    "-fno-asynchronous-unwind-tables",
    "-Wl,--build-id=none",  # no note section for the linker script to place
)


def files() -> Traversable:
    """The SDK directory as an ``importlib.resources`` traversable."""
    return resources.files(__name__)


def read(name: str) -> str:
    """The text of one SDK file (``read("agent.s")``)."""
    return files().joinpath(name).read_text(encoding="utf-8")


def directory() -> Path:
    """The SDK directory on the file system, for a compiler's ``-I`` and ``-T``.

    ``OSError`` when pyflank is imported from an archive that has no directory to name.
    """
    path = Path(str(files()))
    if not (path / "pyflank.h").is_file():
        raise OSError(f"the guest SDK is not on the file system here ({path})")
    return path


def gcc_command(sources: list[str], output: str, cc: str = "gcc") -> list[str]:
    """The command line that builds a freestanding C guest ELF for ``Vm.load_elf``."""
    sdk = directory()
    return [cc, *GCC_FLAGS, f"-I{sdk}", "-T", str(sdk / "pyflank.ld"), "-o", output, *sources]
