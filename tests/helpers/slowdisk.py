"""A slow disk, for real: a loop device whose writes the kernel throttles to a few per second.

``slow_disk(folder, write_iops)`` makes a 64 MiB ext4 image in ``folder``, attaches it to a loop device,
mounts it, and creates a cgroup-v1 blkio group (or a v2 ``io.max`` one) that allows ``write_iops`` write
requests per second to that device: like a cloud volume out of its burst credits. A process put in that
group (write its PID into ``procs``) waits in the block layer for every write it issues, so each
``fdatasync()`` of a small append takes about 1/write_iops seconds (0.5 s at 2 IOPS, measured). Everything
is undone on exit (unmount, detach, remove the group), also after a failure.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass
class SlowDisk:
    mount: Path
    device: str
    procs: Path          # write a PID here to throttle that process


def usable() -> str | None:
    """Why a slow disk cannot be made here (None if it can)."""
    for tool in ("losetup", "mkfs.ext4", "mount"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            return f"{tool} is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices"
    if not (Path("/sys/fs/cgroup/blkio/blkio.throttle.write_iops_device").exists()
            or "io" in (Path("/sys/fs/cgroup/cgroup.subtree_control").read_text().split()
                        if Path("/sys/fs/cgroup/cgroup.subtree_control").exists() else [])):
        return "no blkio (v1) or io (v2) controller"
    return None


@contextlib.contextmanager
def slow_disk(folder: Path, write_iops: int = 2) -> Iterator[SlowDisk]:
    img, mnt = folder / "disk.img", folder / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    with open(img, "wb") as fh:
        fh.truncate(64 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    dev = subprocess.run(["losetup", "--find", "--show", str(img)], check=True, capture_output=True,
                         text=True).stdout.strip()
    cg: Path | None = None
    mounted = False
    try:
        subprocess.run(["mount", dev, str(mnt)], check=True, capture_output=True)
        mounted = True
        st = os.stat(dev)
        majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        name = f"gh-slow-{uuid.uuid4().hex[:8]}"
        if Path("/sys/fs/cgroup/blkio/blkio.throttle.write_iops_device").exists():
            cg = Path("/sys/fs/cgroup/blkio") / name
            cg.mkdir()
            (cg / "blkio.throttle.write_iops_device").write_text(f"{majmin} {write_iops}")
        else:
            cg = Path("/sys/fs/cgroup") / name
            cg.mkdir()
            (cg / "io.max").write_text(f"{majmin} wiops={write_iops}")
        yield SlowDisk(mount=mnt, device=dev, procs=cg / "cgroup.procs")
    finally:
        if mounted:
            for _ in range(50):
                if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        if cg is not None:
            for _ in range(50):
                try:
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
