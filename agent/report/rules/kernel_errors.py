"""Kernel errors in the ring buffer: hung tasks, lockups, I/O errors, crashes, segfaults.

Triggers (kernel messages in ``dmesg.json``, matched on their text):
- hung task: ``INFO: task NAME:PID blocked for more than N seconds`` — critical;
- soft/hard lockup and RCU stall: ``BUG: soft lockup - CPU#N stuck for Ns!``,
  ``Watchdog detected hard LOCKUP``, ``rcu: INFO: rcu_sched detected stalls`` — critical;
- I/O error: ``I/O error, dev sda, sector N``, ``Buffer I/O error on dev``,
  filesystem errors (ext4, XFS, btrfs), a filesystem remounted read-only, NVMe
  timeouts/resets, ATA/SCSI errors — critical, one finding per device;
- kernel crash: ``Oops``, ``BUG: unable to handle``, ``kernel BUG at``, a kernel
  ``general protection fault``, ``Kernel panic``, machine-check (hardware) errors — critical;
- segfault and traps: ``NAME[PID]: segfault at ADDR ip ... in LIB``, ``traps: NAME[PID]
  general protection fault`` — warning, one finding per program;
- NIC trouble: ``NETDEV WATCHDOG: ... transmit queue N timed out``, a link down — warning.
Evidence: the matching records (``dmesg.txt`` line, ``seq``), up to six per finding.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator

from agent.report.model import CRITICAL, WARNING, Finding
from agent.report.rules import Rule
from agent.report.rules._util import cap_spread, dmesg_evidence, dmesg_records, join_names, plural, record_time


@dataclass(frozen=True)
class Kind:
    name: str
    severity: str
    patterns: tuple[re.Pattern[str], ...]
    key: Callable[[re.Match[str]], str]               # what findings are grouped by
    title: Callable[[str, int], str]
    explanation: str


def _g(name: str, default: str = "?") -> Callable[[re.Match[str]], str]:
    def get(m: re.Match[str]) -> str:
        try:
            return m.group(name) or default
        except IndexError:
            return default
    return get


KINDS = (
    Kind("hung_task", CRITICAL,
         (re.compile(r"INFO: task (?P<comm>.+?):(?P<pid>\d+) blocked for more than (?P<s>\d+) seconds"),),
         lambda m: f"{m.group('comm')} (pid {m.group('pid')})",
         lambda k, n: f"Hung task: {k} blocked" + (f" ({n} reports)" if n > 1 else ""),
         "The kernel's hung-task watchdog saw this task in uninterruptible sleep (D state) for longer than "
         "kernel.hung_task_timeout_secs. It was waiting on I/O or a kernel lock that did not come back: slow or "
         "failed storage, a hung NFS server, a stuck driver. Anything waiting on this task hangs with it."),
    Kind("soft_lockup", CRITICAL,
         (re.compile(r"soft lockup - CPU#(?P<cpu>\d+) stuck for (?P<s>\d+)s!(?: \[(?P<comm>.+?):(?P<pid>\d+)\])?"),
          re.compile(r"(?:Watchdog detected )?hard LOCKUP on cpu (?P<cpu>\d+)"),
          re.compile(r"rcu: INFO: rcu_\w+ (?:self-)?detected stalls?")),
         _g("cpu", ""),
         lambda k, n: (f"CPU {k} locked up" if k else "RCU stall") + (f" ({n} reports)" if n > 1 else ""),
         "A CPU ran kernel code without scheduling for seconds (soft lockup), stopped answering interrupts "
         "(hard lockup) or held up RCU. Everything scheduled on that CPU stalled; the usual causes are a kernel "
         "or driver bug, a livelock under heavy interrupt load, or a hypervisor that stopped the VM's CPU."),
    Kind("io_error", CRITICAL,
         (re.compile(r"I/O error,? dev (?P<dev>[\w.-]+), sector"),
          re.compile(r"Buffer I/O error on dev(?:ice)? (?P<dev>[\w.-]+)"),
          re.compile(r"blk_update_request: (?:critical \w+ )?(?:I/O|medium) error, dev (?P<dev>[\w.-]+)"),
          re.compile(r"end_request: I/O error, dev (?P<dev>[\w.-]+)"),
          re.compile(r"EXT4-fs error \(device (?P<dev>[\w.-]+)\)"),
          re.compile(r"EXT4-fs (?:warning )?\((?:device )?(?P<dev>[\w.-]+)\): .*(?:I/O error|error count|corrupt)"),
          re.compile(r"XFS \((?P<dev>[\w.-]+)\): "
                     r".*(?:I/O [Ee]rror|[Cc]orruption|metadata I/O|Filesystem has been shut)"),
          re.compile(r"BTRFS (?:error|critical) \(device (?P<dev>[\w.-]+)"),
          re.compile(r"\((?P<dev>[\w.-]+)\): Remounting filesystem read-only"),
          re.compile(r"nvme (?P<dev>nvme\w*): .*(?:timeout|resetting controller|controller is down)"),
          re.compile(r"(?P<dev>ata\d+(?:\.\d+)?): (?:failed command|exception Emask|hard resetting link)"),
          re.compile(r"sd \S+: \[(?P<dev>sd\w+)\] .*(?:FAILED Result|Sense Key : Medium Error)")),
         _g("dev", "storage"),
         lambda k, n: f"I/O errors on {k}" + (f" ({n} messages)" if n > 1 else ""),
         "The block layer, a filesystem or the storage driver reported failed reads or writes. Processes "
         "touching that device got errors or hung in D state; a filesystem may have gone read-only. Check the "
         "device's health (SMART, the cloud volume's status) and what was writing to it."),
    Kind("kernel_crash", CRITICAL,
         (re.compile(r"(?P<what>BUG: unable to handle (?:kernel )?\S+(?: \S+)?)"),
          re.compile(r"(?P<what>kernel BUG at \S+)"),
          re.compile(r"^(?P<what>Oops)[: ]"),
          re.compile(r"^(?P<what>general protection fault)"),
          re.compile(r"(?P<what>Kernel panic)"),
          re.compile(r"(?P<what>mce: \[Hardware Error\])"),
          re.compile(r"(?P<what>Machine check events logged)")),
         lambda m: _g("what")(m).split(" at ")[0],
         lambda k, n: f"Kernel error: {k}" + (f" ({n} messages)" if n > 1 else ""),
         "The kernel hit a bug, crashed a task in kernel mode, or the hardware reported a machine-check error. "
         "The task involved is dead or stuck and the kernel may be unstable until the host restarts; the "
         "records that follow (Call Trace) say which code path."),
    Kind("segfault", WARNING,
         (re.compile(r"(?P<comm>[^\s\[\]]+)\[(?P<pid>\d+)\]: segfault at (?P<addr>\w+) ip \w+ sp \w+ error \d+"
                     r"(?: in (?P<lib>[^\[\s]+))?"),
          re.compile(r"traps: (?P<comm>[^\s\[\]]+)\[(?P<pid>\d+)\] (?P<what>general protection fault|trap [\w ]+?) "
                     r"ip")),
         lambda m: m.group("comm"),
         lambda k, n: f"{k} crashed with a segmentation fault" + (f" ({n} times)" if n > 1 else ""),
         "The program touched memory it does not own (or ran an invalid instruction) and was killed with "
         "SIGSEGV/SIGILL. If it is a service, its connections dropped and its supervisor restarted it; the "
         "library named in the message is where it crashed."),
    Kind("nic", WARNING,
         (re.compile(r"NETDEV WATCHDOG: (?P<dev>\S+) .*transmit queue \d+ timed out"),
          re.compile(r"(?P<dev>[\w.-]+): (?:Link is Down|NIC Link is Down|link down)", re.I),
          re.compile(r"(?P<dev>[\w.-]+): (?:tx timeout|TX timeout|reset adapter)", re.I)),
         _g("dev", "network"),
         lambda k, n: f"Network interface {k}: transmit timeout or link down" + (f" ({n} messages)" if n > 1 else ""),
         "The network driver reported a stuck transmit queue (the watchdog reset it) or the link went down: "
         "packets were lost or delayed on that interface at that moment."),
)


def evaluate(b) -> Iterator[Finding]:
    groups: dict[tuple[str, str], list[tuple[dict, re.Match[str]]]] = {}
    order: list[tuple[str, str]] = []
    for r in dmesg_records(b):
        msg = str(r.get("message", ""))
        for kind in KINDS:
            for pat in kind.patterns:
                m = pat.search(msg)
                if m:
                    key = (kind.name, kind.key(m))
                    if key not in groups:
                        groups[key] = []
                        order.append(key)
                    groups[key].append((r, m))
                    break
            else:
                continue
            break
    kinds = {k.name: k for k in KINDS}
    for key in order:
        kind = kinds[key[0]]
        hits = groups[key]
        first = hits[0][0]
        expl = kind.explanation
        if kind.name == "segfault":
            pids = list(dict.fromkeys(m.group("pid") for _, m in reversed(hits)))   # latest first
            libs = sorted({m.groupdict().get("lib") or "" for _, m in hits} - {""})
            expl += (f" Process IDs (latest first): {join_names(pids)}."
                     + (f" Crashed in {join_names(libs)}." if libs else ""))
        if len(hits) > 1:
            t0, t1 = first.get("time", ""), hits[-1][0].get("time", "")
            expl += f" {plural(len(hits), 'message')} from {t0} to {t1}."
        yield Finding(kind.severity, kind.title(key[1], len(hits)), expl, rule="kernel_errors", host=b.host,
                      evidence=cap_spread([dmesg_evidence(b, r) for r, _ in hits]), time=record_time(first),
                      last_time=record_time(hits[-1][0]),
                      data={"kind": kind.name, "key": key[1], "count": len(hits)})


RULE = Rule(name="kernel_errors", summary="hung tasks, lockups, I/O errors, kernel crashes, segfaults, NIC timeouts",
            evaluate=evaluate, reads=("dmesg",), severity="critical (hung task, lockup, I/O, crash); warning "
            "(segfault, NIC)", order=11)
