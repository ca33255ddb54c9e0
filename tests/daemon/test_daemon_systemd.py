"""systemd integration: the unit files verify and install, the sandbox scores <= 4.0, and the
daemon speaks sd_notify (READY, WATCHDOG, STOPPING) and journald's priority prefixes."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "goldenhour.service"
DROPIN = ROOT / "systemd" / "goldenhour-pre-restart.conf"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (Debian package systemd)")


def _install(tmp_path: Path, destdir: bool) -> dict[str, Path]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if destdir:
        env["DESTDIR"] = str(tmp_path / "stage")
        base = tmp_path / "stage"
        paths = {"prefix": Path("/usr/local"), "etc": Path("/etc"), "units": Path("/etc/systemd/system"),
                 "state": Path("/var/lib/goldenhour")}
    else:
        base = Path("/")
        paths = {"prefix": tmp_path / "usr", "etc": tmp_path / "etc", "units": tmp_path / "units",
                 "state": tmp_path / "lib"}
        env.update(PREFIX=str(paths["prefix"]), SYSCONFDIR=str(paths["etc"]), UNITDIR=str(paths["units"]),
                   STATEDIR=str(paths["state"]))
    cp = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], capture_output=True, text=True, env=env,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr
    rel = lambda p: base / str(p).lstrip("/")
    return {"bin": rel(paths["prefix"] / "bin" / "goldenhour"),
            "unit": rel(paths["units"] / "goldenhour.service"),
            "dropin": rel(paths["prefix"] / "share" / "goldenhour" / "goldenhour-pre-restart.conf"),
            "config": rel(paths["etc"] / "goldenhour" / "config.toml"),
            "example": rel(paths["etc"] / "goldenhour" / "config.example.toml"),
            "state": rel(paths["state"]), "prefix_bin": paths["prefix"] / "bin" / "goldenhour"}


def test_make_install_stages_the_command_unit_drop_in_config_and_directories(tmp_path):
    got = _install(tmp_path, destdir=True)
    assert got["bin"].is_symlink() and Path(os_readlink(got["bin"])) == ROOT / ".venv" / "bin" / "goldenhour"
    assert "ExecStart=/usr/local/bin/goldenhour daemon" in got["unit"].read_text()
    assert "ExecStop=-+/usr/local/bin/goldenhour snapshot --unit %n --reason pre-restart" in got["dropin"].read_text()
    assert got["config"].read_text() == got["example"].read_text()
    assert oct(got["config"].parent.stat().st_mode & 0o777) == "0o750"
    assert oct(got["state"].stat().st_mode & 0o777) == "0o750" and (got["state"] / "state").is_dir()
    from agent import config
    config.load(got["config"])          # the installed config is valid (and changes nothing)
    # an existing config is never overwritten
    got["config"].write_text("[capture]\nprofile = \"quick\"\n")
    _install(tmp_path, destdir=True)
    assert got["config"].read_text() == "[capture]\nprofile = \"quick\"\n"


def os_readlink(p: Path) -> str:
    import os
    return os.readlink(p)


@needs_analyze
def test_installed_unit_files_pass_systemd_analyze_verify(tmp_path):
    got = _install(tmp_path, destdir=False)
    assert f"ExecStart={got['prefix_bin']} daemon" in got["unit"].read_text()
    cp = subprocess.run([ANALYZE, "verify", str(got["unit"])], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0 and cp.stderr.strip() == "", cp.stderr
    # the drop-in, added to a unit that has its own ExecStop= (the case its comments explain)
    units = tmp_path / "demo"
    (units / "demo.service.d").mkdir(parents=True)
    (units / "demo.service").write_text("[Unit]\nDescription=demo\n[Service]\nExecStart=/bin/sleep infinity\n"
                                        "ExecStop=/bin/kill -TERM $MAINPID\n")
    text = got["dropin"].read_text().replace("#ExecStop=<the unit's own ExecStop= command, unchanged>",
                                             "ExecStop=/bin/kill -TERM $MAINPID")
    (units / "demo.service.d" / "goldenhour-pre-restart.conf").write_text(text)
    cp = subprocess.run([ANALYZE, "verify", str(units / "demo.service")], capture_output=True, text=True,
                        timeout=120)
    assert cp.returncode == 0 and cp.stderr.strip() == "", cp.stderr
    # and it really is loaded: a bad key in it is reported
    (units / "demo.service.d" / "goldenhour-pre-restart.conf").write_text(text + "NoSuchKey=1\n")
    cp = subprocess.run([ANALYZE, "verify", str(units / "demo.service")], capture_output=True, text=True,
                        timeout=120)
    assert "goldenhour-pre-restart.conf" in cp.stderr and "NoSuchKey" in cp.stderr


@needs_analyze
def test_service_sandbox_exposure_is_at_most_4(tmp_path):
    cp = subprocess.run([ANALYZE, "security", "--offline=true", str(UNIT)], capture_output=True, text=True,
                        timeout=120)
    m = re.search(r"Overall exposure level for goldenhour\.service: (\d+\.\d)", cp.stdout)
    assert m, cp.stdout[-2000:] + cp.stderr
    exposure = float(m.group(1))
    assert exposure <= 4.0, cp.stdout
    page = (ROOT / "docs" / "systemd.md").read_text()
    assert f"exposure {m.group(1)}" in page, "docs/systemd.md quotes another exposure figure"


def test_unit_is_type_notify_with_watchdog_and_only_the_capabilities_it_needs():
    unit = UNIT.read_text()
    keys = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, v)
    assert keys["Type"] == "notify" and keys["NotifyAccess"] == "main"
    assert keys["WatchdogSec"].rstrip("s").isdigit()
    caps = set(keys["CapabilityBoundingSet"].split())
    assert caps == {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE", "CAP_SYS_ADMIN", "CAP_SYS_CHROOT",
                    "CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG", "CAP_NET_ADMIN", "CAP_KILL"}
    header = unit.split("[Unit]")[0]
    for cap in caps:                       # each one is justified in the unit's header comment
        assert cap in header, cap
    assert keys["AmbientCapabilities"] == "" and keys["NoNewPrivileges"] == "yes"


def test_daemon_speaks_sd_notify_and_journal_priorities(new_daemon, tmp_path):
    sock_path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock_path))
    s.settimeout(30)
    d = new_daemon(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000", "JOURNAL_STREAM": "8:1234"})
    # journald mode: no ts= field, a <N> priority prefix; the fixture still finds the ready line
    d.start()
    messages: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(m.startswith("WATCHDOG=1") for m in messages) < 2:
        messages.append(s.recv(4096).decode())
    ready = [m for m in messages if m.startswith("READY=1")]
    assert ready and f"MAINPID={d.proc.pid}" in ready[0] and "STATUS=listening on 127.0.0.1:" in ready[0]
    assert messages.index(ready[0]) < min(i for i, m in enumerate(messages) if m == "WATCHDOG=1")
    assert sum(m == "WATCHDOG=1" for m in messages) >= 2
    assert d.health()["status"] == "ok"
    assert all(re.match(r"<[0-7]>level=", l) for l in d.lines if l.strip()), d.lines[:3]
    assert d.stop() == 0
    s.settimeout(0.2)
    rest = []
    try:
        while True:
            rest.append(s.recv(4096).decode())
    except (socket.timeout, BlockingIOError):
        pass
    assert "STOPPING=1" in rest
    s.close()


def test_example_config_lists_every_key_and_is_up_to_date():
    cp = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_example_config.py"), "--check"],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    from agent import config
    text = (ROOT / "config" / "goldenhour.example.toml").read_text()
    for key in config.KEYS:
        assert f"#{key.split('.', 1)[1]} = " in text, key
    assert all(l == "" or l.startswith(("#", "[")) for l in text.splitlines())


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_the_units_capability_set_is_enough_for_every_collector(tmp_path):
    """A capture under the unit's bounding set (and no_new_privs) gets as far as one with full root."""
    unit = UNIT.read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M).group(1).split()
    bound = "-all," + ",".join("+" + c[len("CAP_"):].lower() for c in caps)
    results = {}
    for name, prefix in (("full", []), ("bounded", ["setpriv", f"--bounding-set={bound}", "--inh-caps=-all",
                                                    "--no-new-privs"])):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'[store]\npath = "{tmp_path / name}"\nreserve_bytes = 0\nreserve_percent = 0.0\n')
        cp = subprocess.run(prefix + [sys.executable, "-m", "agent", "--config", str(cfg), "snapshot", "--incident",
                                      f"CAPS-{name}", "--profile", "quick", "--json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert cp.returncode == 0, cp.stderr
        import json
        results[name] = json.loads(cp.stdout)["collectors"]
    worked = {c for c, s in results["full"].items() if s in ("ok", "partial")}
    lost = {c: results["bounded"].get(c) for c in worked if results["bounded"].get(c) not in ("ok", "partial")}
    assert not lost, f"collectors that need a capability the unit does not grant: {lost}"


@pytest.mark.skipif(shutil.which("setpriv") is None or shutil.which("prlimit") is None,
                    reason="setpriv/prlimit (util-linux) not installed")
def test_the_units_nice_limit_lets_a_pausing_collector_return_to_normal_priority():
    """Under the unit's capabilities (no CAP_SYS_NICE) only LimitNICE lets nice 10 go back to 0."""
    unit = UNIT.read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M).group(1).split()
    assert "CAP_SYS_NICE" not in caps
    limit = re.search(r"^LimitNICE=\+?(-?\d+)$", unit, re.M)
    assert limit, "the unit sets no LimitNICE"
    rlimit = 20 - int(limit.group(1))                 # nice level -> RLIMIT_NICE, as systemd does
    bound = "-all," + ",".join("+" + c[len("CAP_"):].lower() for c in caps)
    code = ("import os\nos.setsid()\nfrom agent import runner, safety\nrunner.set_low_priority(10, True)\n"
            "runner.set_autogroup_nice(10)\nsafety.normal_priority()\n"
            "ag = open('/proc/self/autogroup').read().split()[-1] if os.path.exists('/proc/self/autogroup') else '0'\n"
            "print(os.getpriority(os.PRIO_PROCESS, 0), ag)")
    import resource
    cases = [("no limit", 0)]
    if resource.getrlimit(resource.RLIMIT_NICE)[1] >= rlimit:     # raising it needs CAP_SYS_RESOURCE
        cases.append(("unit", rlimit))
    got = {}
    for name, nice_limit in cases:
        cp = subprocess.run(["prlimit", f"--nice={nice_limit}", "setpriv", f"--bounding-set={bound}",
                             "--inh-caps=-all", "--no-new-privs", sys.executable, "-c", code],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, cp.stderr
        got[name] = cp.stdout.split()
    assert got["no limit"][0] == "10", got            # without it the pause would run niced
    if "unit" not in got:
        pytest.skip("this machine cannot raise RLIMIT_NICE (no CAP_SYS_RESOURCE): only the failing case ran")
    assert got["unit"] == ["0", "0"], got
