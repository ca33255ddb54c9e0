"""A Chrome DevTools Protocol client for running Node.js processes, that never leaves an
inspector open. The WebSocket is the ``websockets`` package's synchronous client (``WS``).

Where it sits: the ``threads`` collector (diagnostic report, main-thread JS stack) and the
``heap`` collector (heap snapshot) use ``Inspector``; the pause ledger (``agent.pauses``) runs
``python -m agent.nodecdp close-left-open ENTRY_JSON`` at start-up for an inspector a dead
goldenhour may have left open.

Opening (``Inspector.__enter__``), each step a guard from the danger list:

1. the port: ``--inspect-port``/``--inspect[-brk]=[host:]port`` on the command line or in
   ``NODE_OPTIONS``, else 9229;
2. enter the target's network namespace (``setns``): the inspector listens there, and a
   client in the wrong namespace would fail *and leave the port open*. Only ever done in a
   process of our own (a collector child, or the ledger's helper), never in goldenhour itself;
3. if the port already answers, the target must be the one behind it (``process.pid`` equals
   the last ``NSpid`` field): an inspector we did not open is used as it is and left open;
   anyone else's port means refusal, no signal;
4. record "inspector opened on (pid, start time)" in the ledger *before* signalling;
5. ``SIGUSR1`` through ``agent.safety.send`` (identity by pidfd, SigCgt must have SIGUSR1);
6. connect from this thread (so the socket is made in the target's namespace; the kernel's
   ``SIOCGSKNS`` confirms it), check ``process.pid`` again.

Every wait is bounded: a command's answer by its timeout, the closing handshake by
``CLOSE_TIMEOUT_S``, a message by ``MAX_MESSAGE`` (a heap snapshot is many 100 KiB chunks, each
written to disk as it arrives). ``/json/list`` and the WebSocket never go through an
``http_proxy`` from the environment.

Closing (``__exit__``, also on errors and on SIGTERM): ``inspector.close()`` evaluated in the
target (runs via a V8 interrupt, so it works on a stuck event loop too), wait until the port
no longer answers, then remove the ledger entry. If the port stays open the entry stays, and
the next goldenhour start tries again.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from websockets import exceptions as ws_exc
from websockets.sync.client import connect as ws_connect

from agent import procfs

CLONE_NEWNET = 0x40000000
CLOSE_EXPR = ("(process.getBuiltinModule ? process.getBuiltinModule('node:inspector')"
              " : process.mainModule.require('inspector')).close()")


class CDPError(Exception):
    pass


# -- where the inspector listens -------------------------------------------------

def _proc_argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _node_options(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            for item in fh.read().split(b"\0"):
                if item.startswith(b"NODE_OPTIONS="):
                    return item[len(b"NODE_OPTIONS="):].decode("utf-8", "replace").split()
    except OSError:
        pass
    return []


def inspector_address(pid: int) -> tuple[str, int, bool]:
    """(host to connect to, port, started with --inspect*) from the command line and NODE_OPTIONS."""
    host, port, started = "127.0.0.1", 9229, False
    for a in _node_options(pid) + _proc_argv(pid):
        m = re.match(r"^--(inspect(?:-brk|-wait)?|inspect-port|debug-port)(?:=(.*))?$", a)
        if not m:
            continue
        if m.group(1) != "inspect-port" and m.group(1) != "debug-port":
            started = True
        val = m.group(2)
        if not val:
            continue
        h, _, p = val.rpartition(":")
        if p.isdigit():
            port = int(p)
        if h and h not in ("0.0.0.0", "[::]", "::", "localhost"):
            host = h.strip("[]")
    return host, port, started


def enter_netns(pid: int) -> bool:
    """setns(2) this process into ``pid``'s network namespace; False if it is already ours."""
    if os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        return False
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):
            os.setns(fd, CLONE_NEWNET)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
    return True


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# Never through an ``http_proxy`` from the environment: the inspector is local to the target's
# network namespace, and a proxy would be asked for it from wherever the proxy runs.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def list_targets(host: str, port: int, timeout: float = 1.0) -> list[dict[str, Any]]:
    h = f"[{host}]" if ":" in host else host
    with _NO_PROXY.open(f"http://{h}:{port}/json/list", timeout=timeout) as r:
        return json.load(r)


# -- the WebSocket and the CDP session -----------------------------------------------

# The biggest message we accept. Heap snapshots arrive as many ``addHeapSnapshotChunk`` messages
# of 100 KiB each (V8's chunk size; each is written to disk as it comes), so this only bounds
# single answers: a diagnostic report with every libuv handle, a Chromium screenshot.
MAX_MESSAGE = 256 * 2**20
# How long the closing handshake may take before we drop the TCP connection ourselves.
CLOSE_TIMEOUT_S = 1.0
SIOCGSKNS = 0x894C        # ioctl: a socket's network namespace (Linux >= 4.9)


def socket_netns(sock: socket.socket) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the network namespace ``sock`` lives in; None if the kernel won't say."""
    try:
        fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    finally:
        os.close(fd)


class WS:
    """A WebSocket to a CDP endpoint (``websockets``' synchronous client): JSON messages out and in.

    The TCP socket is made here, in the calling thread, so it lives in that thread's network
    namespace (the target's, after ``enter_netns``), and is handed to ``websockets`` as ``sock``
    (which also keeps any ``*_proxy`` environment out of it). Set for Node's inspector: no
    keepalive pings (its server drops a connection on a ping frame), no compression (it offers
    none; nothing to spend CPU on while the target waits), messages up to ``max_size``, and every
    wait bounded: ``recv`` by its timeout (default: the one given here), the closing handshake by
    ``CLOSE_TIMEOUT_S``, a blocked send by the socket's timeout.
    """

    def __init__(self, url: str, timeout: float = 30, max_size: int = MAX_MESSAGE):
        if not url.startswith("ws://"):
            raise CDPError(f"unexpected debugger URL {url!r}")
        hostport = url[5:].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        if not port.isdigit():
            raise CDPError(f"unexpected debugger URL {url!r}")
        self.timeout = timeout
        self.s = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        self._stack = contextlib.ExitStack()
        try:
            self.conn = self._stack.enter_context(ws_connect(
                url, sock=self.s, open_timeout=timeout, compression=None, ping_interval=None,
                close_timeout=CLOSE_TIMEOUT_S, max_size=max_size))
        except ws_exc.InvalidHandshake as exc:
            self.s.close()
            raise ConnectionError(f"WebSocket handshake with {hostport} failed: {exc}") from None
        except BaseException:
            self.s.close()
            raise
        self.s.settimeout(timeout)      # bounds a send the peer does not read; reads wait in recv()

    def send(self, obj: Any) -> None:
        try:
            self.conn.send(json.dumps(obj))
        except ws_exc.ConnectionClosed as exc:
            raise ConnectionError(f"the connection closed: {exc}") from None

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message; TimeoutError after ``timeout`` s (None: the timeout given at connect)."""
        try:
            data = self.conn.recv(self.timeout if timeout is None else max(0.0, timeout), decode=False)
        except ws_exc.ConnectionClosed as exc:
            raise ConnectionError(f"the connection closed: {exc}") from None
        return json.loads(data)

    def close(self) -> None:
        """The closing handshake (at most ``CLOSE_TIMEOUT_S``), then the socket is closed."""
        with contextlib.suppress(Exception):
            self._stack.close()
        with contextlib.suppress(OSError):
            self.s.close()

    def hang_up(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        with contextlib.suppress(OSError):
            self.s.shutdown(socket.SHUT_RDWR)
        self.close()


class Session:
    def __init__(self, ws: WS):
        self.ws, self.next_id = ws, 0
        self.timings: list[dict[str, Any]] = []   # (method, seconds): the event loop was busy at most this
        self.answers: dict[int, dict[str, Any]] = {}   # answers to commands sent with ``send`` (not waited for)

    def send(self, method: str, **params: Any) -> int:
        """Send one command without waiting; its answer is kept in ``answers`` when it comes (see ``answer``)."""
        self.next_id += 1
        self.ws.send({"id": self.next_id, "method": method, "params": params})
        return self.next_id

    def answer(self, my: int, until: float) -> dict[str, Any] | None:
        """The answer to command ``my`` (sent with ``send``), waiting until the monotonic time ``until``; None if
        it has not come by then."""
        while my not in self.answers:
            left = until - time.monotonic()
            if left <= 0:
                return None
            try:
                m = self.ws.recv(timeout=left)
            except TimeoutError:
                return None
            if isinstance(m.get("id"), int):
                self.answers[m["id"]] = m
        return self.answers.pop(my)

    def call(self, method: str, on_event: Callable[[dict[str, Any]], None] | None = None,
             timeout: float | None = None, **params: Any) -> dict[str, Any]:
        """Send one command; events before its answer go to ``on_event`` (heap chunks: to disk as
        they come). TimeoutError if the answer has not come ``timeout`` s (default 60) after sending."""
        self.next_id += 1
        my = self.next_id
        t0 = time.monotonic()
        deadline = t0 + (timeout if timeout is not None else 60)
        self.ws.send({"id": my, "method": method, "params": params})
        while True:
            m = self.ws.recv(timeout=deadline - time.monotonic())
            if m.get("id") == my:
                self.timings.append({"method": method, "s": round(time.monotonic() - t0, 4)})
                if "error" in m:
                    raise CDPError(f"{method}: {m['error'].get('message', m['error'])}")
                return m.get("result", {})
            if isinstance(m.get("id"), int):
                self.answers[m["id"]] = m              # a command sent with ``send``
                continue
            if on_event:
                on_event(m)

    def evaluate(self, expr: str, timeout: float | None = None) -> Any:
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, timeout=timeout)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CDPError(f"evaluation failed: {(d.get('exception') or {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")


# -- the inspector's lifecycle ---------------------------------------------------------

def _nspid(pid: int) -> int:
    """The PID as the process sees itself (last NSpid field); raises ``procfs.ProcError``."""
    nspid = procfs.status(pid).get("NSpid", "").split()
    return int(nspid[-1]) if nspid else pid


def _netns_of(pid: int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the process's network namespace, as ``socket_netns`` gives a socket's."""
    try:
        st = os.stat(procfs.path(pid, "ns/net"))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _connect(host: str, port: int, pid: int) -> tuple[WS, Session]:
    targets = list_targets(host, port)
    if not targets:
        raise CDPError(f"the inspector on {host}:{port} lists no targets")
    ws = WS(targets[0]["webSocketDebuggerUrl"])
    ours, theirs_ns = socket_netns(ws.s), _netns_of(pid)
    if ours is not None and theirs_ns is not None and ours != theirs_ns:
        ws.close()
        raise CDPError(f"the connection to {host}:{port} is not in process {pid}'s network namespace: "
                       "refusing to use it")
    sess = Session(ws)
    try:
        theirs = sess.evaluate("process.pid", timeout=10)
    except Exception:
        ws.close()
        raise
    try:
        nspid = _nspid(pid)
    except procfs.ProcError as exc:
        ws.close()
        raise CDPError(f"cannot check the inspector's process against {pid}: {exc}") from None
    if int(theirs) != nspid:
        ws.close()
        raise CDPError(f"the inspector on {host}:{port} belongs to PID {theirs} (in its namespace), "
                       f"not to {pid}: refusing to use it")
    return ws, sess


def close_via(sess: Session, ws: WS, host: str, port: int, pid: int | None = None, wait_s: float = 3.0,
              grace_s: float = 0.25) -> bool:
    """Evaluate inspector.close() in the target; True once the port no longer answers.

    ``inspector.close()`` blocks the target's main thread until every session has gone, and Node
    usually ends ours itself. When it does not within ``grace_s`` we hang up ourselves (waiting
    longer would only keep the target blocked); if the port is still open then, once more."""
    for attempt in range(2):
        sess.next_id += 1
        with contextlib.suppress(OSError, ConnectionError):
            ws.send({"id": sess.next_id, "method": "Runtime.evaluate", "params": {"expression": CLOSE_EXPR}})
            grace = time.monotonic() + grace_s
            while True:         # until Node ends our session, or the grace period ends
                ws.recv(timeout=grace - time.monotonic())
        ws.hang_up()            # the target waits for it: no closing handshake
        if _port_closes(host, port, wait_s):
            return True
        if attempt == 0 and pid is not None:
            try:
                ws, sess = _connect(host, port, pid)      # still the target's inspector?
            except (OSError, ConnectionError, CDPError, ValueError):
                return _port_closes(host, port, wait_s)   # or closing: that ends new sessions first
    return False


def _port_closes(host: str, port: int, wait_s: float) -> bool:
    """True once nothing answers on the port, polled for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while port_open(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class _Terminated(BaseException):
    pass


class Inspector:
    """``with Inspector(pid, start_time, ledger_dir) as sess:`` a verified CDP session, always closed.

    Must run in a process of goldenhour's own that may change network namespace (a collector
    child). ``facts`` collects what happened, for the manifest.
    """

    def __init__(self, pid: int, start_time: int, ledger_dir: str | os.PathLike[str] | None,
                 open_wait_s: float = 5.0):
        self.pid, self.start_time = pid, start_time
        self.ledger_dir = Path(ledger_dir) if ledger_dir else None
        self.open_wait_s = open_wait_s
        self.host, self.port, self.started_with_inspector = inspector_address(pid)
        self.facts: dict[str, Any] = {"port": self.port, "host": self.host}
        self.ws: WS | None = None
        self.sess: Session | None = None
        self.we_opened = False
        self.entry: Path | None = None
        self._old_term: Any = None

    def _ledger_entry(self) -> Path | None:
        if self.ledger_dir is None:
            return None
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        path = self.ledger_dir / f"{self.pid}-{self.start_time}-inspector.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"kind": "inspector", "pid": self.pid, "start_time": self.start_time,
                                   "host": self.host, "port": self.port, "owner_pid": os.getpid(),
                                   "owner_start": procfs.start_time(os.getpid()), "at": time.time()}))
        os.replace(tmp, path)
        return path

    def __enter__(self) -> Session:
        from agent import safety
        if threading.current_thread() is threading.main_thread():
            def on_term(signum: int, frame: Any) -> None:
                raise _Terminated()
            self._old_term = signal.signal(signal.SIGTERM, on_term)
        try:
            self.facts["netns_entered"] = enter_netns(self.pid)
            if port_open(self.host, self.port):
                # someone listens already: only the target itself is acceptable, and then we leave it open
                self.ws, self.sess = _connect(self.host, self.port, self.pid)
                self.facts["inspector_was_open"] = True
                self._note_socket()
                return self.sess
            safety.check_signal(self.pid, signal.SIGUSR1, "node")
            self.entry = self._ledger_entry()
            self.we_opened = True
            safety.send(self.pid, self.start_time, signal.SIGUSR1, "node")
            self.facts["opened_by"] = "SIGUSR1"
            deadline = time.monotonic() + self.open_wait_s
            while True:
                try:
                    list_targets(self.host, self.port, timeout=0.5)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise CDPError(f"the inspector did not open on {self.host}:{self.port} within "
                                       f"{self.open_wait_s:g} s (port taken, or --disable-sigusr1)") from None
                    time.sleep(0.02)
            self.ws, self.sess = _connect(self.host, self.port, self.pid)
            self._note_socket()
            return self.sess
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise

    def _note_socket(self) -> None:
        """For the manifest: the kernel's word that our socket is in the target's namespace
        (``_connect`` refuses it otherwise); None when the kernel would not say."""
        ours = socket_netns(self.ws.s) if self.ws is not None else None
        self.facts["socket_in_target_netns"] = None if ours is None else ours == _netns_of(self.pid)

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.we_opened:
                closed = False
                if self.sess is not None and self.ws is not None:
                    closed = close_via(self.sess, self.ws, self.host, self.port, self.pid)
                elif not port_open(self.host, self.port):
                    closed = True
                else:
                    with contextlib.suppress(Exception):
                        ws, sess = _connect(self.host, self.port, self.pid)
                        closed = close_via(sess, ws, self.host, self.port, self.pid)
                self.facts["inspector_closed"] = closed
                if closed and self.entry is not None:
                    self.entry.unlink(missing_ok=True)
            elif self.ws is not None:
                self.ws.close()     # not ours to close: leave it as we found it
        finally:
            if self._old_term is not None:
                signal.signal(signal.SIGTERM, self._old_term)
                self._old_term = None


def close_left_open(entry: dict[str, Any]) -> dict[str, Any]:
    """For the ledger: close an inspector a dead goldenhour opened on (pid, start time)."""
    pid = int(entry["pid"])
    out: dict[str, Any] = {"pid": pid, "kind": "inspector"}
    start = entry.get("start_time")
    if start is None or not procfs.Identity(pid, int(start)).alive():
        out["state_after"] = "gone"
        return out
    host, port = entry.get("host", "127.0.0.1"), int(entry.get("port", 9229))
    try:
        enter_netns(pid)
        if not port_open(host, port):
            out["inspector"] = "already closed"
            return out
        try:
            ws, sess = _connect(host, port, pid)
        except (OSError, ConnectionError):
            # An inspector.close() the collector sent runs once the target's main thread is free
            # (after a heap snapshot, say) and first ends every session, ours too: give it time.
            if not _port_closes(host, port, 3.0):
                raise
            out["inspector"] = "closed"
            return out
        out["inspector"] = "closed" if close_via(sess, ws, host, port, pid) else "still open"
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        out["inspector"] = f"not closed: {type(exc).__name__}: {exc}"
    return out


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "close-left-open":
        print(json.dumps(close_left_open(json.loads(argv[1]))))
        return 0
    print("usage: python -m agent.nodecdp close-left-open ENTRY_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
