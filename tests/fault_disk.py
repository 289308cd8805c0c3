"""A REAL full disk for fault tests: a small tmpfs mounted on a folder, grown later to "free space".

    with small_disk(tmp_path / "files", size_kb=256) as disk:
        ... point FLOWS_FILES_DIR at disk.path, watch the service fill it ...
        disk.grow(16 * 1024)  # the operator frees space: `mount -o remount,size=...`

The write that does not fit fails in the kernel with ENOSPC, exactly as on a full volume: nothing in the
code under test is replaced. Mounting needs root (our machines and CI run the tests as root); a machine
that cannot mount FAILS the test, saying so: a skipped fault test would pass without proving anything.
The mount is always undone at the end, even when the test fails (`umount -l` as a last resort).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class SmallDisk:
    path: Path

    def grow(self, size_kb: int) -> None:
        """Gives the file system `size_kb` in all: what the operator does by freeing space."""
        _mount_cmd(["mount", "-o", f"remount,size={size_kb}k", str(self.path)], f"grow {self.path} to {size_kb} KB")

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def files(self, under: str = "") -> list[Path]:
        """Every file below `under` (e.g. "tmp": the store's temporary files), sorted."""
        root = self.path / under
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _mount_cmd(args: list[str], what: str) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.fail(f"cannot {what}: no `mount` command on this machine; the full-disk tests need root and mount")
    if done.returncode != 0:
        pytest.fail(f"this machine cannot {what} ({' '.join(args)}: exit {done.returncode}: "
                    f"{(done.stderr or done.stdout).strip()}): the full-disk tests need root and `mount -t tmpfs`")


def mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int, inodes: int | None = None) -> Iterator[SmallDisk]:
    """A tmpfs of `size_kb` KB (and `inodes` files and folders, when given) mounted on `path` (created if
    needed), unmounted on the way out."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kb}k,mode=0755" + (f",nr_inodes={inodes}" if inodes else "")
    _mount_cmd(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], f"mount a {size_kb} KB tmpfs on {path}")
    try:
        yield SmallDisk(path)
    finally:
        for args in (["umount", str(path)], ["umount", "-l", str(path)]):
            if not mounted(path):
                break
            subprocess.run(args, capture_output=True, timeout=30)
        assert not mounted(path), f"the test tmpfs on {path} is still mounted"
