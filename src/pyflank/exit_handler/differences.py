"""Where pyflank's exit handler deliberately differs from Bareflank 1.1's, and why.

Everywhere else the seed's members behave as Bareflank v1.1.0's
exit_handler_intel_x64.cpp did, down to the debug-ring text.  The README's table
of differences is rendered from ``DIFFERENCES`` (a test keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pyflank.intel_x64.exit_reasons import ExitReason, description

# The basic exit reasons Bareflank 1.1's basic_exit_reason::description() named (it
# said "unknown" for every other number).
BAREFLANK_1_1_EXIT_REASONS: Final[frozenset[int]] = frozenset(range(65)) - {35, 38, 42, 60, 62}


@dataclass(frozen=True)
class Difference:
    """One behaviour of a seed member that is not Bareflank 1.1's."""

    member: str
    bareflank: str
    pyflank: str
    why: str


def _newer_reasons() -> str:
    newer = sorted(r for r in ExitReason if r not in BAREFLANK_1_1_EXIT_REASONS)
    return ", ".join(f"{int(r)} `{description(r)}`" for r in newer)


DIFFERENCES: Final[tuple[Difference, ...]] = (
    Difference(
        "`dispatch()`",
        "the exit stub around `dispatch()` caught a handler's exception with "
        "`guard_exceptions` (a banner and the message), then called `halt()`",
        "`dispatch()` itself catches any exception (`SystemExit` and `KeyboardInterrupt` "
        "too, one whose `__str__` raises, with the debug ring gone), logs `the exit handler "
        "raised <type>: <message> in <handler> (<file>:<line>)` and the traceback, and halts; "
        "the vCPU stops as `handler error` with that line",
        "the same outcome (that vCPU halts), also when `dispatch()` is called directly, "
        "as tests do; a vCPU thread never receives a real Ctrl-C, so one there is the "
        "extension's, and the stop says what failed where",
    ),
    Difference(
        "`dispatch()` / `handle_exit()`",
        "`handle_exit()` ended with `m_vmcs->resume()`; an override that did not resume "
        "returned to the exit stub, which halted",
        "`dispatch()` resumes once `handle_exit()` returns, unless the handler halted or promoted",
        "an override of `handle_exit()` (one method per reason, hvpp-style) need not resume itself",
    ),
    Difference(
        "debug-ring text of every member",
        "each line went through `bferror`/`bfdebug`: a coloured `ERROR: `/`DEBUG: ` prefix",
        "the bare lines; the level goes to Python `logging` (logger `pyflank`)",
        "terminal colour codes do not belong in a log buffer; logging carries the level",
    ),
    Difference(
        "`unimplemented_handler()`",
        "the eight exit-information lines",
        "the same eight lines, then `- interruption: ...` decoded when the exit "
        "interruption information is valid",
        "the vector and type without a trip to the SDM; no line of 1.1 changes",
    ),
    Difference(
        "`unimplemented_handler()` on a VM-entry failure",
        "`vmcs::check::all()` stopped at the first failed check and printed its message, "
        "then `vmcs::debug::dump()`",
        "every violated rule, each with its check id and SDM section, then pyflank's dump",
        "all broken rules at once, each one named and located in the SDM",
    ),
    Difference(
        "exit reason string",
        "`unknown` for every reason newer than its table",
        f"names the reasons later SDM editions define: {_newer_reasons()}; `unknown` "
        "stays for numbers the SDM defines no reason for",
        "the SDM names them",
    ),
    Difference(
        "`handle_vmcall()`",
        "handlers saw `r00` and `r01` as 0, and for EVENT only `r02`",
        "handlers see `r00` (the opcode), `r01` (the magic number) and every slot; what "
        "is written back is the same",
        "a handler can tell which call it serves; the guest sees no difference",
    ),
    Difference(
        "`handle_vmcall()` failures",
        "a wrong magic number failed silently; an exception printed `guard_exceptions`' "
        "banner and the C++ message (gsl precondition text for DATA)",
        "one line: `vmcall failed: <exception>: <reason>`",
        "the C++ texts name source lines that do not exist here; one line per failure",
    ),
    Difference(
        "`handle_vmcall_data()`, `reply_with_string()`, `reply_with_json()`",
        "a reply longer than the output buffer was copied past its end",
        "`BF_VMCALL_FAILURE` and nothing written; both buffers are mapped through the "
        "guest's page tables (CR0.WP, EFER.NXE) before anything is read or written",
        "a bad vmcall touches no memory outside its buffers",
    ),
    Difference(
        "`handle_vmcall_data_string_unformatted()`, `handle_vmcall_data_string_json()`",
        "filled an out-parameter (`ostr`, `ojson`)",
        "return the reply",
        "Python strings cannot be out-parameters",
    ),
    Difference(
        "JSON numbers (`handle_vmcall_data()`)",
        "its trimmed nlohmann::json 2.0.5 had no floating point: `1.5` became `1`, and an "
        "integer beyond 64 bits failed the vmcall",
        "numbers stay what the JSON says (floats, integers of any size)",
        "silently truncating a guest's number corrupts its data",
    ),
    Difference(
        "`reply_with_json()` of a NaN or an infinite float",
        "could not arise (no floating point)",
        "`BF_VMCALL_FAILURE`, nothing written",
        "standard JSON has no NaN or Infinity: the guest would get text no JSON parser takes",
    ),
    Difference(
        "`handle_rdmsr()`, `handle_wrmsr()` of an MSR the CPU lacks",
        "the VMM's own RDMSR/WRMSR faulted in VMX root operation (the core froze)",
        "`#GP(0)` is injected into the guest, RIP not advanced",
        "what the hardware does for the guest; a guest can never crash the VMM",
    ),
    Difference(
        "`handle_wrmsr()` of a value the MSR refuses",
        "a VMCS-backed MSR (e.g. a non-canonical IA32_SYSENTER_ESP) took the value and "
        "the next VM entry failed, halting the vCPU",
        "`#GP(0)` in the guest and the VMCS unchanged (rules: `intel_x64/msrs.py`)",
        "what WRMSR does on hardware",
    ),
    Difference(
        "`handle_wrmsr()` of 0x31, 0x39, 0x1AE, 0x1AF, 0x602",
        "read as 0 (its CPU-Z quirk), but written to the hardware",
        "read as 0 and writes ignored",
        "a probe of these MSRs must not fault either way",
    ),
    Difference(
        "`handle_cpuid()`",
        "the physical CPU's answer, unchanged",
        "the CPU model's answer with CPUID.1:ECX[31] set, and leaves 0x40000000-0x40000001 "
        "(signature `PyFlank`, how to reach the VMM)",
        "a guest can find the VMM; the software CPU runs a model, not the host",
    ),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def differences_table() -> str:
    """``DIFFERENCES`` as the README's Markdown table."""
    lines = ["| member | Bareflank 1.1 | pyflank | why |", "|---|---|---|---|"]
    for d in DIFFERENCES:
        cells = (d.member, d.bareflank, d.pyflank, d.why)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)
