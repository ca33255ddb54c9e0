"""biolatency against the real block layer: O_DIRECT writes and reads of a file on a real disk.

Once the probe is attached, a target writes 17 blocks of 64 KiB with O_DIRECT (straight
to the device, no page cache), fsyncs, and reads them back with O_DIRECT. The disk
holding the test's folder must then show at least that many write and read requests
and bytes, with latencies inside their histograms, and the target as an issuer.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from collectors import biolatency
from tests.helpers import probes
from tests.helpers.probes import skip_without_bpf

N, SIZE = 17, 64 * 1024

DIRECT_IO = r'''
import mmap, os, sys, time
marker, path, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
buf = mmap.mmap(-1, size)           # page-aligned, as O_DIRECT needs
buf.write(b"g" * size)
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
print("READY", os.getpid(), flush=True)
while not os.path.exists(marker):
    time.sleep(0.002)
for i in range(n):
    os.pwritev(fd, [buf], i * size)
os.fsync(fd)
os.close(fd)
fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
for i in range(n):
    os.preadv(fd, [buf], i * size)
os.close(fd)
print("DONE", flush=True)
sys.stdin.read()
'''


def _disk_of(path: Path) -> str | None:
    """The whole-disk block device (e.g. vda) under ``path``'s filesystem, from sysfs."""
    st = os.stat(path)
    sys_dev = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if not sys_dev.exists():
        return None                        # tmpfs, overlay, btrfs subvolume...: no single disk
    real = sys_dev.resolve()
    if (real / "partition").exists():
        real = real.parent
    return real.name


@skip_without_bpf
def test_direct_io_shows_on_its_disk(spawn, tmp_path):
    disk = _disk_of(tmp_path)
    if disk is None:
        pytest.skip(f"{tmp_path} is not on a block device")
    staging = tmp_path / "staging"
    io = spawn([sys.executable, "-c", DIRECT_IO, str(probes.marker(staging, "biolatency")),
                str(tmp_path / "direct.bin"), str(N), str(SIZE)])
    res = probes.run("biolatency", staging, capture={"probe_seconds": 1.5})
    assert res.status == "ok", res.reason
    assert io.popen.stdout.readline().strip() == "DONE"
    assert res.notes["attached"] == ["block:block_rq_complete", "block:block_rq_issue"]
    doc = json.loads((res.out / "biolatency.json").read_text())
    by = {(d["device"], d["op"]): d for d in doc["devices"]}
    for op in ("write", "read"):
        d = by[(disk, op)]
        assert d["count"] >= N and d["bytes"] >= N * SIZE, d
        assert d["errors"] == 0 and sum(b["count"] for b in d["hist"]) == d["count"]
        assert d["min_us"] <= d["p50_us"] <= d["max_us"]
        assert d["dev"].count(":") == 1
    python_writes = [r for r in doc["issuers"] if r["device"] == disk and r["op"] == "write"
                     and r["comm"].startswith("python")]
    assert python_writes and python_writes[0]["bytes"] >= N * SIZE
    text = (res.out / "biolatency.txt").read_text()
    assert f"{disk} " in text and "usecs" in text
    probes.assert_released(json.loads((res.out / "attached.json").read_text()))


def test_program_follows_the_format_offsets():
    from collectors._bpf import parse_format
    issue = parse_format("\tfield:dev_t dev;\toffset:8;\tsize:4;\n\tfield:sector_t sector;\toffset:16;\tsize:8;\n"
                         "\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\n"
                         "\tfield:char rwbs[8];\toffset:32;\tsize:8;\n"
                         "\tfield:char comm[16];\toffset:40;\tsize:16;\n")
    done = parse_format("\tfield:dev_t dev;\toffset:8;\tsize:4;\n\tfield:sector_t sector;\toffset:16;\tsize:8;\n"
                        "\tfield:int error;\toffset:28;\tsize:4;\n\tfield:char rwbs[8];\toffset:32;\tsize:8;\n")
    text = biolatency.program(issue, done)
    assert "#define GH_BYTES_SCALE 512" in text and "#define OFF_C_error 28" in text and "#define OFF_comm 40" in text
    assert biolatency.device_name((254 << 20) | 0)[1] == "254:0"
