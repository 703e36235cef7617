"""A directory of odd things for bfm to read (issue 11 defect 8): a FIFO, a directory,
/dev/zero, truncated and deep files, extensions that fail in every way."""

from __future__ import annotations

import os
from pathlib import Path

from elf_image import elf_image

SURROGATE = b"\xff\xfe".decode("utf-8", "surrogateescape")  # how argv carries non-UTF-8


def truncated_elf() -> bytes:
    """An ELF64 executable whose one PT_LOAD segment runs past the end of the file."""
    return elf_image([(0x100000, 0x100000, b"\x90" * 0x1000, 0x1000, 5)], 0x100000)[:0x90]


def make(root: Path) -> Path:
    """Populate ``root`` with the odd inputs; returns it."""
    os.mkfifo(root / "fifo")
    (root / "dir").mkdir()
    (root / "dir.py").mkdir()
    (root / "dir.modules").mkdir()
    (root / "empty").write_bytes(b"")
    (root / "deep.json").write_text("[" * 100_000)
    (root / "deep.modules").write_text('{"modules": ' + "[" * 100_000)
    (root / "nan.json").write_text('{"format": "pyflank-vmcs", "fields": NaN}')
    (root / "utf8.json").write_bytes(b"\xff\xfe{}")
    (root / "list.modules").write_text("[1, 2]")
    (root / "self.modules").write_text('{"modules": ["self.modules"]}')
    (root / "empty.modules").write_text('{"modules": []}')
    (root / "syntax.py").write_text("def broken(:\n")
    (root / "exits.py").write_text("raise SystemExit('an extension that exits')\n")
    (root / "badstr.py").write_text(
        "class E(Exception):\n    def __str__(self): raise ValueError\nraise E()\n"
    )
    (root / "nohandler.py").write_text("x = 1\n")
    (root / "two.py").write_text(
        "from pyflank.exit_handler import ExitHandlerIntelX64\n"
        "class A(ExitHandlerIntelX64): pass\nclass B(ExitHandlerIntelX64): pass\n"
    )
    (root / "bad.s").write_text("mov rax, \n frobnicate\n")
    (root / "latin1.s").write_bytes(b"; \xe9\nhlt\n")
    (root / "truncated.elf").write_bytes(truncated_elf())
    (root / "garbage.elf").write_bytes(b"\x7fELF" + os.urandom(60))
    (root / "hlt.s").write_text("hlt\n")
    (root / "big").write_bytes(b"x" * (32 * 4096 + 1))
    (root / "input").write_bytes(b"some input")
    return root


def odd_command_lines(root: Path) -> list[tuple[str, ...]]:
    """Command lines that must each fail with one line and a non-zero exit."""
    r = str(root)
    fifo, directory, zero = f"{r}/fifo", f"{r}/dir", "/dev/zero"
    lines: list[tuple[str, ...]] = [
        # the command line itself
        ("frobnicate",),
        ("",),
        (SURROGATE,),
        ("x" * 5000,),
        ("--frob",),
        ("--frob", "status"),
        ("-x",),
        ("--", "status", "extra"),
        ("--backend",),
        ("--backend", "qemu"),
        ("--backend", "", "start"),
        ("--cpuid", "x1", "status"),
        ("--cpuid", "-1", "vmcall"),
        ("--cpuid", "1" * 40, "vmcall"),
        ("--vcpus",),
        ("--vcpus", "0", "start"),
        ("--vcpus", "17", "start"),
        ("--vcpus", "1e3", "start"),
        ("--vcpuid", "z", "dump"),
        ("--cpuid", "1", "status"),
        ("-v", "-q", "status"),
        ("--version=1",),
        ("--help=yes",),
        ("status", "extra"),
        ("stop", "now"),
        ("unload", "x"),
        ("status", "--frob"),
        ("status", SURROGATE),
        ("start", "extra"),
        ("start", "--memory", "0"),
        ("start", "--memory", "1K"),
        ("start", "--memory", "-1"),
        ("start", "--memory", "12.5M"),
        ("start", "--memory", "lots"),
        ("start", "--memory", "4097K"),
        ("start", "--backend", SURROGATE),
        ("start", "--vcpus", ""),
        ("start", "--vcpus", "0x"),
        # load and quick
        ("load",),
        ("load", "a", "b"),
        ("load", ""),
        ("load", ":"),
        ("load", ":Name"),
        ("load", "."),
        ("load", ".."),
        ("load", directory),
        ("load", f"{r}/dir.py"),
        ("load", f"{r}/dir.modules"),
        ("load", fifo),
        ("load", zero),
        ("load", f"{r}/missing.py"),
        ("load", f"{r}/missing.modules"),
        ("load", f"{r}/deep.modules"),
        ("load", f"{r}/list.modules"),
        ("load", f"{r}/self.modules"),
        ("load", f"{r}/empty.modules"),
        ("load", f"{r}/syntax.py"),
        ("load", f"{r}/exits.py"),
        ("load", f"{r}/badstr.py"),
        ("load", f"{r}/nohandler.py"),
        ("load", f"{r}/two.py"),
        ("load", f"{r}/two.py:C"),
        ("load", "json"),
        ("load", "no_such_module_xyz"),
        ("load", "os:path"),
        ("load", "pyflank.exit_handler:DebugRing"),
        ("load", f"{r}/{SURROGATE}.py"),
        ("load", SURROGATE),
        ("load", "a" * 5000 + ".py"),
        ("quick",),
        ("quick", f"{r}/syntax.py"),
        ("quick", directory),
        ("quick", fifo),
        # vmcall: its arguments are checked before the VMM is asked
        ("vmcall",),
        ("vmcall", "teleport"),
        ("vmcall", "versions"),
        ("vmcall", "versions", "x"),
        ("vmcall", "versions", "1", "2"),
        ("vmcall", "versions", "-1"),
        ("vmcall", "versions", "1" * 30),
        ("vmcall", "event"),
        ("vmcall", "unittest", "a"),
        ("vmcall", "registers"),
        ("vmcall", "registers", *["1"] * 12),
        ("vmcall", "registers", "zz"),
        ("vmcall", "registers", "-1"),
        ("vmcall", "registers", "1" * 17),
        ("vmcall", "string"),
        ("vmcall", "string", "json"),
        ("vmcall", "string", "yaml", "x"),
        ("vmcall", "string", "json", "{bad"),
        ("vmcall", "string", "json", "[" * 100_000),
        ("vmcall", "string", "json", "NaN"),
        ("vmcall", "string", "json", '{"a": Infinity}'),
        ("vmcall", "string", "json", SURROGATE),
        ("vmcall", "string", "json", ""),
        ("vmcall", "string", "unformatted", ""),
        ("vmcall", "string", "unformatted", "x" * 200_000),
        ("vmcall", "data"),
        ("vmcall", "data", "unformatted", zero, f"{r}/out"),
        ("vmcall", "data", "unformatted", fifo, f"{r}/out"),
        ("vmcall", "data", "unformatted", directory, f"{r}/out"),
        ("vmcall", "data", "unformatted", f"{r}/missing", f"{r}/out"),
        ("vmcall", "data", "unformatted", f"{r}/empty", f"{r}/out"),
        ("vmcall", "data", "unformatted", f"{r}/big", f"{r}/out"),
        ("vmcall", "data", "binary", f"{r}/input", f"{r}/out"),
        ("vmcall", "--cpuid", "x", "versions", "1"),
        # with a valid request and no VMM: refused, one line
        ("vmcall", "versions", "1"),
        ("vmcall", "string", "unformatted", SURROGATE),
        ("vmcall", "data", "unformatted", f"{r}/input", fifo),
        ("dump",),
        ("dump", "extra"),
        ("dump", "--vcpuid", "-1"),
        # check
        ("check",),
        ("check", zero),
        ("check", fifo),
        ("check", directory),
        ("check", f"{r}/missing.json"),
        ("check", f"{r}/deep.json"),
        ("check", f"{r}/nan.json"),
        ("check", f"{r}/utf8.json"),
        ("check", f"{r}/empty"),
        ("check", "a", "b"),
        # run
        ("run",),
        ("run", f"{r}/missing.s"),
        ("run", directory),
        ("run", fifo),
        ("run", zero),
        ("run", f"{r}/empty"),
        ("run", f"{r}/bad.s"),
        ("run", f"{r}/latin1.s"),
        ("run", f"{r}/truncated.elf"),
        ("run", f"{r}/garbage.elf"),
        ("run", f"{r}/hlt.s", "--memory", "1M"),
        ("run", f"{r}/hlt.s", "--vcpus", "0"),
        ("run", f"{r}/hlt.s", "--timeout", "0"),
        ("run", f"{r}/hlt.s", "--timeout", "nan"),
        ("run", f"{r}/hlt.s", "--timeout", "-1"),
        ("run", f"{r}/hlt.s", "--format", "pe"),
        ("run", f"{r}/hlt.s", "--extension", f"{r}/syntax.py"),
        ("run", f"{r}/hlt.s", "--extension", fifo),
        ("run", f"{r}/hlt.s", "extra"),
        ("run", f"{r}/hlt.s", "--format", "elf"),
        ("run", f"{r}/input", "--format", "elf"),
    ]
    return lines
