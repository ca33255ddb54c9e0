"""Connection tracking: the netfilter conntrack table, its fill level against its max, and its drops.

What: the conntrack table (``/proc/net/nf_conntrack``, or ``conntrack -L -o extended``
where the kernel has no procfs table), the per-CPU statistics (``/proc/net/stat/nf_conntrack``
and ``conntrack -S``: found, invalid, insert, insert_failed, drop, early_drop, error,
search_restart, clash_resolve, chaintoolong), ``nf_conntrack_count`` against
``nf_conntrack_max`` and ``nf_conntrack_buckets``, every ``nf_conntrack_*`` sysctl
(timeouts, acct, liberal...), counts per protocol and per state, and the top sources,
destinations and destination ports.
Why: a saturated conntrack table is a classic cause of outages that look like random
packet loss: when ``count`` reaches ``max`` the kernel drops new connections ("nf_conntrack:
table full, dropping packet") while every process looks healthy. ``drop``,
``early_drop`` and ``insert_failed`` say it happened; per-state counts and top talkers
say who filled it (a TIME_WAIT flood, a UDP scan, a NAT gateway), and it empties
itself within minutes, taking the evidence with it.
Produces: ``nf_conntrack.txt`` (the raw table from /proc, streamed, cut at the per-file
cap) or ``conntrack-L.txt`` (the CLI's); ``stat-nf_conntrack.txt`` (raw per-CPU stats,
hex), ``conntrack-S.txt`` when the CLI ran; ``conntrack.json`` (method, count, max,
buckets, fill_ratio, entries read, per-proto, per-l3, per-state and per-flag counts, zones,
stats totals and per CPU, the change of the stats over the capture, top
sources/destinations/ports, sysctls). Facts only: how full is too full, and which drops
matter, is judged by the report's ``conntrack`` rule.
Overhead: reads /proc files; the table is streamed line by line (about 1 s per 100,000
entries), memory stays bounded (top-talker counters stop learning new addresses at
100,000 distinct ones). ``conntrack -S`` runs only when the kernel already has
nf_conntrack_netlink (built in or loaded).
Caveats: the table, its count and its stats belong to one network namespace (goldenhour's
own unless ``netns`` is set); containers have their own. ``nf_conntrack_max`` is global
on this kernel: each namespace may hold up to max entries. Counters are cumulative since
the namespace was created; ``stats_delta`` is their change during the capture only. If
nf_conntrack is not loaded the collector is skipped: it never loads a module and writes
nothing. For UDP and other protocols without states, ``by_state`` uses UNREPLIED,
ASSURED or REPLIED from the entry's flags.
Side effects: with ``method = "cli"``, or when /proc/net/nf_conntrack does not exist,
``conntrack -L`` talks netlink to the kernel, which may load the nf_conntrack_netlink
module to answer.
Options: ``[collectors.conntrack] method`` = "auto" (default: /proc, else the CLI) |
"proc" | "cli"; ``netns`` = a network namespace file to read instead of goldenhour's
own (also ``capture["netns"]``); ``top`` = entries per top list (default 20).
"""
from __future__ import annotations

import gzip
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from agent.collector import Collector, Option, ReserveReached, Scope, Skip, read_text, which
from collectors import _netns

SYSCTL_DIR = "sys/net/netfilter"
TUPLE_KEYS = frozenset(("src", "dst", "sport", "dport", "type", "code", "id", "packets", "bytes",
                        "srckey", "dstkey"))
L3_NAMES = frozenset(("ipv4", "ipv6", "unknown"))
# /proc/net/stat/nf_conntrack column names -> the names conntrack -S prints
STAT_ALIASES = {"icmp_error": "error", "clashres": "clash_resolve", "chainlength": "chaintoolong"}
STAT_NOT_SUMMED = frozenset(("entries", "searched"))   # global gauges repeated on every CPU row
MAX_DISTINCT = 100_000
UNPARSED_EXAMPLES = 10


# -- parsing (pure) ----------------------------------------------------------------------

def _ipv6(v: str) -> str:
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, v))
    except OSError:
        return v


def parse_ct_line(line: str) -> dict[str, Any] | None:
    """One conntrack entry, from /proc/net/nf_conntrack or ``conntrack -L [-o extended]``.

    ``ipv4 2 tcp 6 431999 ESTABLISHED src=.. dst=.. sport=.. dport=.. src=.. ... [ASSURED] mark=0 use=1``
    (the CLI without ``-o extended`` omits the leading ``ipv4 2``). The first tuple is
    the original direction, the second the reply; ``[FLAGS]`` go to ``flags``; other
    ``key=value`` pairs (mark, zone, use, secctx, delta-time, labels) to the record.
    """
    t = line.split()
    if len(t) < 4:
        return None
    i = 2 if t[0] in L3_NAMES else 0
    try:
        proto, timeout = t[i], int(t[i + 2])
        int(t[i + 1])
    except (ValueError, IndexError):
        return None
    rec: dict[str, Any] = {"l3": t[0] if i else None, "proto": proto, "timeout": timeout, "state": None}
    j = i + 3
    if j < len(t) and "=" not in t[j] and not t[j].startswith("["):
        rec["state"] = t[j]
        j += 1
    orig: dict[str, str] = {}
    reply: dict[str, str] = {}
    cur = orig
    flags: list[str] = []
    for tok in t[j:]:
        if tok[0] == "[":
            flags.append(tok.strip("[]"))
            continue
        k, sep, v = tok.partition("=")
        if not sep:
            continue
        if k in TUPLE_KEYS:
            if k == "src":
                if "src" in cur:
                    cur = reply
                if len(v) == 39:          # /proc writes IPv6 in full: 0000:...:0001
                    v = _ipv6(v)
            elif k == "dst" and len(v) == 39:
                v = _ipv6(v)
            cur[k] = v
        else:
            rec[k] = int(v) if v.isdigit() else v
    if "src" not in orig:
        return None
    rec["orig"], rec["reply"], rec["flags"] = orig, reply, flags
    return rec


def state_of(rec: dict[str, Any]) -> str:
    """The entry's state: its own (TCP, SCTP, DCCP) or UNREPLIED / ASSURED / REPLIED from its flags."""
    if rec["state"]:
        return rec["state"]
    flags = rec["flags"]
    if "UNREPLIED" in flags:
        return "UNREPLIED"
    return "ASSURED" if "ASSURED" in flags else "REPLIED"


class Bounded:
    """A Counter that stops learning new keys past ``limit`` distinct ones (bounded memory)."""

    def __init__(self, limit: int = MAX_DISTINCT):
        self.limit = limit
        self.counts: Counter[str] = Counter()
        self.not_counted = 0

    def add(self, key: str) -> None:
        if key in self.counts or len(self.counts) < self.limit:
            self.counts[key] += 1
        else:
            self.not_counted += 1


class TableSummary:
    """Counts over a stream of conntrack entries; ``add_line`` keeps nothing per entry."""

    def __init__(self) -> None:
        self.entries = 0
        self.by_proto: Counter[str] = Counter()
        self.by_l3: Counter[str] = Counter()
        self.by_state: dict[str, Counter[str]] = {}
        self.flags: Counter[str] = Counter()
        self.zones: Counter[int] = Counter()
        self.sources = Bounded()
        self.destinations = Bounded()
        self.dports = Bounded()
        self.unparsed = 0
        self.unparsed_examples: list[str] = []

    def add_line(self, line: str) -> None:
        if not line.strip():
            return
        rec = parse_ct_line(line)
        if rec is None:
            self.unparsed += 1
            if len(self.unparsed_examples) < UNPARSED_EXAMPLES:
                self.unparsed_examples.append(line.rstrip("\n")[:500])
            return
        self.add(rec)

    def add(self, rec: dict[str, Any]) -> None:
        self.entries += 1
        proto = rec["proto"]
        self.by_proto[proto] += 1
        if rec["l3"]:
            self.by_l3[rec["l3"]] += 1
        st = self.by_state.get(proto)
        if st is None:
            st = self.by_state[proto] = Counter()
        st[state_of(rec)] += 1
        for f in rec["flags"]:
            self.flags[f] += 1
        if "zone" in rec:
            self.zones[rec["zone"]] += 1
        o = rec["orig"]
        self.sources.add(o["src"])
        self.destinations.add(o.get("dst", "?"))
        if "dport" in o:
            self.dports.add(f"{proto}/{o['dport']}")

    def to_json(self, top: int = 20) -> dict[str, Any]:
        def tops(b: Bounded, key: str) -> list[dict[str, Any]]:
            return [{key: k, "count": c} for k, c in b.counts.most_common(top)]
        return {
            "entries_read": self.entries, "by_proto": dict(self.by_proto.most_common()),
            "by_l3": dict(self.by_l3.most_common()),
            "by_state": {p: dict(c.most_common()) for p, c in self.by_state.items()},
            "flags": dict(self.flags.most_common()),
            "zones": {str(z): c for z, c in self.zones.most_common()} if any(self.zones) else {},
            "top_sources": tops(self.sources, "addr"), "top_destinations": tops(self.destinations, "addr"),
            "top_destination_ports": tops(self.dports, "port"),
            "distinct_sources": len(self.sources.counts), "distinct_destinations": len(self.destinations.counts),
            "talkers_not_counted": self.sources.not_counted + self.destinations.not_counted,
            "unparsed_lines": self.unparsed, "unparsed_examples": self.unparsed_examples,
        }


def summarise_table(lines: Iterable[str], top: int = 20) -> dict[str, Any]:
    """Counts over a whole table's lines (pure; streams)."""
    s = TableSummary()
    for line in lines:
        s.add_line(line)
    return s.to_json(top)


def parse_stat_proc(text: str) -> list[dict[str, int]]:
    """/proc/net/stat/nf_conntrack: a header, then one row of hex numbers per CPU."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    head = [STAT_ALIASES.get(h, h) for h in lines[0]]
    rows = []
    for vals in lines[1:]:
        try:
            rows.append({h: int(v, 16) for h, v in zip(head, vals, strict=False)})
        except ValueError:
            continue
    return rows


def parse_stat_cli(text: str) -> list[dict[str, int]]:
    """``conntrack -S``: ``cpu=0 found=0 invalid=0 ... drop=0 early_drop=0 ...`` per CPU."""
    rows = []
    for line in text.splitlines():
        row = {}
        for tok in line.split():
            k, sep, v = tok.partition("=")
            if sep and v.isdigit():
                row[k] = int(v)
        if row:
            rows.append(row)
    return rows


def stat_totals(rows: list[dict[str, int]]) -> dict[str, int]:
    """Sum the per-CPU counters (gauges such as ``entries`` are taken once, not summed)."""
    out: dict[str, int] = {}
    for row in rows:
        for k, v in row.items():
            if k == "cpu":
                continue
            if k in STAT_NOT_SUMMED:
                out[k] = v
            else:
                out[k] = out.get(k, 0) + v
    return out


def parse_limits(values: dict[str, str]) -> dict[str, Any]:
    """count, max, buckets and fill ratio from the nf_conntrack_* sysctl texts."""
    def num(name: str) -> int | None:
        v = values.get(name, "").strip()
        return int(v) if v.lstrip("-").isdigit() else None
    count, mx, buckets = num("nf_conntrack_count"), num("nf_conntrack_max"), num("nf_conntrack_buckets")
    fill = round(count / mx, 4) if count is not None and mx else None
    return {"count": count, "max": mx, "buckets": buckets, "expect_max": num("nf_conntrack_expect_max"),
            "fill_ratio": fill,
            "avg_chain_length": round(count / buckets, 2) if count is not None and buckets else None}


# -- I/O --------------------------------------------------------------------------------------

def loaded(proc: Path = Path("/proc")) -> bool:
    return (proc / SYSCTL_DIR / "nf_conntrack_count").exists()


def availability() -> str | None:
    if loaded():
        return None
    return "nf_conntrack is not loaded (no /proc/sys/net/netfilter/nf_conntrack_count): nothing is tracked"


def netlink_in_kernel() -> bool:
    """True when nf_conntrack_netlink is already there (loaded or built in), so the CLI loads nothing."""
    if os.path.exists("/sys/module/nf_conntrack_netlink"):
        return True
    rel = os.uname().release
    builtin = read_text(f"/lib/modules/{rel}/modules.builtin")
    if builtin is not None:
        return "/nf_conntrack_netlink.ko" in builtin
    for cfg in (f"/boot/config-{rel}", "/proc/config.gz"):
        try:
            opener = gzip.open if cfg.endswith(".gz") else open
            with opener(cfg, "rt", errors="replace") as fh:
                return any(line.startswith("CONFIG_NF_CT_NETLINK=y") for line in fh)
        except OSError:
            continue
    return False


def stream_table(ctx, src: Path, name: str, summary: TableSummary) -> dict[str, Any]:
    """Copy ``src`` line by line into ``name`` (up to the per-file cap) while counting every line."""
    cap = ctx.limits.max_file_bytes
    written = 0
    cut = False
    with open(src, "rb", buffering=1 << 20) as fh, ctx.open_out(name, "wb", buffering=1 << 20) as out:
        for raw in fh:
            if not cut:
                if written + len(raw) > cap:
                    cut = True
                else:
                    try:
                        out.write(raw)
                        written += len(raw)
                    except ReserveReached:   # the store's free-space reserve: keep counting, stop copying
                        cut = True
            summary.add_line(raw.decode("ascii", "replace"))
    if cut:
        ctx.partial(f"{name} cut at {written} bytes (file cap or free-space reserve); "
                    "the counts in conntrack.json cover every entry")
    return {"file": name, "bytes": written, "cut": cut}


def read_cli_table(ctx, summary: TableSummary) -> dict[str, Any]:
    res = ctx.run(["conntrack", "-L", "-o", "extended"], stdout="conntrack-L.txt",
                  timeout_s=max(1.0, ctx.remaining() - 2))
    if not res.ok and not res.truncated:
        why = res.error or ("killed at its time limit" if res.killed else f"exit status {res.returncode}")
        raise RuntimeError(f"conntrack -L failed ({why})")
    with open(ctx.path("conntrack-L.txt"), encoding="ascii", errors="replace") as fh:
        for line in fh:
            summary.add_line(line)
    if res.truncated:
        ctx.partial("conntrack-L.txt cut at the per-file cap; counts cover only what was kept")
    return {"file": "conntrack-L.txt", "bytes": ctx.path("conntrack-L.txt").stat().st_size, "cut": res.truncated}


def read_sysctls(proc: Path) -> dict[str, str]:
    d = proc / SYSCTL_DIR
    out = {}
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return out
    for name in names:
        if name.startswith("nf_conntrack_"):
            v = read_text(d / name)
            if v is not None:
                out[name] = v.strip()
    return out


def read_proc_stats(proc: Path) -> list[dict[str, int]] | None:
    text = read_text(proc / "net" / "stat" / "nf_conntrack")
    return parse_stat_proc(text) if text else None


def collect(ctx) -> None:
    netns = _netns.enter(ctx)
    proc = Path(ctx.proc)
    if not loaded(proc):
        raise Skip("nf_conntrack is not loaded (no /proc/sys/net/netfilter/nf_conntrack_count): nothing is "
                   "tracked here; nothing was read and no module was loaded")
    method = ctx.options.get("method", "auto")
    if method not in ("auto", "proc", "cli"):
        raise ValueError(f"[collectors.conntrack] method must be \"auto\", \"proc\" or \"cli\", not {method!r}")
    top = int(ctx.options.get("top", 20))
    t0 = time.monotonic()
    stats_before = read_proc_stats(proc)
    sysctls = read_sysctls(proc)

    table = TableSummary()
    proc_table = proc / "net" / "nf_conntrack"
    have_cli = which("conntrack") is not None
    used, table_file = None, None
    if method in ("auto", "proc") and proc_table.exists() and not os.access(proc_table, os.R_OK):
        # 0440 root: an unprivileged goldenhour reads the count, the limit and the stats, not the table
        ctx.partial(f"table not captured: {proc_table} is readable by root only (the conntrack CLI needs "
                    "CAP_NET_ADMIN too); count, max and stats only")
    elif method in ("auto", "proc") and proc_table.exists():
        table_file = stream_table(ctx, proc_table, "nf_conntrack.txt", table)
        used = "proc"
    elif method == "proc":
        raise RuntimeError(f"method = \"proc\" but {proc_table} does not exist (kernel without "
                           "CONFIG_NF_CONNTRACK_PROCFS); use \"auto\" or \"cli\"")
    elif have_cli:
        table_file = read_cli_table(ctx, table)
        used = "cli"
    elif method == "cli":
        raise RuntimeError("method = \"cli\" but conntrack (conntrack-tools) is not installed")
    else:
        ctx.partial(f"table not captured: no {proc_table} and no conntrack CLI; count, max and stats only")

    stats: dict[str, Any] | None = None
    ctx.copy(proc / "net" / "stat" / "nf_conntrack", "stat-nf_conntrack.txt")
    if have_cli and (used == "cli" or netlink_in_kernel()):
        res = ctx.run(["conntrack", "-S"], stdout="conntrack-S.txt", timeout_s=min(10.0, ctx.remaining()))
        if res.ok:
            rows = parse_stat_cli(ctx.path("conntrack-S.txt").read_text(errors="replace"))
            if rows:
                stats = {"source": "conntrack -S", "totals": stat_totals(rows), "per_cpu": rows}
    stats_after = read_proc_stats(proc)
    if stats is None and stats_after:
        stats = {"source": "/proc/net/stat/nf_conntrack", "totals": stat_totals(stats_after), "per_cpu": stats_after}
    delta = None
    if stats_before and stats_after:
        b, a = stat_totals(stats_before), stat_totals(stats_after)
        delta = {"seconds": round(time.monotonic() - t0, 3),
                 "counters": {k: a[k] - b.get(k, 0) for k in a if k not in STAT_NOT_SUMMED and a[k] != b.get(k, 0)}}

    sysctls_after = read_sysctls(proc)   # count at the end: closer to the table just read
    limits = parse_limits(sysctls_after or sysctls)
    summary: dict[str, Any] = {
        "method": used, "method_detail": {"proc": str(proc_table), "cli": "conntrack -L -o extended",
                                          None: "none (table not captured)"}[used],
        "netns": netns, **limits, "count_at_start": parse_limits(sysctls)["count"], "table_file": table_file,
        **table.to_json(top), "stats": stats, "stats_delta": delta, "sysctls": sysctls_after or sysctls,
    }
    ctx.write_json("conntrack.json", summary)
    ctx.note(method=used, count=limits["count"], max=limits["max"], fill_ratio=limits["fill_ratio"],
             entries=table.entries)
    if table.unparsed:
        ctx.partial(f"{table.unparsed} conntrack line(s) not understood (examples in conntrack.json)")


OPTIONS = {
    "method": Option("auto", str, "How the table is read: auto (/proc/net/nf_conntrack, else the conntrack CLI), "
                     "proc or cli.", choices=("auto", "proc", "cli")),
    "netns": Option("", str, "A network namespace file (/run/netns/NAME, /proc/PID/ns/net) whose table is read "
                    "instead of goldenhour's own (snapshot --netns sets it for one capture)."),
    "top": Option(20, int, "Entries per top list (talkers, destinations)."),
}

COLLECTOR = Collector(
    name="conntrack",
    summary="conntrack table, count vs nf_conntrack_max, drop/early_drop/insert_failed stats, per-state counts, "
            "top talkers",
    scope=Scope.HOST, collect=collect, timeout_s=30, volatility=25, check=availability,
    side_effects=("conntrack -L (method \"cli\", or no /proc/net/nf_conntrack) may make the kernel load "
                  "nf_conntrack_netlink",), options=OPTIONS)
