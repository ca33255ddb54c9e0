"""conntrack against the live kernel: flows made in a throw-away network namespace are counted exactly.

Each test namespace gets one nft rule using ``ct state`` so the kernel tracks
connections there; the collector reads it through its ``netns`` option (the
collector's own child process enters the namespace). Parser edge cases use real
tables and statistics recorded in tests/fixtures/conntrack/ (see PROVENANCE.md).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.collector import Context, Skip
from collectors import conntrack
from collectors.conntrack import (parse_ct_line, parse_limits, parse_stat_cli, parse_stat_proc, stat_totals,
                                  summarise_table)
from tests.helpers.netns import delete as delete_netns, make_netns
from tests.report import bundlemaker as bm

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "conntrack"
N_UDP, N_TCP, UDP_BASE = 23, 5, 20000

pytestmark = pytest.mark.skipif(not conntrack.loaded(), reason="nf_conntrack is not available in this kernel")

FLOWS = r'''
import json, socket, sys
n_udp, n_tcp, base = (int(a) for a in sys.argv[1:4])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
for k in range(n_udp):
    u.sendto(b"x", ("127.0.0.1", base + k))          # one UNREPLIED udp entry per port
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16)
conns = [socket.create_connection(srv.getsockname()) for _ in range(n_tcp)]
accepted = [srv.accept()[0] for _ in range(n_tcp)]   # one ESTABLISHED tcp entry each
print("READY " + json.dumps({"udp_sport": u.getsockname()[1], "tcp_port": srv.getsockname()[1]}), flush=True)
sys.stdin.read()
'''

FILL = r'''
import socket
n = int(open("/proc/sys/net/netfilter/nf_conntrack_max").read()) + 3000
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sink.bind(("0.0.0.0", 9999))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):     # distinct destinations across 127/8: one entry each, past the max
    s.sendto(b"", ("127.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255), 9999))
'''


@pytest.fixture(scope="module")
def flows():
    """A namespace holding exactly N_UDP unreplied UDP flows and N_TCP established TCP connections."""
    name = make_netns("gh-ct", conntrack=True)
    p = None
    try:
        p = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", FLOWS, str(N_UDP), str(N_TCP),
                              str(UDP_BASE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        assert line.startswith("READY"), line
        yield {"netns": f"/run/netns/{name}", **json.loads(line[6:])}
    finally:
        if p is not None:
            p.stdin.close()
            p.wait(timeout=10)
            p.stdout.close()
        delete_netns(name)


def _summary(res) -> dict:
    return json.loads((res.out / "conntrack.json").read_text())


def test_flows_made_in_a_namespace_are_counted_exactly(run_collector, flows, tmp_path):
    res = run_collector("conntrack", options={"netns": flows["netns"]})
    assert res.status == "ok", res.reason
    s = _summary(res)
    total = N_UDP + N_TCP
    assert s["method"] == "proc" and s["netns"] == flows["netns"]
    assert s["count"] == s["entries_read"] == total
    assert s["by_proto"] == {"udp": N_UDP, "tcp": N_TCP} and s["by_l3"] == {"ipv4": total}
    assert s["by_state"] == {"udp": {"UNREPLIED": N_UDP}, "tcp": {"ESTABLISHED": N_TCP}}
    assert s["flags"] == {"UNREPLIED": N_UDP, "ASSURED": N_TCP}
    assert s["top_sources"] == [{"addr": "127.0.0.1", "count": total}]
    assert {"port": f"tcp/{flows['tcp_port']}", "count": N_TCP} in s["top_destination_ports"]
    with open("/proc/sys/net/netfilter/nf_conntrack_max") as fh:
        assert s["max"] == int(fh.read())     # global on this kernel
    assert s["fill_ratio"] == round(total / s["max"], 4)
    assert s["sysctls"]["nf_conntrack_udp_timeout"] == "600"
    assert s["stats"]["totals"]["drop"] == 0 and "early_drop" in s["stats"]["totals"]
    assert "findings" not in s and "near_max" not in s      # facts here; the report's conntrack rule judges
    assert not [f for f in bm.findings(tmp_path / "b", {"collectors/conntrack/conntrack.json": s})
                if f.rule == "conntrack"]
    raw = (res.out / "nf_conntrack.txt").read_text().splitlines()
    assert len(raw) == total
    for k in range(N_UDP):
        assert sum(f"sport={flows['udp_sport']} dport={UDP_BASE + k} " in line for line in raw) == 1
    assert (res.out / "stat-nf_conntrack.txt").exists()
    assert res.notes["count"] == total and res.notes["method"] == "proc"


def test_cli_method_reads_the_same_table_and_the_cpu_stats(run_collector, flows):
    res = run_collector("conntrack", options={"netns": flows["netns"], "method": "cli"})
    assert res.status == "ok", res.reason
    s = _summary(res)
    assert s["method"] == "cli" and s["entries_read"] == N_UDP + N_TCP
    assert s["by_state"] == {"udp": {"UNREPLIED": N_UDP}, "tcp": {"ESTABLISHED": N_TCP}}
    assert s["stats"]["source"] == "conntrack -S" and len(s["stats"]["per_cpu"]) >= 1
    assert {"insert_failed", "drop", "early_drop", "search_restart"} <= set(s["stats"]["totals"])
    assert [c["argv"][:2] for c in res.commands] == [["conntrack", "-L"], ["conntrack", "-S"]]
    assert len((res.out / "conntrack-L.txt").read_text().splitlines()) == N_UDP + N_TCP


def test_the_host_namespace_does_not_see_the_test_namespace(run_collector, flows):
    res = run_collector("conntrack")
    assert res.status == "ok", res.reason
    s = _summary(res)
    assert s["netns"] is None and s["method"] == "proc"
    raw = (res.out / "nf_conntrack.txt").read_text()
    assert f"sport={flows['udp_sport']} dport={UDP_BASE}" not in raw
    assert s["count"] is not None and s["max"] > 0


def test_a_full_table_is_flagged_with_its_drops(run_collector, tmp_path):
    with open("/proc/sys/net/netfilter/nf_conntrack_max") as fh:
        mx = int(fh.read())
    if mx > 600_000:
        pytest.skip(f"nf_conntrack_max is {mx}: too many entries to fill in a test (it is global and only the "
                    "host may change it, which this test never does)")
    name = make_netns("gh-ct", conntrack=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", FILL], check=True, timeout=120)
        res = run_collector("conntrack", options={"netns": f"/run/netns/{name}"}, timeout_s=120)
        assert res.status == "ok", res.reason
        s = _summary(res)
        assert s["max"] == mx and s["fill_ratio"] >= 0.99
        assert s["entries_read"] >= int(mx * 0.99) and s["by_state"]["udp"]["UNREPLIED"] == s["entries_read"]
        tot = s["stats"]["totals"]
        assert tot["early_drop"] + tot["drop"] >= 1      # the kernel had to make room
        found = {f.title: f for f in bm.findings(tmp_path / "b", {"collectors/conntrack/conntrack.json": s})
                 if f.rule == "conntrack"}
        full = next(f for t, f in found.items() if t.startswith("Conntrack table full: "))
        assert full.severity == "critical" and s["top_sources"][0]["addr"] in full.explanation
        assert any(t.startswith("Conntrack dropped or evicted connections (") for t in found)
        # every entry went to its own address: the talker counters stop learning at their bound
        assert s["distinct_destinations"] == conntrack.MAX_DISTINCT
        assert s["talkers_not_counted"] == s["entries_read"] - conntrack.MAX_DISTINCT
    finally:
        delete_netns(name)


def test_without_nf_conntrack_it_skips_and_writes_nothing(tmp_path):
    """A /proc without netfilter sysctls (the module not loaded): Skip, and no file written."""
    fake_proc = tmp_path / "proc"
    (fake_proc / "sys" / "net").mkdir(parents=True)
    out = tmp_path / "out"
    ctx = Context(name="conntrack", out=out, journal=tmp_path / "j.jsonl", deadline=time.monotonic() + 10,
                  proc=fake_proc)
    with pytest.raises(Skip, match="nf_conntrack is not loaded"):
        conntrack.collect(ctx)
    assert list(out.iterdir()) == []


def test_bad_method_fails_with_a_clear_reason(run_collector):
    res = run_collector("conntrack", options={"method": "netlink"})
    assert res.status == "failed" and "method must be" in res.reason


# -- parsers, on recorded real output -------------------------------------------------------

def _lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


@pytest.mark.parametrize("name", ["proc-nf_conntrack.txt", "conntrack-L-extended.txt", "conntrack-L.txt"])
def test_the_three_table_formats_give_the_same_counts(name):
    s = summarise_table(_lines(name))
    assert s["entries_read"] == 6 and s["unparsed_lines"] == 0
    assert s["by_proto"] == {"udp": 3, "tcp": 2, "icmp": 1}
    assert s["by_state"] == {"udp": {"UNREPLIED": 2, "REPLIED": 1}, "icmp": {"REPLIED": 1},
                             "tcp": {"ESTABLISHED": 1, "TIME_WAIT": 1}}
    assert s["flags"] == {"UNREPLIED": 2, "ASSURED": 2}
    # /proc writes IPv6 addresses in full; they are compressed like the CLI's
    assert s["top_sources"] == [{"addr": "127.0.0.1", "count": 5}, {"addr": "::1", "count": 1}]
    assert s["by_l3"] == ({} if name == "conntrack-L.txt" else {"ipv4": 5, "ipv6": 1})


def test_one_entry_parsed_in_full():
    line = next(x for x in _lines("proc-nf_conntrack.txt") if "ESTABLISHED" in x)
    r = parse_ct_line(line)
    assert (r["l3"], r["proto"], r["timeout"], r["state"], r["flags"]) == ("ipv4", "tcp", 431999, "ESTABLISHED",
                                                                          ["ASSURED"])
    assert r["orig"]["dport"] == "7000" and r["reply"]["sport"] == "7000" and r["orig"]["packets"] == "3"
    assert (r["mark"], r["zone"], r["delta-time"], r["use"]) == (0, 0, 0, 2)
    icmp = parse_ct_line(next(x for x in _lines("conntrack-L.txt") if x.startswith("icmp")))
    assert icmp["l3"] is None and icmp["orig"]["type"] == "8" and icmp["reply"]["type"] == "0"
    assert parse_ct_line("garbage line here") is None and parse_ct_line("") is None
    s = summarise_table(["nonsense", "", *_lines("conntrack-L.txt")])
    assert s["entries_read"] == 6 and s["unparsed_lines"] == 1 and s["unparsed_examples"] == ["nonsense"]


def test_stats_of_a_full_table_from_proc_and_cli_agree():
    proc_rows = parse_stat_proc((FIXTURES / "proc-stat-nf_conntrack-full.txt").read_text())
    cli_rows = parse_stat_cli((FIXTURES / "conntrack-S-full.txt").read_text())
    assert len(proc_rows) == len(cli_rows) == 2
    p, c = stat_totals(proc_rows), stat_totals(cli_rows)
    assert p["early_drop"] == c["early_drop"] > 0
    for k in ("drop", "insert_failed", "error", "search_restart", "clash_resolve", "chaintoolong", "found"):
        assert p[k] == c[k], k
    sysctl = dict(line.split(":") for line in _lines("sysctl-full.txt"))
    assert p["entries"] == int(sysctl["nf_conntrack_count"])     # a gauge, not summed over CPUs
    lim = parse_limits(sysctl)
    assert lim["fill_ratio"] >= 0.99 and lim["avg_chain_length"] == 1.0 and "at_max" not in lim
    assert parse_limits({"nf_conntrack_count": "0\n", "nf_conntrack_max": "262144"})["fill_ratio"] == 0.0


def test_an_unprivileged_capture_records_count_and_limit_without_the_table():
    """Run as nobody, /proc/net/nf_conntrack (0440 root) cannot be read: the collector is partial with
    that reason and still records the count, the limit and the stats, never a raw PermissionError."""
    if not Path("/proc/sys/net/netfilter/nf_conntrack_count").exists():
        pytest.skip("nf_conntrack is not loaded here")
    import shutil
    import tempfile
    tmp_path = Path(tempfile.mkdtemp(prefix="gh-ct-nobody-"))     # pytest's folders are 0700: nobody cannot enter
    tmp_path.chmod(0o777)
    store = tmp_path / "store"
    try:
        _unprivileged_capture(tmp_path, store)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _unprivileged_capture(tmp_path: Path, store: Path) -> None:
    cp = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                         sys.executable, "-m", "agent", "snapshot", "--incident", "CT-NOBODY", "--profile", "quick",
                         "--collector", "conntrack", "--store", str(store), "--no-upload", "--json"],
                        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
                        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)})
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["collectors"] == {"conntrack": "partial"}
    man = json.loads(Path(out["manifest"]).read_text())
    [entry] = [c for c in man["collectors"] if c["name"] == "conntrack"]
    assert "readable by root only" in entry["reason"] and "PermissionError" not in entry["reason"]
    assert any(f["path"].endswith("conntrack.json") for f in entry["files"])
