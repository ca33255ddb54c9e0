"""Thread dumps, as the report reads them: normalised threads, identical-stack groups, lock waits, cycles.

The ``threads`` collector writes ``collectors/threads/<pid>/threads.json``:
``{"runtime", "threads": [{"name", "tid", "state", "frames": [{"function", "file",
"line"}], ...}], "deadlocks": [...]}`` (frames innermost first). ``normalise`` also
takes py-spy's own ``--json`` list and tolerates other spellings (``filename``,
``name``, ``thread_name``...), so a dump is read whatever wrote it.

A thread is *blocked on a lock* when its state says so (JVM ``BLOCKED``, or a
``waiting_on``/``waiting_to_lock`` field) or when its native frames are inside a
lock acquisition (CPython ``lock_PyThread_acquire_lock``, glibc
``__lll_lock_wait``/``pthread_mutex_lock``, Go ``sync.(*Mutex).Lock``, Java
``ReentrantLock.lock``), unless the innermost code is a library that waits by design
(Python's ``threading``/``queue``/``asyncio``, ``java.util.concurrent`` queues and
pools, ``Object.wait``, Go's ``WaitGroup``/``Cond``). A
*deadlock* is either reported by the runtime (``deadlocks``, e.g. the JVM's "Found
one Java-level deadlock") or a cycle in the wait-for graph built from which thread
holds the lock another waits on.

The *first application frame* of a thread is the innermost frame of the program's own code
(or a third-party library it ships): not native, not the runtime's standard library
(CPython's ``lib/pythonX.Y`` outside ``site-packages``, Go packages without a domain other
than ``main``, ``java.*``/``jdk.*``/``sun.*``, Node's ``node:internal``). Groups are headed by
it, and a *pile-up* is many parked threads whose first application frame is the same
(``pileups``). Wait states lose their volatile suffixes (Delve's ``chan send 2395092582988``,
pprof's ``chan send, 5 minutes``) so one wait is one group.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

LOCK_NATIVE = re.compile(r"lock_PyThread_acquire_lock|PyThread_acquire_lock|rlock_acquire|__lll_lock_wait|"
                         r"pthread_mutex_(?:timed)?lock|pthread_rwlock_\w*lock|sync\.\(\*RW?Mutex\)\.R?Lock|"
                         r"sync\.runtime_SemacquireMutex|ReentrantLock\.lock|ReentrantReadWriteLock\S*\.lock|"
                         r"AbstractQueuedSynchronizer\.acquire\b")
# library code that waits by design (an idle pool thread, a join): not "blocked on a lock"
LIB_WAITS = re.compile(r"^(?:java\.util\.concurrent\.(?:LinkedBlockingQueue|ArrayBlockingQueue|SynchronousQueue|"
                       r"LinkedTransferQueue|DelayQueue|ThreadPoolExecutor|ScheduledThreadPoolExecutor\S*|"
                       r"CountDownLatch|CyclicBarrier|Semaphore|FutureTask|CompletableFuture|ForkJoinPool)\S*|"
                       r"java\.lang\.(?:Object\.wait|Thread\.(?:sleep|join))\S*|"
                       r"sync\.\(\*(?:WaitGroup|Cond)\)\.\w+|runtime\.gopark|internal/poll\.\S+)")
DESIGN_FILES = re.compile(r"(?:^|/)(?:threading|queue|selectors|socket|socketserver|asyncio/\w+|"
                          r"concurrent/futures/\w+|multiprocessing/\w+)\.py$")
# the runtimes' own code, never "the application"
PY_STDLIB = re.compile(r"(?:^|/)lib(?:64)?/python\d+(?:\.\d+)?/(?!(?:site|dist)-packages/)|^<frozen |^<string>$")
GO_ROOT = re.compile(r"/(?:go(?:-\d[\w.]*)?|golang)/src/|/usr/local/go/src/|^\$GOROOT/")
JVM_STDLIB = re.compile(r"^(?:java|javax|jdk|sun|com\.sun|kotlin|kotlinx\.coroutines|scala)\.")
NODE_INTERNAL = re.compile(r"^(?:node:|internal/|events\.js$|timers\.js$)")
NATIVE_SYSTEM = re.compile(r"(?:^|/)(?:libc[.-]|libpthread|ld-linux|libstdc\+\+|libgcc_s|libm[.-]|libdl[.-]|"
                           r"linux-vdso|\[vdso\])")
# a wait state's volatile tail: Delve's wait-since counter, pprof's duration
VOLATILE_STATE = re.compile(r"(?:,\s*\d+\s+minutes?|\s+\d{4,})\s*$")


def clean_state(state: str) -> str:
    """A wait state without what changes from one dump to the next (``chan send 2395092582988`` -> ``chan send``)."""
    return VOLATILE_STATE.sub("", state.strip())


@dataclass
class Frame:
    function: str
    file: str = ""
    line: int | None = None
    native: bool = False

    def label(self) -> str:
        where = self.file.rsplit("/", 1)[-1] if self.file else ""
        if where and self.line is not None:
            return f"{self.function} ({where}:{self.line})"
        return f"{self.function} ({where})" if where else self.function


@dataclass
class Thread:
    name: str
    tid: Any = None
    state: str = ""
    frames: list[Frame] = field(default_factory=list)
    active: bool | None = None
    waiting_on: str | None = None        # lock id the thread waits for
    holds: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    weight: int = 1                      # threads this entry stands for (Delve's grouped listing: one per example)

    def signature(self) -> tuple:
        return tuple((f.function, f.file, f.line) for f in self.frames)

    def top_code(self) -> Frame | None:
        """The innermost non-native frame (where the program's own code is)."""
        for f in self.frames:
            if not f.native:
                return f
        return self.frames[0] if self.frames else None

    def blocked_reason(self) -> str | None:
        st = self.state.upper()
        if self.waiting_on:
            return f"waiting to lock {self.waiting_on}"
        if st.startswith("BLOCKED"):
            return "blocked on a monitor"
        native_lock = next((f for f in self.frames[:12] if LOCK_NATIVE.search(f.function)), None)
        if native_lock is None:
            return None
        top = self.top_code()
        if top is not None and top is not native_lock and not LOCK_NATIVE.search(top.function):
            if DESIGN_FILES.search(top.file or "") or LIB_WAITS.search(top.function):
                return None
        return f"acquiring a lock ({native_lock.function})"


@dataclass
class Dump:
    runtime: str
    threads: list[Thread]
    deadlocks: list[dict[str, Any]]
    source: str                           # file in the bundle
    meta: dict[str, Any] = field(default_factory=dict)   # the rest of threads.json (tool, event_loop...)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _frame(f: Any) -> Frame | None:
    if isinstance(f, str):
        return Frame(function=f)
    if not isinstance(f, dict):
        return None
    fn = f.get("function") or f.get("name") or f.get("func") or f.get("method") or "?"
    if f.get("class") and "." not in str(fn):
        fn = f"{f['class']}.{fn}"
    file = f.get("file") or f.get("filename") or f.get("module") or f.get("source") or ""
    line = _int(f.get("line") or f.get("lineno"))
    source = str(file).endswith((".py", ".java", ".go", ".js", ".mjs", ".rb", ".kt", ".scala")) or \
        str(file).startswith("<")
    # native: said so, or a shared object / executable without a source line (py-spy --native frames)
    native = bool(f.get("native")) or (not source and (bool(re.search(r"\.so(?:\.[\d.]+)?$|\(lib", str(file)))
                                                       or (not line and bool(file))))
    return Frame(function=str(fn), file=str(file), line=line, native=native)


def _thread(t: dict[str, Any]) -> Thread:
    frames = [fr for fr in (_frame(f) for f in t.get("frames") or t.get("stack") or []) if fr is not None]
    state = clean_state(str(t.get("state") or t.get("status") or ""))
    active = t.get("active")
    if not state and isinstance(active, bool):
        state = "active" if active else "idle"
    waiting = t.get("waiting_on") or t.get("waiting_to_lock") or t.get("blocked_on") or t.get("lock_waiting")
    holds = t.get("holds") or t.get("locks_held") or t.get("locked") or t.get("owns") or []
    if isinstance(holds, (str, int)):
        holds = [holds]
    return Thread(name=str(t.get("name") or t.get("thread_name") or t.get("tid") or "?"),
                  tid=t.get("tid", t.get("os_thread_id", t.get("nid"))), state=str(state), frames=frames,
                  active=active if isinstance(active, bool) else None,
                  waiting_on=str(waiting) if waiting not in (None, "", []) else None,
                  holds=[str(h) for h in holds if h not in (None, "")], raw=t,
                  weight=max(1, _int(t.get("weight")) or 1))


def normalise(data: Any, source: str) -> Dump | None:
    """A threads.json (or py-spy --json list) as a Dump; None if it holds no threads."""
    runtime, deadlocks = "", []
    if isinstance(data, list):
        threads = data
        runtime = "python" if data and isinstance(data[0], dict) and "thread_name" in data[0] else ""
    elif isinstance(data, dict):
        threads = data.get("threads") or []
        runtime = str(data.get("runtime") or "")
        dl = data.get("deadlocks") or []
        for d in dl if isinstance(dl, list) else [dl]:
            if isinstance(d, dict):
                deadlocks.append(d)
            elif isinstance(d, (list, tuple)):
                deadlocks.append({"threads": [str(x) for x in d]})
            elif d:
                deadlocks.append({"text": str(d)})
    else:
        return None
    ts = [_thread(t) for t in threads if isinstance(t, dict)]
    if not ts:
        return None
    meta = {k: v for k, v in data.items() if k not in ("threads", "deadlocks")} if isinstance(data, dict) else {}
    return Dump(runtime=runtime, threads=ts, deadlocks=deadlocks, source=source, meta=meta)


@dataclass
class Group:
    threads: list[Thread]

    @property
    def count(self) -> int:
        return sum(t.weight for t in self.threads)

    @property
    def frames(self) -> list[Frame]:
        return self.threads[0].frames

    def states(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for t in self.threads:
            c[t.state or "?"] += t.weight
        return c

    def blocked(self) -> int:
        return sum(t.weight for t in self.threads if t.blocked_reason())


def total(dump: Dump) -> int:
    """How many threads (goroutines) the dump stands for."""
    n = sum(t.weight for t in dump.threads)
    declared = _int(dump.meta.get("total_threads"))
    return max(n, declared or 0)


def is_app(f: Frame, runtime: str) -> bool:
    """Is this frame the program's own code (or a library it ships), not the runtime's?"""
    fn, file = f.function or "", f.file or ""
    rt = (runtime or "").lower()
    if rt in ("go", "golang"):
        if GO_ROOT.search(file):
            return False
        cut = fn.find(".", fn.rfind("/") + 1)
        pkg = fn[:cut] if cut > 0 else fn                    # the package path: up to the first dot after the last /
        first = pkg.split("/", 1)[0]
        return pkg in ("main", "command-line-arguments") or "." in first
    if f.native:
        if rt == "native":
            return bool(fn) and not fn.startswith("0x") and not NATIVE_SYSTEM.search(file)
        return False
    if rt in ("jvm", "java"):
        return not JVM_STDLIB.match(fn)
    if rt == "node":
        return bool(file) and not NODE_INTERNAL.match(file)
    if rt == "python" or file.endswith(".py") or file.startswith("<"):
        return not PY_STDLIB.search(file)
    return True


def app_frames(t: Thread, runtime: str) -> list[int]:
    """Indexes (innermost first) of the thread's application frames."""
    return [i for i, f in enumerate(t.frames) if is_app(f, runtime)]


def app_frame(t: Thread, runtime: str) -> Frame | None:
    """The first (innermost) application frame."""
    idx = app_frames(t, runtime)
    return t.frames[idx[0]] if idx else None


def waits_in(t: Thread, runtime: str) -> str:
    """What the thread waits in, in a few words: Go's wait state, else the call the application made."""
    rt = (runtime or "").lower()
    if rt in ("go", "golang") and t.state:
        return t.state
    idx = app_frames(t, runtime)
    if idx and idx[0] > 0:
        inner = [f for f in t.frames[:idx[0]] if not f.native] or t.frames[:idx[0]]
        call = inner[-1]                            # the library call the application made
        where = call.file.rsplit("/", 1)[-1] if call.file else ""
        return f"{call.function} ({where})" if where and not call.native else call.function
    if rt in ("jvm", "java") and t.state:
        return t.state
    return ""


def heading(t: Thread, runtime: str) -> str:
    """A group's heading: its first application frame, and what it waits in."""
    app = app_frame(t, runtime)
    top = app or t.top_code()
    label = top.label() if top else "(no frames)"
    wait = waits_in(t, runtime) if app else ""
    return f"{label} — in {wait}" if wait and wait != (app.function if app else "") else label


def group(dump: Dump) -> list[Group]:
    """Threads with identical stacks together, biggest group first."""
    by: dict[tuple, list[Thread]] = {}
    for t in dump.threads:
        by.setdefault(t.signature(), []).append(t)
    groups = [Group(ts) for ts in by.values()]
    groups.sort(key=lambda g: (-g.count, -g.blocked(), g.threads[0].name))
    return groups


def wait_cycles(dump: Dump) -> list[list[Thread]]:
    """Cycles in the wait-for graph: A waits for a lock B holds, B for one A holds (from lock fields)."""
    owner: dict[str, Thread] = {}
    for t in dump.threads:
        for h in t.holds:
            owner[h] = t
    nxt: dict[int, Thread] = {}
    for t in dump.threads:
        if t.waiting_on and t.waiting_on in owner and owner[t.waiting_on] is not t:
            nxt[id(t)] = owner[t.waiting_on]
    cycles: list[list[Thread]] = []
    seen: set[int] = set()
    for start in dump.threads:
        path: list[Thread] = []
        index: dict[int, int] = {}
        cur: Thread | None = start
        while cur is not None and id(cur) not in seen and id(cur) not in index:
            index[id(cur)] = len(path)
            path.append(cur)
            cur = nxt.get(id(cur))
        if cur is not None and id(cur) in index:
            cycles.append(path[index[id(cur)]:])
        seen.update(index)
    return cycles


def deadlock_names(d: dict[str, Any]) -> list[str]:
    ts = d.get("threads") or d.get("members") or []
    out = []
    for t in ts if isinstance(ts, list) else []:
        out.append(str(t.get("name") or t.get("thread") or t) if isinstance(t, dict) else str(t))
    return out


def load_dumps(b) -> list[tuple[int, Dump]]:
    """Every target's thread dump in a bundle, as (pid, Dump)."""
    out = []
    for rel in b.files("collectors/threads/*/*.json"):
        parts = rel.split("/")
        if len(parts) != 4 or not parts[2].isdigit() or parts[3] in ("summary.json",):
            continue
        if parts[3] != "threads.json" and b.has(f"collectors/threads/{parts[2]}/threads.json"):
            continue
        d = normalise(b.json(rel), rel)
        if d is not None:
            out.append((int(parts[2]), d))
    return out
