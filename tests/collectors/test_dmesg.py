"""dmesg against the live kernel: a marker written to /dev/kmsg comes back, and nothing is consumed."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

from collectors.dmesg import parse_kmsg, read_kmsg


def _write_kmsg(text: str) -> None:
    with open("/dev/kmsg", "w") as fh:
        fh.write(text)


def test_marker_written_to_kmsg_appears_with_utc_time(run_collector):
    marker = f"goldenhour-test-{uuid.uuid4()}"
    _write_kmsg(f"<4>{marker}\n")
    res = run_collector("dmesg")
    assert res.status == "ok", res.reason
    assert marker in (res.out / "dmesg.txt").read_text()
    data = json.loads((res.out / "dmesg.json").read_text())
    rec = next(r for r in data["records"] if r["message"] == marker)
    assert rec["level"] == "warn"
    when = datetime.fromisoformat(rec["time"].replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - when).total_seconds()) < 300
    assert data["method"] == "/dev/kmsg"
    # the ring buffer was not cleared: the marker can still be read afterwards
    text, _ = read_kmsg()
    assert marker in text


def test_parse_kmsg_handles_continuations_escapes_and_commas():
    text = ("6,1234,5000000,-;usb 1-1: new device, speed high\n"
            " SUBSYSTEM=usb\n DEVICE=c189:1\n"
            "3,1235,6000000,-,caller=T12;tab\\x09here; and; semicolons\n"
            "garbage line without a header\n")
    recs = parse_kmsg(text)
    assert [r["seq"] for r in recs] == [1234, 1235]
    assert recs[0]["message"] == "usb 1-1: new device, speed high"
    assert recs[0]["fields"] == {"SUBSYSTEM": "usb", "DEVICE": "c189:1"}
    assert recs[1]["message"] == "tab\there; and; semicolons" and recs[1]["level"] == "err"
