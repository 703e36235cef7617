"""Debian's kernel and busybox, and the initramfs built from them, cached with versions.

    python -m pyflank.platform.linux.assets [--flavour cloud|generic|all] [--refresh]

``ensure()`` returns the cached files, fetching what is missing with the system's
package manager (``debian.Apt``): the kernel package ``linux-image-cloud-amd64`` (or
``-amd64``) resolved to its versioned package, its ``vmlinuz`` (a bzImage), ``config``
and ``System.map`` (Debian's is a placeholder: the real one is in the -dbg package), and
``busybox-static``; ``vmlinux()`` extracts the ELF kernel from the bzImage for the PVH
entry.  Files live under ``$XDG_CACHE_HOME/pyflank/linux`` (default
``~/.cache/pyflank/linux``); ``manifest.json`` there records each package's version and
each file's SHA-256, and what is cached is used without asking the package manager
again (``--refresh`` asks for the newest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pyflank.platform.linux import initramfs
from pyflank.platform.linux.debian import Apt, Package, PackagesUnavailable
from pyflank.platform.linux.payload import extract_vmlinux

FLAVOURS: Final = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
BUSYBOX_PACKAGE: Final = "busybox-static"
MANIFEST: Final = "manifest.json"


class AssetsUnavailable(RuntimeError):
    """No kernel can be had here (the reason is the message)."""


@dataclass(frozen=True)
class Kernel:
    flavour: str
    package: str
    version: str
    release: str  # what uname -r will say
    bzimage: Path
    config: Path
    system_map: Path


@dataclass(frozen=True)
class LinuxAssets:
    kernel: Kernel
    initramfs: Path
    busybox_version: str
    manifest: Path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyflank" / "linux"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Cache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / MANIFEST
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}

    def valid(self, key: str) -> dict[str, Any] | None:
        """The entry ``key`` when every file it names is there with its recorded hash."""
        entry = self.data.get(key)
        if not isinstance(entry, dict):
            return None
        for name, digest in entry.get("files", {}).items():
            path = self.root / name
            if not path.is_file() or _sha256(path) != digest:
                return None
        return entry

    def record(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry``, its list of file names becoming names with their hashes."""
        entry["files"] = {name: _sha256(self.root / name) for name in entry["files"]}
        self.data[key] = entry
        partial = self.path.with_name(MANIFEST + ".partial")
        partial.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        partial.replace(self.path)


class _Fetcher:
    def __init__(self, cache: _Cache, refresh: bool, apt: Apt | None) -> None:
        self.cache = cache
        self.refresh = refresh
        self._apt = apt

    @property
    def apt(self) -> Apt:
        if self._apt is None:
            try:
                self._apt = Apt()
            except PackagesUnavailable as exc:
                raise AssetsUnavailable(str(exc)) from exc
        return self._apt

    def package(self, name: str, members: dict[str, str], key: str) -> dict[str, Any]:
        """Cached files of ``name`` (members: path in the package -> cached file name)."""
        entry = None if self.refresh else self.cache.valid(key)
        if entry is not None:
            return entry
        try:
            package = self.apt.show(name)
            self.apt.fetch(package, {m: self.cache.root / f for m, f in members.items()})
        except PackagesUnavailable as exc:
            raise AssetsUnavailable(str(exc)) from exc
        entry = {"package": package.name, "version": package.version}
        entry["files"] = list(members.values())
        self.cache.record(key, entry)
        return entry

    def kernel(self, flavour: str) -> Kernel:
        if flavour not in FLAVOURS:
            raise ValueError(f"kernel flavour {flavour!r}: choose one of {', '.join(FLAVOURS)}")
        key = f"kernel-{flavour}"
        entry = None if self.refresh else self.cache.valid(key)
        if entry is None:
            image = self._versioned_image(FLAVOURS[flavour])
            release = image.name.removeprefix("linux-image-")
            members = {
                f"./boot/vmlinuz-{release}": f"vmlinuz-{release}",
                f"./boot/config-{release}": f"config-{release}",
                f"./boot/System.map-{release}": f"System.map-{release}",
            }
            try:
                self.apt.fetch(image, {m: self.cache.root / f for m, f in members.items()})
            except PackagesUnavailable as exc:
                raise AssetsUnavailable(str(exc)) from exc
            entry = {"package": image.name, "version": image.version, "release": release}
            entry["files"] = list(members.values())
            self.cache.record(key, entry)
        root, release = self.cache.root, entry["release"]
        return Kernel(
            flavour,
            entry["package"],
            entry["version"],
            release,
            root / f"vmlinuz-{release}",
            root / f"config-{release}",
            root / f"System.map-{release}",
        )

    def _versioned_image(self, meta: str) -> Package:
        try:
            package = self.apt.show(meta)
            images = [d for d in package.depends if d.startswith("linux-image-")]
            if not images:
                raise PackagesUnavailable(f"{meta} depends on no linux-image package")
            return self.apt.show(images[0])
        except PackagesUnavailable as exc:
            raise AssetsUnavailable(str(exc)) from exc

    def initramfs(self, busybox: dict[str, Any]) -> Path:
        busybox_path = self.cache.root / "busybox"
        image = initramfs.build(busybox_path.read_bytes())
        digest = hashlib.sha256(image).hexdigest()
        name = f"initramfs-{digest[:16]}.cpio.gz"
        entry = self.cache.valid("initramfs")
        if entry is None or name not in entry["files"]:
            for stale in self.cache.root.glob("initramfs-*.cpio.gz"):
                stale.unlink()
            (self.cache.root / name).write_bytes(image)
            fields = {"busybox": busybox["version"], "marker": initramfs.MARKER}
            self.cache.record("initramfs", dict(fields, files=[name]))
        return self.cache.root / name


def ensure(
    flavour: str = "cloud",
    *,
    refresh: bool = False,
    root: Path | None = None,
    apt: Apt | None = None,
) -> LinuxAssets:
    """The kernel of ``flavour``, busybox and the initramfs, fetched and built as needed;
    ``AssetsUnavailable`` (with the reason) where no package manager can provide them."""
    cache = _Cache(root or cache_dir())
    cache.root.mkdir(parents=True, exist_ok=True)
    fetcher = _Fetcher(cache, refresh, apt)
    kernel = fetcher.kernel(flavour)
    busybox = fetcher.package(BUSYBOX_PACKAGE, {"./bin/busybox": "busybox"}, "busybox")
    return LinuxAssets(kernel, fetcher.initramfs(busybox), busybox["version"], cache.path)


def vmlinux(kernel: Kernel) -> Path:
    """The ELF kernel inside ``kernel``'s bzImage (for the PVH entry), extracted once."""
    path = kernel.bzimage.with_name(f"vmlinux-{kernel.release}")
    if not path.is_file() or path.stat().st_mtime < kernel.bzimage.stat().st_mtime:
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(extract_vmlinux(kernel.bzimage.read_bytes()))
        partial.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyflank.platform.linux.assets")
    parser.add_argument("--flavour", choices=[*FLAVOURS, "all"], default="cloud")
    parser.add_argument("--refresh", action="store_true", help="ask for the newest packages")
    args = parser.parse_args(argv)
    flavours = list(FLAVOURS) if args.flavour == "all" else [args.flavour]
    for flavour in flavours:
        try:
            assets = ensure(flavour, refresh=args.refresh)
        except AssetsUnavailable as exc:
            print(f"linux assets: {exc}", file=sys.stderr)
            return 1
        kernel = assets.kernel
        print(f"{flavour}: {kernel.package} {kernel.version}: {kernel.bzimage}")
    print(f"busybox-static {assets.busybox_version}: {assets.initramfs}")
    print(f"manifest: {assets.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
