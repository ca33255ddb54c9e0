"""agent.nodecdp's WebSocket (the ``websockets`` client) against a real Node inspector: waits are
bounded and a timeout leaves the session usable, an answer over the size cap is refused without
harm to the target, and the socket is made in the calling thread's network namespace, so a
collector that entered the target's namespace talks to the target's inspector and no other."""
from __future__ import annotations

import socket
import threading

import pytest

from agent import nodecdp
from agent.nodecdp import WS, Session
from tests.helpers.proc import Proc

# --inspect on a free port; the target prints the inspector's URL once it listens
NODE = ["node", "--inspect=127.0.0.1:0", "-e",
        "console.log('READY', require('inspector').url()); setInterval(() => {}, 1000)"]


@pytest.fixture
def inspected():
    p = Proc(NODE)
    yield p
    p.stop()


def test_a_timeout_leaves_the_session_usable_and_answers_come_back(inspected):
    ws = WS(inspected.ready.split()[1], timeout=10)
    try:
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.2)                      # nothing was asked: nothing comes
        sess = Session(ws)
        assert sess.evaluate("process.pid") == inspected.pid
        big = sess.evaluate("'x'.repeat(3 * 2**20)")  # over websockets' default cap (1 MiB), under ours
        assert big == "x" * (3 * 2**20)
        assert [t["method"] for t in sess.timings] == ["Runtime.evaluate"] * 2
    finally:
        ws.close()
    assert inspected.alive()


def test_an_answer_over_the_size_cap_is_refused_and_the_target_keeps_running(inspected):
    ws = WS(inspected.ready.split()[1], timeout=10, max_size=64 * 1024)
    try:
        sess = Session(ws)
        with pytest.raises(ConnectionError, match="closed"):
            sess.evaluate("'x'.repeat(200000)", timeout=10)
    finally:
        ws.close()
    ws = WS(inspected.ready.split()[1], timeout=10)   # the inspector still serves a new session
    try:
        assert Session(ws).evaluate("1 + 1") == 2
    finally:
        ws.close()
    assert inspected.alive()


def test_the_socket_is_made_in_the_calling_threads_network_namespace(tmp_path):
    """The collector calls setns in its own thread, then WS(): the connection must live there."""
    t = Proc(["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *NODE])
    try:
        url = t.ready.split()[1]
        with pytest.raises(OSError):
            WS(url, timeout=2)                        # from our namespace: nobody listens there
        seen: dict = {}

        def in_target_ns() -> None:                   # setns affects this thread only
            try:
                assert nodecdp.enter_netns(t.pid) is True
                ws = WS(url, timeout=10)
                try:
                    seen["socket_ns"] = nodecdp.socket_netns(ws.s)
                    seen["pid"] = Session(ws).evaluate("process.pid")
                finally:
                    ws.close()
            except BaseException as exc:  # noqa: BLE001 - reported to the test below
                seen["error"] = exc
        th = threading.Thread(target=in_target_ns)
        th.start()
        th.join(60)
        assert "error" not in seen, seen.get("error")
        assert seen["socket_ns"] == nodecdp._netns_of(t.pid)
        with socket.socket() as here:
            assert seen["socket_ns"] != nodecdp.socket_netns(here)          # not the namespace we are in
        assert seen["pid"] == t.pid                   # the target's own inspector
    finally:
        t.stop()
