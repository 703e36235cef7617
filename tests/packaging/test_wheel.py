"""The built wheel works exactly like the checkout: installed into a fresh virtual environment
and run from a directory outside the checkout, nothing reads the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# What a source distribution carries: enough to build the wheel away from the checkout.
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "src")


@dataclass
class Installed:
    """A fresh environment with only the wheel (and its dependencies) installed."""

    python: Path
    workdir: Path  # outside the checkout
    env: dict[str, str]

    def run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(a) for a in args], cwd=self.workdir, env=self.env,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        return done

    def python_code(self, code: str) -> str:
        return self.run(self.python, "-c", code).stdout

    def bfm(self, *args: str) -> str:
        return self.run(self.python.parent / "bfm", *args).stdout.strip()


def _pip(python: Path | str, *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        text = done.stdout + done.stderr
        if "No matching distribution" in text or "Could not fetch" in text:
            pytest.skip(f"the package index cannot be reached: {text.strip().splitlines()[-1]}")
        pytest.fail(f"pip {' '.join(args)} failed:\n{text}")
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    for junk in source.glob("src/*.egg-info"):
        shutil.rmtree(junk)
    wheels = base / "dist"
    log = _pip(sys.executable, "wheel", "--no-deps", "--verbose", "-w", str(wheels), str(source))
    # setuptools' deprecation warnings (the license table, license classifiers) are gone.
    assert "DeprecationWarning" not in log and "BuildBackendWarning" not in log, log
    [wheel] = wheels.glob("pyflank-*.whl")
    venv.EnvBuilder(with_pip=True).create(base / "venv")
    python = base / "venv" / "bin" / "python"
    _pip(python, "install", "--quiet", str(wheel))
    shutil.rmtree(source)  # nothing may find its way back to a source tree
    workdir = base / "work"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYFLANK_RUNTIME_DIR"] = str(base / "run")
    yield Installed(python, workdir, env)
    subprocess.run([python.parent / "bfm", "stop"], env=env, capture_output=True, check=False)


def test_pyflank_comes_from_the_wheel(installed: Installed) -> None:
    where = installed.python_code(
        "import pyflank, pyflank.guests as g\n"
        "from pyflank import ExitHandlerIntelX64, Vm\n"
        "print(pyflank.__file__); print(g.directory())"
    )
    assert all("site-packages" in line for line in where.splitlines()), where
    assert str(ROOT) not in where


def test_bfm_start_every_vmcall_stop(installed: Installed, tmp_path: Path) -> None:
    data = tmp_path / "in.bin"
    data.write_bytes(bytes(range(64)))
    out = tmp_path / "out.bin"
    assert "VMM_RUNNING" in installed.bfm("start") + installed.bfm("status")
    try:
        assert installed.bfm("vmcall", "versions", "0") == "VMCALL_VERSION_PROTOCOL: 1.0.0"
        assert "r04: 0x0000000000000003" in installed.bfm("vmcall", "registers", "1", "2", "3")
        hello = installed.bfm("vmcall", "string", "unformatted", "hello")
        assert hello == "received from vmm: hello"
        assert '"a": 1' in installed.bfm("vmcall", "string", "json", '{"a": 1}')
        installed.bfm("vmcall", "data", "unformatted", str(data), str(out))
        assert out.read_bytes() == data.read_bytes()
        assert installed.bfm("vmcall", "event", "7") == "success"
        assert installed.bfm("vmcall", "unittest", "1") == "vmm unittest 1: passed"
    finally:
        installed.bfm("stop")
    assert installed.bfm("status") != "VMM_RUNNING"


def test_demo(installed: Installed) -> None:
    out = installed.run(installed.python, "-m", "pyflank.demo", "--classic", timeout=300).stdout
    assert "vCPU 0 stopped: promoted" in out
    assert "$ bfm stop" in out


def test_the_demo_boots_linux_from_the_wheel(installed: Installed, linux_assets: object) -> None:
    out = installed.run(installed.python, "-m", "pyflank.demo", timeout=300).stdout
    assert "pyflank-init: uptime" in out
    assert "power off after" in out


def test_load_asm_with_the_sdk_include(installed: Installed) -> None:
    out = installed.python_code(
        "from pyflank import Vm\n"
        "vm = Vm()\n"
        'vm.load_asm(\'.include "pyflank.inc"\\n PYFLANK_INIT\\n VMCALL_VERSIONS 0\\n'
        ' PUTS text, 3\\n PYFLANK_HALT\\ntext: .ascii "ok\\\\n"\\n PYFLANK_RUNTIME\\n\')\n'
        "[r] = vm.run()\n"
        "print(r.reason.name, r.state.rdx, r.state.rbx, vm.serial_output)"
    )
    assert out.split() == ["GUEST_HLT", "0", "1", "b'ok\\n'"]


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example(installed: Installed, example: str) -> None:
    """Each example as a user runs it, from a copy of examples/ (the C one needs gcc)."""
    if example.startswith("c_") and shutil.which("gcc") is None:
        pytest.skip("no gcc on this machine")
    copy = installed.workdir / "examples"
    if not copy.exists():
        shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    installed.run(installed.python, copy / example)
