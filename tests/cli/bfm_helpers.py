"""Run the real bfm as a subprocess against a private runtime directory."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    code: int
    out: str
    err: str


class Bfm:
    def __init__(self, runtime: Path, env: dict[str, str] | None = None) -> None:
        self.runtime = runtime
        self.env = env if env is not None else {**os.environ, "PYFLANK_RUNTIME_DIR": str(runtime)}

    def __call__(self, *args: str | bytes, timeout: float = 60) -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "pyflank.cli.bfm", *args],
            env=self.env, capture_output=True, timeout=timeout,
        )  # fmt: skip
        out = done.stdout.decode(errors="replace").strip()
        return Result(done.returncode, out, done.stderr.decode(errors="replace").strip())

    def fails(self, *args: str | bytes, timeout: float = 60) -> str:
        """Assert a one-line reason on stderr and a non-zero exit; return the reason."""
        result = self(*args, timeout=timeout)
        assert result.code != 0, result
        assert result.err.startswith("bfm: "), result
        assert len(result.err.splitlines()) == 1, result.err
        return result.err

    def service(
        self, *options: str, preexec: Callable[[], None] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start the VMM service directly (with options bfm start does not expose) and
        wait until bfm sees it running."""
        self.runtime.mkdir(mode=0o700, exist_ok=True)
        process = subprocess.Popen(
            [sys.executable, "-m", "pyflank.cli.service", "--runtime-dir", str(self.runtime),
             "--extension", "pyflank.exit_handler.exit_handler_intel_x64:ExitHandlerIntelX64",
             "--backend", "emu", *options],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.runtime / "vmm.log", "wb"), preexec_fn=preexec,  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while self("status").out != "VMM_RUNNING":
            assert process.poll() is None, (self.runtime / "vmm.log").read_text()
            assert time.monotonic() < deadline, "the service did not come up"
            time.sleep(0.05)
        return process
