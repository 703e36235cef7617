"""bfm: vmcall round trips through the VMM service, and start-up time (issue 4)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.registry import register
from pyflank.cli.bfm import run
from pyflank.cli.runtime import RuntimeDir


def _bfm(env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pyflank.cli.bfm", *args], env=env, check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def bench_bfm() -> dict[str, float | str]:
    with tempfile.TemporaryDirectory(prefix="pyflank-bench-") as tmp:
        rt = RuntimeDir(Path(tmp) / "run")
        env = {**os.environ, "PYFLANK_RUNTIME_DIR": str(rt.path)}
        try:
            startup = _bfm(env, "start")
            run(["vmcall", "string", "unformatted", "warm"], rt)
            count, begin = 0, time.perf_counter()
            while time.perf_counter() - begin < 2.0:
                run(["vmcall", "string", "unformatted", f"ping {count}"], rt)
                count += 1
            in_process = count / (time.perf_counter() - begin)
            cli = 10 / sum(_bfm(env, "vmcall", "string", "unformatted", "x") for _ in range(10))
        finally:
            _bfm(env, "stop")
    print(f"  bfm start -> VMM_RUNNING:                  {startup * 1000:8.0f} ms")
    print(f"  vmcall string round trips (client in-process): {in_process:8.0f} /s")
    print(f"  vmcall string round trips (a bfm process each): {cli:7.1f} /s")
    return {
        "bfm_start_to_running_ms": startup * 1000,
        "bfm_vmcall_string_round_trips_per_s": in_process,
        "bfm_cli_process_round_trips_per_s": cli,
    }


register("bfm: the VMM service on the software CPU", bench_bfm)
