"""Run the real bfm as a subprocess against a private runtime directory."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    code: int
    out: str
    err: str


class Bfm:
    def __init__(self, runtime: Path) -> None:
        self.runtime = runtime
        self.env = {**os.environ, "PYFLANK_RUNTIME_DIR": str(runtime)}

    def __call__(self, *args: str, timeout: float = 60) -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "pyflank.cli.bfm", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        return Result(done.returncode, done.stdout.strip(), done.stderr.strip())

    def fails(self, *args: str) -> str:
        """Assert a one-line reason on stderr and a non-zero exit; return the reason."""
        result = self(*args)
        assert result.code != 0, result
        assert result.err.startswith("bfm: "), result
        assert len(result.err.splitlines()) == 1, result.err
        return result.err
