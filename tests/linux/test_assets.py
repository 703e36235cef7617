"""Getting the kernel: the cache and manifest (with a stand-in package manager), and the
real Debian packages where apt can provide them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pyflank.platform.linux import cpio
from pyflank.platform.linux.assets import AssetsUnavailable, LinuxAssets, cache_dir, ensure
from pyflank.platform.linux.debian import Package, PackagesUnavailable


class FakeApt:
    """Resolves the metapackage and 'downloads' by writing the asked-for members."""

    def __init__(self, fail: bool = False) -> None:
        self.fetched: list[str] = []
        self.fail = fail

    def show(self, name: str) -> Package:
        if self.fail:
            raise PackagesUnavailable("the package lists have no " + name)
        if name == "linux-image-cloud-amd64":
            return Package(name, "6.1.1", ("linux-image-6.1.0-9-cloud-amd64",))
        return Package(name, "6.1.1-1" if "image" in name else "1:1.35", ())

    def fetch(self, package: Package, members: dict[str, Path]) -> None:
        self.fetched.append(package.name)
        for member, target in members.items():
            target.write_bytes(b"contents of " + member.encode())


def test_fetches_once_then_uses_the_cache_and_records_versions(tmp_path: Path) -> None:
    apt = FakeApt()
    assets = ensure(root=tmp_path, apt=apt)  # type: ignore[arg-type]
    assert apt.fetched == ["linux-image-6.1.0-9-cloud-amd64", "busybox-static"]
    assert assets.kernel.release == "6.1.0-9-cloud-amd64"
    assert assets.kernel.bzimage.read_bytes() == b"contents of ./boot/vmlinuz-6.1.0-9-cloud-amd64"
    manifest = json.loads(assets.manifest.read_text())
    assert manifest["kernel-cloud"]["version"] == "6.1.1-1"
    assert manifest["busybox"]["version"] == "1:1.35"
    entries = {e.name for e in cpio.parse(gzip.decompress(assets.initramfs.read_bytes()))}
    assert "init" in entries
    again = ensure(root=tmp_path, apt=FakeApt(fail=True))  # type: ignore[arg-type]
    assert again == assets  # nothing asked of the package manager


def test_a_damaged_cached_file_is_fetched_again(tmp_path: Path) -> None:
    assets = ensure(root=tmp_path, apt=FakeApt())  # type: ignore[arg-type]
    assets.kernel.bzimage.write_bytes(b"truncated")
    apt = FakeApt()
    ensure(root=tmp_path, apt=apt)  # type: ignore[arg-type]
    assert apt.fetched == ["linux-image-6.1.0-9-cloud-amd64"]


def test_no_package_manager_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(AssetsUnavailable, match="package lists have no"):
        ensure(root=tmp_path, apt=FakeApt(fail=True))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flavour"):
        ensure("tiny", root=tmp_path, apt=FakeApt())  # type: ignore[arg-type]


def test_the_cache_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "pyflank" / "linux"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "pyflank" / "linux"


def test_debians_cloud_kernel_and_busybox(linux_assets: LinuxAssets) -> None:
    kernel = linux_assets.kernel
    assert kernel.package.startswith("linux-image-6.") and kernel.package.endswith("-cloud-amd64")
    assert kernel.bzimage.read_bytes()[0x202:0x206] == b"HdrS"
    assert "CONFIG_SERIAL_8250_CONSOLE=y" in kernel.config.read_text()
    busybox = {e.name: e for e in cpio.parse(gzip.decompress(linux_assets.initramfs.read_bytes()))}
    assert busybox["bin/busybox"].data[:4] == b"\x7fELF"
