"""The scratch ledger: every file goldenhour makes outside a staging folder is recorded before it
exists, and removed at the next start if the run that made it was killed.

Where it sits: like the pause ledger (agent/pauses.py), in ``<store>/state/scratch/``. Scratch
files are those a capture (or a fetch, or a report) needs on its way but that are not evidence
in a staging folder, which salvage already handles:

- the HPROF a JVM writes for ``heap`` (``<dir>/goldenhour-<incident>-<pid>-<rand>.hprof`` in
  the JVM's own filesystem, fetched through ``/proc/PID/root``), and which the JVM goes on
  writing after a killed ``jcmd``;
- the archive ``pack`` writes under ``.<bundle>.partial`` before publishing it;
- what ``fetch`` downloads (``.<bundle>.part-<pid>``) and extracts (``.goldenhour-extract-*``)
  before it is verified, and the folder ``report --fetch`` downloads into.

``record`` writes the entry (path, how to reach it, owner = this process's PID and start time)
before the file can exist; ``release`` removes the entry once the file is gone or has become
evidence. ``sweep`` runs at every start (``capture``, the daemon) and after each collector the
runner ends: entries whose owner is gone have their file (or folder) removed, then the entry.
A file in another mount namespace is reached through ``/proc/PID/root`` of the process that
writes it (a JVM in a container) while that process lives, else by its path when that process
shares our mount namespace. An entry whose file is not there (yet) stays while the process that
would write it lives, for ``GRACE_S``: a JVM still dumping when goldenhour was killed creates
the file later, and the next sweep removes it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from agent import procfs

GRACE_S = 3600.0


def _me() -> tuple[int, int | None]:
    try:
        return os.getpid(), procfs.start_time(os.getpid())
    except procfs.ProcError:
        return os.getpid(), None


def _same_mount_ns(pid: int) -> bool:
    try:
        return os.stat("/proc/self/ns/mnt").st_ino == os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return False


def record(ledger: Path | str | None, path: str | os.PathLike[str], what: str,
           writer: procfs.Identity | None = None) -> Path | None:
    """Record the scratch file ``path`` before it exists; returns the entry (None without a ledger).

    ``writer``: the process that writes the file, when it is not goldenhour (a JVM): ``path`` is
    then the path in that process's filesystem, reached through its ``/proc/PID/root``.
    """
    if not ledger:
        return None
    ledger = Path(ledger)
    pid, start = _me()
    entry: dict[str, Any] = {"path": str(path), "what": what, "owner_pid": pid, "owner_start": start,
                             "at": time.time()}
    if writer is not None:
        entry.update(writer_pid=writer.pid, writer_start=writer.start_time,
                     writer_same_mount_ns=_same_mount_ns(writer.pid))
    name = ledger / f"{pid}-{os.urandom(4).hex()}.json"
    tmp = name.with_suffix(".tmp")
    try:
        ledger.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, name)
    except OSError:              # a store we cannot write (a responder's laptop): nothing to record in
        tmp.unlink(missing_ok=True)
        return None
    return name


def release(entry: Path | None) -> None:
    """The scratch file is gone, or is evidence now: forget it."""
    if entry is not None:
        entry.unlink(missing_ok=True)


@contextmanager
def recorded(ledger: Path | str | None, path: str | os.PathLike[str], what: str,
             writer: procfs.Identity | None = None) -> Iterator[Path | None]:
    """``record`` for the duration of a block; the block removes the file (or makes it evidence)."""
    entry = record(ledger, path, what, writer)
    try:
        yield entry
    finally:
        release(entry)


def sweep_path(ledger: Path | str | None, path: str | os.PathLike[str]) -> None:
    """Forget this process's entries for ``path`` (the caller removed it), without the entry at hand."""
    if not ledger or not Path(ledger).is_dir():
        return
    for name in Path(ledger).glob(f"{os.getpid()}-*.json"):
        try:
            if json.loads(name.read_text()).get("path") == str(path):
                name.unlink(missing_ok=True)
        except (OSError, ValueError):
            continue


def _alive(pid: Any, start: Any) -> bool:
    if not pid:
        return False
    try:
        st = procfs.stat(int(pid))
    except procfs.ProcError:
        return False
    return st.state != "Z" and (start is None or st.starttime == start)


def _host_path(entry: dict[str, Any]) -> tuple[str | None, bool]:
    """Where the file is from here, and whether whoever writes it still lives."""
    path = entry["path"]
    if "writer_pid" not in entry:
        return path, False
    alive = _alive(entry["writer_pid"], entry.get("writer_start"))
    if alive:
        return f"/proc/{entry['writer_pid']}/root{path}", True
    return (path if entry.get("writer_same_mount_ns") else None), False


def _remove(path: str) -> bool:
    """Remove a file or a folder; True if something was there."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def sweep(ledger: Path | str | None) -> list[dict[str, Any]]:
    """Remove the scratch files of runs that died (entries whose owner is gone); returns what was done."""
    done: list[dict[str, Any]] = []
    if not ledger or not Path(ledger).is_dir():
        return done
    for name in sorted(Path(ledger).glob("*.json")):
        try:
            entry = json.loads(name.read_text())
        except (OSError, ValueError):
            name.unlink(missing_ok=True)
            continue
        if _alive(entry.get("owner_pid"), entry.get("owner_start")):
            continue                      # its run is still going: its business
        path, writer_alive = _host_path(entry)
        res = {"path": entry.get("path"), "what": entry.get("what")}
        if path is None:
            res["removed"] = False
            res["why"] = "its writer is gone and its filesystem is not reachable from here"
        else:
            try:
                res["removed"] = _remove(path)
            except OSError as exc:
                res.update(removed=False, why=exc.strerror or str(exc))
                done.append(res)
                continue
            if not res["removed"] and writer_alive and time.time() - float(entry.get("at", 0)) < GRACE_S:
                continue                  # not written yet by a process still working on it: next sweep
        name.unlink(missing_ok=True)
        if res.get("removed") or res.get("why"):
            done.append(res)
    return done
