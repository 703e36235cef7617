"""VMLAUNCH's own checks (SDM 26.2), before any guest state is looked at."""

from __future__ import annotations

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import checks, instruction_errors
from pyflank.intel_x64 import fields as f


def refused_launch(handler: ExitHandlerIntelX64) -> str | None:
    """Run VMLAUNCH's control and host-state checks on the handler's VMCS.

    On a failure the VM-instruction error field is set, the findings go to the vCPU's
    debug ring, and the message to stop the vCPU with is returned; the guest never runs.
    """
    failure = checks.launch_failure(handler.m_vmcs, handler.m_cpu)
    if failure is None:
        return None
    error, violations = failure
    handler.m_vmcs.processor_write(f.VM_INSTRUCTION_ERROR, error)
    headline = (
        f"VMLAUNCH failed: VM-instruction error {error} ({instruction_errors.description(error)})"
    )
    handler.log("\n".join([headline, *(f"- {v}" for v in violations)]))
    return f"{headline}: {violations[0]}" + (
        f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
    )
