"""Debian packages through the system's package manager: resolve, download, unpack.

Only ordinary client calls: ``apt-cache show`` to resolve a package and its version,
``apt-get update`` once when the package lists know nothing yet (root only),
``apt-get download`` (no root needed) and ``dpkg-deb --fsys-tarfile`` streamed through
Python's tarfile so that only the wanted members are written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path


class PackagesUnavailable(RuntimeError):
    """The package manager cannot provide a package here; the message says why."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    depends: tuple[str, ...]


_FIELD = re.compile(r"^(Package|Version|Depends): (.*)$", re.MULTILINE)


class Apt:
    def __init__(self) -> None:
        missing = [tool for tool in ("apt-cache", "apt-get", "dpkg-deb") if not shutil.which(tool)]
        if missing:
            raise PackagesUnavailable(
                f"no {', '.join(missing)} on this system: Debian's packages cannot be fetched"
            )
        self._updated = False

    def _run(self, *command: str, cwd: Path | None = None) -> str:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
        if result.returncode:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["failed"]
            raise PackagesUnavailable(f"{' '.join(command[:2])}: {detail[0]}")
        return result.stdout

    def show(self, name: str) -> Package:
        """The candidate version of ``name``; runs ``apt-get update`` once if the lists
        do not know it (and we may)."""
        try:
            text = self._run("apt-cache", "show", "--no-all-versions", name)
        except PackagesUnavailable:
            text = ""
        if not text.strip():
            if self._updated or os.geteuid() != 0:
                raise PackagesUnavailable(
                    f"the package lists have no {name} (run 'apt-get update' as root)"
                )
            self._run("apt-get", "update")
            self._updated = True
            return self.show(name)
        fields = dict(_FIELD.findall(text))
        depends = tuple(d.split()[0] for d in fields.get("Depends", "").split(",") if d.strip())
        return Package(fields.get("Package", name), fields["Version"], depends)

    def download(self, package: Package, directory: Path) -> Path:
        self._run("apt-get", "download", f"{package.name}={package.version}", cwd=directory)
        debs = sorted(directory.glob(f"{package.name}_*.deb"))
        if not debs:
            raise PackagesUnavailable(f"apt-get download {package.name} left no .deb")
        return debs[-1]

    def extract(self, deb: Path, members: dict[str, Path]) -> None:
        """Write the package's files ``members`` (path inside, as ``./boot/...``) to the
        paths given; ``PackagesUnavailable`` if one is missing."""
        wanted = dict(members)
        with subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE
        ) as process:
            assert process.stdout is not None
            with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
                for member in archive:
                    target = wanted.pop(member.name, None)
                    if target is None or not member.isfile():
                        continue
                    source = archive.extractfile(member)
                    assert source is not None
                    _write_atomically(target, source.read())
        if wanted:
            raise PackagesUnavailable(f"{deb.name} has no {', '.join(sorted(wanted))}")

    def fetch(self, package: Package, members: dict[str, Path]) -> None:
        with tempfile.TemporaryDirectory(prefix="pyflank-apt-") as scratch:
            self.extract(self.download(package, Path(scratch)), members)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
