"""dmesg against the live kernel: markers written to /dev/kmsg come back exactly, with UTC
times, and nothing is consumed; the ``dmesg -r`` fallback finds them too."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

from collectors.dmesg import find_gaps, parse_dmesg_raw, parse_kmsg, read_kmsg, unescape


def _write_kmsg(text: str) -> None:
    with open("/dev/kmsg", "wb") as fh:
        fh.write(text.encode())


def _age_s(iso: str) -> float:
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    assert when.tzinfo is not None
    return abs((datetime.now(timezone.utc) - when).total_seconds())


def test_marker_written_to_kmsg_appears_with_utc_time_and_is_not_consumed(run_collector):
    marker = f"goldenhour-test-{uuid.uuid4()}"
    _write_kmsg(f"<4>{marker}\n")
    res = run_collector("dmesg")
    assert res.status == "ok", res.reason
    assert res.commands == []                         # read directly, no helper
    data = json.loads((res.out / "dmesg.json").read_text())
    assert data["method"] == "/dev/kmsg" and not data["seq_synthetic"]
    rec = next(r for r in data["records"] if r["message"] == marker)
    assert rec["level"] == "warn" and rec["facility"] == "user"
    assert rec["time"].endswith("Z") and _age_s(rec["time"]) < 300
    seqs = [r["seq"] for r in data["records"]]
    assert seqs == sorted(seqs) and data["last_seq"] >= rec["seq"]
    assert find_gaps(data["records"]) == data["gaps"]
    line = next(l for l in (res.out / "dmesg.txt").read_text().splitlines() if marker in l)
    assert line == f"[{rec['time']}] user.warn: {marker}"
    assert f";{marker}\n" in (res.out / "kmsg.txt").read_text()
    assert _age_s(data["boot_time"]) > 0
    # the ring buffer was not cleared: a fresh reader still finds the marker
    raw, _, _ = read_kmsg()
    assert marker.encode() in raw


def test_escaped_bytes_come_back_as_written(run_collector):
    marker = f"goldenhour-esc-{uuid.uuid4().hex[:8]}"
    text = f"{marker} tab\there back\\slash 10€ semi;colon, comma"
    _write_kmsg(f"<3>{text}\n")
    res = run_collector("dmesg")
    data = json.loads((res.out / "dmesg.json").read_text())
    rec = next(r for r in data["records"] if r["message"].startswith(marker))
    assert rec["message"] == text and rec["level"] == "err"
    raw = (res.out / "kmsg.txt").read_text()
    assert "\\x09" in raw and "\\x5c" in raw and "\\xe2\\x82\\xac" in raw      # how the kernel escaped it
    assert text in (res.out / "dmesg.txt").read_text()


def test_without_dev_kmsg_dmesg_raw_is_used_and_said(run_collector):
    marker = f"goldenhour-fallback-{uuid.uuid4()}"
    _write_kmsg(f"<6>{marker}\n")        # facility user (1), level info: raw priority 14
    res = run_collector("dmesg", options={"kmsg_path": "/nonexistent/kmsg"})
    assert res.status == "ok", res.reason
    assert res.notes["method"] == "dmesg -S -r" and "No such file" in res.notes["kmsg_error"]
    assert [c["argv"] for c in res.commands] == [["dmesg", "-S", "-r"]]
    data = json.loads((res.out / "dmesg.json").read_text())
    assert data["method"] == "dmesg -S -r" and data["seq_synthetic"]
    rec = next(r for r in data["records"] if r["message"] == marker)
    assert (rec["level"], rec["facility"]) == ("info", "user") and _age_s(rec["time"]) < 300
    assert marker in (res.out / "dmesg.txt").read_text()


# -- pure parsing ---------------------------------------------------------------

def test_parse_kmsg_continuations_escapes_commas_and_callers():
    text = ("6,1234,5000000,-;usb 1-1: new device, speed high\n"
            " SUBSYSTEM=usb\n DEVICE=c189:1\n"
            "3,1235,6000000,-,caller=T12;tab\\x09here; and; semicolons\n"
            "garbage line without a header\n"
            "12,1236,7000000,c;euro \\xe2\\x82\\xac back\\x5cslash\n"
            " NOTE=multi\\x0aline\n"
            "4,1237,8000000,-;\n"
            "x,y,z,-;bad header\n")
    recs = parse_kmsg(text)
    assert [r["seq"] for r in recs] == [1234, 1235, 1236, 1237]
    assert recs[0]["message"] == "usb 1-1: new device, speed high" and recs[0]["facility"] == "kern"
    assert recs[0]["fields"] == {"SUBSYSTEM": "usb", "DEVICE": "c189:1"} and recs[0]["usec"] == 5000000
    assert recs[1]["message"] == "tab\there; and; semicolons" and recs[1]["level"] == "err"
    assert recs[1]["caller"] == "T12" and recs[1]["fields"] == {}
    assert recs[2]["message"] == "euro € back\\slash" and recs[2]["facility"] == "user"
    assert recs[2]["level"] == "warn" and recs[2]["flags"] == "c"
    assert recs[2]["fields"] == {"NOTE": "multi\nline"}
    assert recs[3]["message"] == "" and recs[3]["level"] == "warn"


def test_unescape_keeps_invalid_utf8_visible():
    assert unescape("plain") == "plain"
    assert unescape("bad \\xff byte") == "bad \ufffd byte"
    assert unescape("not \\xZZ hex") == "not \\xZZ hex"


def test_parse_dmesg_raw_and_gaps():
    text = "<6>[    0.000000] Linux version 6.1\n<12>[ 6619.542564] user, message\nnoise\n<3>[12.5] short\n"
    recs = parse_kmsg(parse_dmesg_raw(text))
    assert [(r["level"], r["facility"], r["usec"], r["message"]) for r in recs] == [
        ("info", "kern", 0, "Linux version 6.1"), ("warn", "user", 6619542564, "user, message"),
        ("err", "kern", 12500000, "short")]
    assert find_gaps([{"seq": 1}, {"seq": 2}, {"seq": 7}]) == [{"after_seq": 2, "next_seq": 7, "lost": 4}]
