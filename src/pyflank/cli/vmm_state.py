"""The VMM's states as bfm names them, and the lines that say why a VMM is corrupt.

``bfm status`` prints them from the service's answer to ``ping``; the service itself uses
them to refuse a vmcall while a vCPU has stopped, in the same words.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class VmmStatus(Enum):
    UNLOADED = "VMM_UNLOADED"
    LOADED = "VMM_LOADED"
    RUNNING = "VMM_RUNNING"
    CORRUPT = "VMM_CORRUPT"


def vcpu_lines(vcpus: Any, everyone: bool) -> list[str]:
    """A line per stopped vCPU of a ``ping`` answer's ``vcpus`` (every one if ``everyone``)."""
    lines = []
    for vcpu in vcpus if isinstance(vcpus, list) else []:
        if not isinstance(vcpu, dict):
            continue
        state = vcpu.get("state")
        if state == "running" and not everyone:
            continue
        line = f"vcpu {vcpu.get('vcpuid')}: {state}"
        if state != "running":
            line += f" ({vcpu.get('reason')})"
            if vcpu.get("message"):
                line += f": {vcpu.get('message')}"
        lines.append(line)
    return lines


def not_running(state: VmmStatus, reason: str) -> str:
    """Why a vmcall cannot be made now."""
    if reason:
        return f"the VMM is not running ({state.value}: {reason})"
    return f"the VMM is not running ({state.value}): run 'bfm start' first"
