"""The optional native accelerator, pyflank.native._accel; everything else is pyproject.toml.

``optional=True``: where no C compiler or Python headers exist, the build reports the failed
extension and the install goes on; pyflank then runs its pure-Python exit paths, and
``pyflank.native.status()`` gives the reason noted here (``_accel_build.txt``).
"""

import re
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


def _brief(exc: Exception) -> str:
    """The error, with a failed command named by its program instead of its whole line."""
    return re.sub(r"Command '\['([^']*)'[^\]]*\]'", r"'\1'", str(exc).strip())


class BuildAccelerator(build_ext):
    """build_ext that leaves a note next to the extension saying why it was not built."""

    def _source_package(self, ext: Extension) -> Path | None:
        """The package directory in the source tree that an editable install copies the
        extension into (only the extension: the note is written there by hand), else None."""
        if not getattr(self, "editable_mode", False):
            return None
        build_py = self.get_finalized_command("build_py")
        return Path(build_py.get_package_dir(ext.name.rpartition(".")[0]))

    def build_extension(self, ext: Extension) -> None:
        built = Path(self.get_ext_fullpath(ext.name))
        source = self._source_package(ext)
        notes = [built.parent / NOTE] + ([source / NOTE] if source else [])
        try:
            super().build_extension(ext)
        except Exception as exc:
            compiler = list(getattr(self.compiler, "compiler_so", None) or [])
            for note in notes:
                note.parent.mkdir(parents=True, exist_ok=True)
                note.write_text(f"{_diagnosis(compiler)}: {_brief(exc)}\n")
            if source:  # an extension of an earlier build would load and not match
                (source / built.name).unlink(missing_ok=True)
            raise
        for note in notes:
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
