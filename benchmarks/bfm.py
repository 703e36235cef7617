"""bfm: vmcall round trips through the VMM service, and start-up time (issue 15 item 2).

The ``bfm`` processes run as an installed pyflank's do: with Python's bytecode cache
(``PYTHONDONTWRITEBYTECODE`` is dropped from their environment, and a warm-up run writes
the cache), so that what is timed is bfm, not the compiler.  Next to each figure stands
the floor that bounds it: Python's own start-up for a process per vmcall, the import of
the VMM for ``bfm start``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.registry import register
from pyflank.cli import client
from pyflank.cli.bfm import run
from pyflank.cli.manager import DEFAULT_EXTENSION
from pyflank.cli.runtime import RuntimeDir
from pyflank.cli.service_launch import ServiceLaunch
from pyflank.cli.service_process import read_record
from pyflank.cli.vmcall_command import request

_BFM_SCRIPT = Path(sys.executable).with_name("bfm")
_SERVICE_IMPORTS = "import pyflank.cli.service, pyflank.backends.emu"
_TIMED_IMPORTS = (
    f"import time; t = time.perf_counter(); {_SERVICE_IMPORTS}; print(time.perf_counter() - t)"
)


def _bfm_command() -> list[str]:
    """The ``bfm`` a user runs: the console script, or ``python -m`` without one."""
    if _BFM_SCRIPT.exists():
        return [str(_BFM_SCRIPT)]
    return [sys.executable, "-m", "pyflank.cli.bfm"]


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def _fastest(command: list[str], env: dict[str, str], runs: int) -> float:
    return min(_timed(command, env) for _ in range(runs))


def _import_seconds(env: dict[str, str], runs: int) -> float:
    """How long the service's imports take, measured inside a process (no start-up or
    exit in it: a process that imports the VMM spends a further ~30 ms tearing it down)."""
    command = [sys.executable, "-c", _TIMED_IMPORTS]
    return min(
        float(subprocess.run(command, env=env, check=True, capture_output=True).stdout)
        for _ in range(runs)
    )


def _context_switches(pid: int) -> int:
    """Every thread of process ``pid``: how often it has been switched out (it slept)."""
    total = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/status") as status:
            for line in status:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def _rate(call: object, seconds: float = 2.0) -> float:
    assert callable(call)
    count, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        call(count)
        count += 1
    return count / (time.perf_counter() - begin)


def _service_alone(rt: RuntimeDir, env: dict[str, str]) -> float:
    """From spawning the service to its first answer, without bfm around it."""
    begin = time.perf_counter()
    launch = ServiceLaunch(rt)
    launch.order(["--extension", DEFAULT_EXTENSION, "--backend", "emu"])
    ready = launch.wait_ready(60)
    seconds = time.perf_counter() - begin
    _timed([*_bfm_command(), "stop"], env)
    assert ready, "the service did not come up"
    return seconds


def bench_bfm() -> dict[str, float | str]:
    bfm = _bfm_command()
    with tempfile.TemporaryDirectory(prefix="pyflank-bench-") as tmp:
        rt = RuntimeDir(Path(tmp) / "run")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYFLANK_RUNTIME_DIR"] = rt.path
        python = [sys.executable, "-c"]
        _timed([*python, f"{_SERVICE_IMPORTS}, pyflank.cli.manager, pyflank.cli.parser"], env)
        try:
            first_start = _timed([*bfm, "start"], env)  # --backend auto probes KVM once
            starts = []
            for _ in range(5):  # the choice is kept: as every later start
                _timed([*bfm, "stop"], env)
                starts.append(_timed([*bfm, "start"], env))
            startup = statistics.median(starts)
            run(["vmcall", "string", "unformatted", "warm"], rt)
            in_process = _rate(lambda i: run(["vmcall", "string", "unformatted", f"ping {i}"], rt))
            record = read_record(rt)
            assert record is not None, "the service wrote no pid file"
            switched = _context_switches(record.pid)
            for i in range(500):
                run(["vmcall", "string", "unformatted", f"count {i}"], rt)
            switches = (_context_switches(record.pid) - switched) / 500
            message, _ = request(["string", "unformatted", "ping"])
            api = _rate(
                lambda i: client.vmcall(rt, 0, message.registers, message.data, message.out_size)
            )
            vmcall = [*bfm, "vmcall", "string", "unformatted", "x"]
            _timed(vmcall, env)
            per_process = 20 / sum(_timed(vmcall, env) for _ in range(20))
        finally:
            _timed([*bfm, "stop"], env)
        alone = [_service_alone(rt, env) for _ in range(5)]  # reads the warm cache
        floors = {
            "the service alone: spawned -> serving (median)": statistics.median(alone),
            "the service alone: spawned -> serving (fastest)": min(alone),
            f"  of it, '{_SERVICE_IMPORTS}'": _import_seconds(env, 5),
            "python -c pass": _fastest([*python, "pass"], env, 10),
            "python -S -c pass": _fastest([sys.executable, "-S", "-c", "pass"], env, 10),
            "python -c 'import pyflank.cli.bfm'": _fastest(
                [*python, "import pyflank.cli.bfm"], env, 10
            ),
        }
    print(f"  bfm start -> VMM_RUNNING (median of 5):          {startup * 1000:8.0f} ms")
    print(f"    the fastest of them:                           {min(starts) * 1000:8.0f} ms")
    print(f"    the first start (--backend auto probes KVM):   {first_start * 1000:8.0f} ms")
    print(f"  vmcall string round trips (client in-process):   {in_process:8.0f} /s")
    print(f"    through pyflank.cli.client.vmcall:             {api:8.0f} /s")
    print(f"    context switches of the service per vmcall:    {switches:8.1f}")
    print(f"  vmcall string round trips (a bfm process each):  {per_process:8.1f} /s")
    print(f"    ({1000 / per_process:.1f} ms a process)")
    print("  floors (the fastest of several runs, unless marked):")
    for name, seconds in floors.items():
        print(f"    {name:66} {seconds * 1000:6.1f} ms")
    return {
        "bfm_start_to_running_ms": startup * 1000,
        "bfm_start_to_running_fastest_ms": min(starts) * 1000,
        "bfm_first_start_to_running_ms": first_start * 1000,
        "bfm_vmcall_string_round_trips_per_s": in_process,
        "bfm_client_api_round_trips_per_s": api,
        "bfm_service_context_switches_per_vmcall": switches,
        "bfm_cli_process_round_trips_per_s": per_process,
        **{f"floor_ms: {name.strip()}": seconds * 1000 for name, seconds in floors.items()},
    }


register("bfm: the VMM service on the software CPU", bench_bfm)
