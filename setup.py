"""The optional native accelerator, pyflank.native._accel; everything else is pyproject.toml.

``optional=True``: where no C compiler or Python headers exist, the build reports the failed
extension and the install goes on; pyflank then runs its pure-Python exit paths, and
``pyflank.native.status()`` gives the reason noted here (``_accel_build.txt``).
"""

import shutil
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = "src/pyflank/native"
NOTE = "_accel_build.txt"


def _diagnosis(compiler: list[str]) -> str:
    if not compiler or shutil.which(compiler[0]) is None:
        return f"no C compiler ({compiler[0] if compiler else 'none configured'})"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"no Python headers ({headers})"
    return "the C compiler failed"


class BuildAccelerator(build_ext):
    """build_ext that leaves a note next to the extension saying why it was not built."""

    def build_extension(self, ext: Extension) -> None:
        note = Path(self.get_ext_fullpath(ext.name)).parent / NOTE
        note.parent.mkdir(parents=True, exist_ok=True)
        try:
            super().build_extension(ext)
        except Exception as exc:
            compiler = list(getattr(self.compiler, "compiler_so", None) or [])
            note.write_text(f"{_diagnosis(compiler)}: {exc}\n")
            raise
        note.unlink(missing_ok=True)


setup(
    cmdclass={"build_ext": BuildAccelerator},
    ext_modules=[
        Extension(
            "pyflank.native._accel",
            sources=[f"{NATIVE}/accel.c", f"{NATIVE}/emu.c", f"{NATIVE}/kvm.c"],
            depends=[f"{NATIVE}/accel.h"],
            extra_compile_args=["-O2", "-std=gnu11", "-fno-strict-aliasing"],
            optional=True,
        )
    ],
)
