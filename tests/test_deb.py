"""The Debian package (`make deb`, packaging/deb/build.py): what it holds, and its whole life on this machine:
``apt-get install ./goldenhour_*.deb``, the installed command (collectors, a quick snapshot, verify), the
units through ``systemd-analyze verify``, an edited config surviving a reinstall, then remove and purge
leaving nothing dpkg owned, with the store kept while it holds evidence.

It installs at the real paths, so it runs only where that is safe: as root, with apt, under a machine-wide
lock (two runs never overlap), and only when nothing of goldenhour is on the machine already (no package,
no `make install` leftovers: it touches nothing it did not make). It purges in a ``finally`` and then removes
whatever of those paths is left, so a failure midway leaves the machine as it was. While the package is
installed /usr/bin/goldenhour exists, but no test runs `goldenhour` through PATH (the suite uses
``sys.executable -m agent``), so it cannot stand in for the checkout's code elsewhere.

The package is built once per module, into a temporary directory (the checkout and the development venv are
not touched), with gzip: the same files as `make deb`'s xz, in a second instead of twenty.
"""
from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "packaging" / "deb" / "build.py"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
       "HOME": os.environ.get("HOME", "/root")}
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=600", "-o", "Dpkg::Use-Pty=0",
       "-o", "Dpkg::Options::=--force-unsafe-io"]      # no fsync per file: the test purges it anyway
# Everything the package (or its scripts) can put on the machine: none may exist before the test.
OURS = [Path(p) for p in ("/opt/goldenhour", "/usr/bin/goldenhour", "/etc/goldenhour", "/var/lib/goldenhour",
                           "/lib/systemd/system/goldenhour.service", "/lib/systemd/system/goldenhour-recorder.service",
                           "/lib/systemd/system/goldenhour-relay.service",
                          "/usr/share/goldenhour",
                          "/usr/share/doc/goldenhour", "/usr/share/man/man1/goldenhour.1.gz",
                          "/usr/share/lintian/overrides/goldenhour",
                          "/etc/systemd/system/multi-user.target.wants/goldenhour.service")]
WANTS = OURS[-1]
# the Python minor version the package's venv is made for: Debian's python3 on this machine
PYVER = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                       capture_output=True, text=True).stdout.strip() if Path("/usr/bin/python3").exists() else "3"
SITE = f"/opt/goldenhour/lib/python{PYVER}/site-packages"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: needs root"),
    pytest.mark.skipif(not (shutil.which("dpkg-deb") and shutil.which("apt-get")), reason="needs dpkg and apt"),
    pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs Debian's /usr/bin/python3"),
]


def sh(argv: list[str], *, timeout: float = 300, check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", ENV)
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert cp.returncode == 0, f"{argv} exit {cp.returncode}\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}"
    return cp


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    sh(["/usr/bin/python3", str(BUILD), "-Z", "gzip", "--out", str(out)], timeout=900, cwd=str(out))
    debs = list(out.glob(f"goldenhour_{VERSION}_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def members(deb: Path) -> dict[str, tarfile.TarInfo]:
    """The data.tar's entries by path (without the leading ./)."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True,
                          timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name.removeprefix("./").rstrip("/"): m for m in tf.getmembers()}


def field(deb: Path, name: str) -> str:
    return sh(["dpkg-deb", "-f", str(deb), name]).stdout.strip()


def test_package_holds_the_venv_command_units_and_conffiles_with_debian_relationships(deb):
    assert field(deb, "Package") == "goldenhour" and field(deb, "Version") == VERSION
    depends = field(deb, "Depends")
    major, minor = map(int, PYVER.split("."))
    for dep in (f"python3 (>= {PYVER}~)", f"python3 (<< {major}.{minor + 1})", "python3-bpfcc", "iproute2", "procps",
                "libc6 (>="):
        assert dep in depends, depends
    for rec in ("conntrack", "elfutils", "gdb", "zstd"):
        assert rec in field(deb, "Recommends")

    got = members(deb)
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "root" and m.gname == "root" for m in got.values())
    assert len({m.mtime for m in got.values()}) == 1          # every file stamped SOURCE_DATE_EPOCH
    link = got["usr/bin/goldenhour"]
    assert link.issym() and link.linkname == "/opt/goldenhour/bin/goldenhour"
    assert got["opt/goldenhour/bin/python3"].linkname == "/usr/bin/python3"
    assert got["opt/goldenhour/bin/goldenhour"].mode == 0o755
    assert got["etc/goldenhour"].mode == 0o750 and got["etc/goldenhour/config.example.toml"].mode == 0o640
    assert "etc/goldenhour/config.toml" not in got       # the admin's file: postinst makes it once
    assert "lib/systemd/system/goldenhour.service" in got and "usr/share/goldenhour/goldenhour-pre-restart.conf" in got
    assert "lib/systemd/system/goldenhour-recorder.service" in got
    assert any(n.startswith(f"{SITE[1:]}/agent/") for n in got)
    # every module and data file of the checkout (pyproject.toml lists the packages one by one: a new
    # subpackage left out of that list would be missing here)
    code = [p.relative_to(ROOT).as_posix() for top in ("agent", "collectors") for p in (ROOT / top).rglob("*")
            if p.suffix in (".py", ".c", ".json", ".toml", ".js") and "__pycache__" not in p.parts]
    assert code and not [c for c in code if f"{SITE[1:]}/{c}" not in got]
    # no bytecode (postinst compiles it), no pip (nothing changes the tree at run time)
    assert not [n for n in got if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in got if "/site-packages/pip/" in n or n.endswith("/bin/pip")]

    # every lintian override still names something in the package (lintian itself runs in `make deb`)
    overrides = (ROOT / "packaging" / "deb" / "lintian-overrides").read_text().splitlines()
    for line in (l for l in overrides if l.startswith("goldenhour:")):
        context = line.rsplit("[", 1)[1].rstrip("]").rstrip("/")
        assert fnmatch.filter(got, context), f"lintian override for nothing in the package: {line}"

    ctrl = Path(str(deb) + ".control")
    sh(["dpkg-deb", "-e", str(deb), str(ctrl)])
    assert (ctrl / "conffiles").read_text().split() == ["/etc/goldenhour/config.example.toml"]
    for script in ("postinst", "prerm", "postrm"):
        sh(["sh", "-n", str(ctrl / script)])
    shutil.rmtree(ctrl)


def test_package_names_no_build_path_and_points_units_at_usr_bin(deb, tmp_path):
    tree = tmp_path / "x"
    sh(["dpkg-deb", "-x", str(deb), str(tree)])
    shebang = (tree / "opt/goldenhour/bin/goldenhour").read_text().splitlines()[0]
    assert shebang == "#!/opt/goldenhour/bin/python"
    assert "command = /usr/bin/python3 -m venv --system-site-packages /opt/goldenhour" in \
        (tree / "opt/goldenhour/pyvenv.cfg").read_text()
    unit = (tree / "lib/systemd/system/goldenhour.service").read_text()
    assert "ExecStart=/usr/bin/goldenhour daemon" in unit and "/usr/local" not in unit
    rec = (tree / "lib/systemd/system/goldenhour-recorder.service").read_text()
    assert "ExecStart=/usr/bin/goldenhour record" in rec and "/usr/local" not in rec
    dropin = (tree / "usr/share/goldenhour/goldenhour-pre-restart.conf").read_text()
    assert "ExecStop=-+/usr/bin/goldenhour snapshot --unit %n --reason pre-restart" in dropin
    cp = sh(["grep", "-rlF", "-e", str(ROOT), "-e", "/tmp/goldenhour-deb.", str(tree)], check=False)
    assert cp.returncode == 1, cp.stdout               # grep found nothing


def test_no_test_runs_goldenhour_through_path():
    """While the package is installed, /usr/bin/goldenhour exists: a test that ran `goldenhour` from PATH
    could run the package instead of the checkout. The suite runs ``sys.executable -m agent``; keep it so."""
    pattern = re.compile(r"""(\[\s*|which\(\s*)["']goldenhour["']""")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "tests").rglob("*.py")) if p.name != "test_deb.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders


def test_package_is_reproducible(deb, tmp_path):
    """Built again from the same checkout: the same bytes (SOURCE_DATE_EPOCH, modes, owners, pins)."""
    sh(["/usr/bin/python3", str(BUILD), "-Z", "gzip", "--out", str(tmp_path)], timeout=900, cwd=str(tmp_path))
    again = tmp_path / deb.name
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(deb.read_bytes()).hexdigest()


@pytest.fixture
def machine_lock():
    """One package test on this machine at a time (helpers and the suite share it)."""
    lock = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "goldenhour-deb-test.lock"
    with open(lock, "w") as f:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another package test held {lock} for 15 minutes")
                time.sleep(1)
        yield
        fcntl.flock(f, fcntl.LOCK_UN)


def dpkg_status() -> str:
    cp = sh(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "goldenhour"], check=False)
    return cp.stdout.strip() if cp.returncode == 0 else ""


def test_installs_runs_and_removes_cleanly(deb, tmp_path, machine_lock):
    present = [str(p) for p in OURS if p.exists() or p.is_symlink()]
    if dpkg_status() not in ("", "un"):
        pytest.skip(f"goldenhour is already known to dpkg here ({dpkg_status()}): not touching it")
    if present:
        pytest.skip(f"goldenhour files already on this machine ({', '.join(present)}): not touching them")
    plan = sh([*APT, "install", "--simulate", "--no-install-recommends", str(deb)]).stdout
    others = [l.split()[1] for l in plan.splitlines() if l.startswith("Inst ") and l.split()[1] != "goldenhour"]
    if others:
        pytest.skip(f"installing would also install {', '.join(others)} (run `make setup` first)")

    owned: list[str] = []
    try:
        sh([*APT, "install", "--no-install-recommends", str(deb)], timeout=600)
        assert dpkg_status() == "ii"
        owned = sh(["dpkg-query", "-L", "goldenhour"]).stdout.split("\n")
        gh = "/usr/bin/goldenhour"

        # the command: the package's own code, on Debian's python3, with bcc importable
        assert sh([gh, "--version"]).stdout.strip().endswith(VERSION)
        where = sh(["/opt/goldenhour/bin/python", "-c", "import agent, sys; print(agent.__file__, sys.prefix)"],
                   cwd=str(tmp_path)).stdout.split()
        assert where[0].startswith(f"{SITE}/agent/") and \
            where[1] == "/opt/goldenhour"
        if Path("/usr/lib/python3/dist-packages/bcc").is_dir():
            sh(["/opt/goldenhour/bin/python", "-c", "import bcc"])
        assert list(Path("/opt/goldenhour/lib").rglob("__pycache__/*.pyc"))     # postinst compiled

        # every collector as ready (or not, for the same reason) as from the checkout: bcc, py-spy, tools
        status = lambda argv, cwd: {c["name"]: (c["status"], c["reason"])
                                    for c in json.loads(sh([*argv, "collectors", "--json"], cwd=cwd).stdout)}
        installed = status([gh], str(tmp_path))
        assert installed == status([sys.executable, "-m", "agent"], str(ROOT))
        assert "threads" in sh([gh, "collectors"], cwd=str(tmp_path)).stdout

        store = tmp_path / "store"
        snap = sh([gh, "snapshot", "--incident", "DEBTEST-1", "--profile", "quick", "--store", str(store)],
                  cwd=str(tmp_path), timeout=300)
        bundles = list((store / "incidents" / "DEBTEST-1").glob("*.tar.zst"))
        assert len(bundles) == 1, snap.stdout + snap.stderr
        sh([gh, "verify", str(bundles[0])], cwd=str(tmp_path))

        # the directories the scripts make, modes as scripts/install.sh makes them
        assert oct(Path("/var/lib/goldenhour").stat().st_mode & 0o777) == "0o750"
        assert Path("/var/lib/goldenhour/state").is_dir()
        assert oct(Path("/etc/goldenhour").stat().st_mode & 0o777) == "0o750"
        conf = Path("/etc/goldenhour/config.toml")
        assert oct(conf.stat().st_mode & 0o777) == "0o640"
        assert conf.read_text() == (ROOT / "config" / "goldenhour.example.toml").read_text()

        # the installed units verify; the drop-in example on a unit with its own ExecStop= too
        if shutil.which("systemd-analyze"):
            for unit in ("goldenhour.service", "goldenhour-recorder.service"):
                cp = sh(["systemd-analyze", "verify", f"/lib/systemd/system/{unit}"], check=False)
                assert cp.returncode == 0 and cp.stderr.strip() == "", cp.stderr
            units = tmp_path / "units"
            (units / "demo.service.d").mkdir(parents=True)
            (units / "demo.service").write_text("[Unit]\nDescription=demo\n[Service]\nExecStart=/bin/sleep infinity\n"
                                                "ExecStop=/bin/kill -TERM $MAINPID\n")
            text = Path("/usr/share/goldenhour/goldenhour-pre-restart.conf").read_text().replace(
                "#ExecStop=<the unit's own ExecStop= command, unchanged>", "ExecStop=/bin/kill -TERM $MAINPID")
            (units / "demo.service.d" / "goldenhour-pre-restart.conf").write_text(text)
            cp = sh(["systemd-analyze", "verify", str(units / "demo.service")], check=False)
            assert cp.returncode == 0 and cp.stderr.strip() == "", cp.stderr

        # an edited config survives a reinstall (the upgrade path of the scripts: prerm upgrade, postinst
        # configure OLD-VERSION), and so does an edited conffile; neither asks. The edits are comments:
        # other processes on this machine read /etc/goldenhour/config.toml meanwhile.
        example = Path("/etc/goldenhour/config.example.toml")
        edited, edited_example = conf.read_text() + "# an admin's edit\n", example.read_text() + "# mine\n"
        conf.write_text(edited)
        example.write_text(edited_example)
        sh([*APT, "install", "--reinstall", "--no-install-recommends", str(deb)], timeout=600, stdin=subprocess.DEVNULL)
        assert conf.read_text() == edited and example.read_text() == edited_example
        assert list(Path("/opt/goldenhour/lib").rglob("__pycache__/*.pyc"))     # compiled again

        # an admin's `systemctl enable goldenhour`
        if WANTS.parent.is_dir():
            WANTS.symlink_to("/lib/systemd/system/goldenhour.service")

        # remove: the program goes, config and store stay
        evidence = Path("/var/lib/goldenhour/incidents/INC-1/INC-1_host_x.tar.zst")
        evidence.parent.mkdir(parents=True)
        evidence.write_bytes(b"evidence")
        sh([*APT, "remove", "goldenhour"], timeout=600)
        assert dpkg_status() == "rc"
        assert not Path("/opt/goldenhour").exists() and not Path(gh).is_symlink()
        assert not Path("/lib/systemd/system/goldenhour.service").exists()
        assert not Path("/lib/systemd/system/goldenhour-recorder.service").exists()
        assert conf.read_text() == edited and evidence.exists()

        # purge: config gone, enablement gone; the store stays while it holds evidence, and says so
        cp = sh([*APT, "purge", "goldenhour"], timeout=600)
        assert dpkg_status() == ""
        assert not Path("/etc/goldenhour").exists() and not WANTS.is_symlink()
        assert evidence.exists() and "purge keeps /var/lib/goldenhour" in cp.stdout + cp.stderr
        leftovers = [p for p in owned if p and p not in ("/.",) and os.path.lexists(p) and not Path(p).is_dir()]
        assert not leftovers, leftovers
        assert not [p for p in owned if p.startswith(("/opt/goldenhour", "/etc/goldenhour", "/usr/share/goldenhour",
                                                      "/usr/share/doc/goldenhour")) and os.path.lexists(p)]

        # without evidence (only the daemon's state/ and the flight recorder's ring, which is not a
        # capture's evidence), the same purge script removes the store
        evidence.unlink()
        (Path("/var/lib/goldenhour/recorder")).mkdir(mode=0o700)
        Path("/var/lib/goldenhour/recorder/ring").write_bytes(b"ring")
        postrm = tmp_path / "control"
        sh(["dpkg-deb", "-e", str(deb), str(postrm)])
        sh(["sh", str(postrm / "postrm"), "purge"])
        assert not Path("/var/lib/goldenhour").exists()
    finally:
        if dpkg_status() not in ("", "un"):
            subprocess.run([*APT, "purge", "goldenhour"], capture_output=True, env=ENV, timeout=600)
        if dpkg_status() not in ("", "un"):
            subprocess.run(["dpkg", "--purge", "--force-all", "goldenhour"], capture_output=True, env=ENV,
                           timeout=600)
        for p in OURS:                      # none existed before: whatever is left is ours
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
