"""A freestanding C guest (c_guest/json_guest.c) that sends JSON commands to the VMM over
vmcalls, built with the system's gcc against the guest SDK and run under JsonCommands.

    python examples/c_json_guest.py [emu|kvm]
"""

import subprocess
import sys
import tempfile
from pathlib import Path

from json_commands import JsonCommands

from pyflank import VcpuResult, Vm
from pyflank.guests import gcc_command

SOURCE = Path(__file__).with_name("c_guest") / "json_guest.c"


def build(output: Path) -> Path:
    """Compile and link the guest into an ELF that ``Vm.load_elf`` loads."""
    subprocess.run(gcc_command([str(SOURCE)], str(output)), check=True)
    return output


def run(backend: str = "emu") -> tuple[VcpuResult, str]:
    with tempfile.TemporaryDirectory() as tmp:
        vm = Vm(JsonCommands, backend=backend)
        vm.load_elf(build(Path(tmp) / "json_guest.elf"))
        [result] = vm.run(timeout=20)
    return result, vm.serial_output.decode(errors="replace")


if __name__ == "__main__":
    result, console = run(*sys.argv[1:])
    print(console, end="")
    print(f"vCPU 0 stopped: {result.reason.value} ({result.message})")
    sys.exit(0 if result.reason.name == "GUEST_HLT" else 1)
