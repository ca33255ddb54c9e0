"""Secret redaction: the one redactor for command lines, environments and logs.

Every command line and environment goes through it before it is written: ``agent.targets``
(the manifest's target list), ``host`` (the command lines of the top and D-state processes),
``process`` (``/proc/PID/cmdline``, ``/proc/PID/environ``), ``threads`` (the Node.js diagnostic
report's environment and command line), the manifest's ``agent.argv``. Log tails (``logs``: the
files and the journal; the capture's and the collectors' own logs) go through ``LogRedactor``
unless ``logs.redact = false``, and the report passes every log line it keeps through it again
(a bundle captured raw, or by an older goldenhour, never puts a secret in a report). A redacted
value becomes ``[REDACTED]``; names are kept, so a responder still sees *that* a variable was
set. Every replacement is counted: the manifest's ``redaction`` has the counts (per log file) and
the rules below, word for word.

Rules (``RULES``; logs: ``LOG_RULES``):

1. **Sensitive names.** A variable, option, property or ``key=value`` pair whose *name*
   contains ``token``, ``secret``, ``passw`` (password, passwd), ``credential``,
   ``authorization``, ``cookie``, ``session``, ``private``, ``apikey``/``api_key``,
   ``access_key``, ``signature`` or ``passphrase`` anywhere (case-insensitive), or has a
   word (split at ``_ . -`` and camelCase) equal to ``key``, ``pass``, ``pwd``, ``pw``,
   ``auth``, ``jwt``, ``dsn``, ``salt`` or ``otp``, has its value redacted, unless the
   name's last word is ``file``, ``path``, ``dir`` or ``filename`` (it names where a secret
   lives, not the secret).
2. **Command-line forms.** ``--name=value``, ``-Dname=value``, ``name=value`` and
   ``--name value`` (the next argument, when it does not start with ``-``) with a sensitive
   name.
3. **Secret-shaped values, whatever their name**: the password in a URL's user info
   (``scheme://user:PASSWORD@host``), ``Bearer``/``Basic``/``Token``/``Digest`` credentials,
   JSON Web Tokens (``eyJ...``), AWS access key IDs (``AKIA``/``ASIA``...), GitHub
   (``ghp_``, ``gho_``, ``ghu_``, ``ghs_``, ``ghr_``, ``github_pat_``), GitLab (``glpat-``),
   Slack (``xox?-``), Stripe (``sk_live_``/``rk_live_``), Google API keys (``AIza...``), npm
   (``npm_``) tokens, and PEM private key blocks.
4. **Log lines** (on top of 1 and 3): ``name=value`` (a quoted value whole), ``"name": "value"``
   (JSON) and ``Name: value`` (HTTP headers, YAML) with a sensitive name; the whole value of
   ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie`` headers; every line
   of a PEM private key block. Lines are kept (the line count, so the bundle's line numbers,
   never change), and only lines that hold a trigger word are examined at all.

Heap dumps and core images cannot be redacted: they hold whatever the process held.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Iterable

MASK = "[REDACTED]"
STRONG = ("token", "secret", "passw", "credential", "authorization", "cookie", "session", "private",
          "apikey", "api_key", "api-key", "access_key", "accesskey", "signature", "passphrase")
WORDS = frozenset({"key", "pass", "pwd", "pw", "auth", "jwt", "dsn", "salt", "otp"})
EXEMPT_LAST = frozenset({"file", "path", "dir", "filename"})

RULES = [
    "names containing " + ", ".join(s for s in STRONG if "-" not in s) + " (case-insensitive)",
    "names with a word (split at _ . - and camelCase) equal to " + ", ".join(sorted(WORDS)),
    "except names whose last word is " + ", ".join(sorted(EXEMPT_LAST)),
    "command-line forms --name=value, -Dname=value, name=value and --name value",
    "URL user-info passwords, Bearer/Basic/Token/Digest credentials, JWTs, AWS access key IDs, "
    "GitHub/GitLab/Slack/Stripe/Google/npm tokens, PEM private keys, whatever their name",
]

_SHAPES = [
    (re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*:)(?P<secret>[^/\s@]+)(?=@)"), "url"),
    (re.compile(r"(?P<keep>\b(?:Bearer|Basic|Token|Digest)\s+)(?P<secret>[A-Za-z0-9._~+/=\-]{8,})", re.I), "auth"),
    (re.compile(r"(?P<secret>\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*)"), "jwt"),
    (re.compile(r"(?P<secret>\b(?:AKIA|ASIA)[A-Z0-9]{16}\b)"), "aws"),
    (re.compile(r"(?P<secret>\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|glpat-[A-Za-z0-9_\-]{20,}"
                r"|xox[abprs]-[A-Za-z0-9\-]{10,}|(?:sk|rk)_live_[A-Za-z0-9]{16,}|AIza[0-9A-Za-z_\-]{35}"
                r"|npm_[A-Za-z0-9]{36})\b)"), "token"),
    (re.compile(r"(?P<secret>-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$))",
                re.S), "pem"),
]
_INLINE = re.compile(r"(?P<key>(?<![A-Za-z0-9_.\-])-{0,2}[A-Za-z_][A-Za-z0-9_.\-]*)="
                     r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s&;,\"']+)")


def _words(name: str) -> list[str]:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", name.lower()) if w]


@functools.lru_cache(maxsize=4096)
def sensitive_name(name: str) -> bool:
    """Rule 1: does this variable/option/property name hold a secret? (Names repeat: cached.)"""
    words = _words(name.lstrip("-").removeprefix("D") if name.startswith("-D") else name.lstrip("-"))
    if not words or words[-1] in EXEMPT_LAST:
        return False
    low = name.lower()
    return any(s in low for s in STRONG) or any(w in WORDS for w in words)


class Redactor:
    """Counts what it redacts; ``count`` goes into the manifest."""

    def __init__(self) -> None:
        self.count = 0

    def text(self, s: str) -> str:
        """Rule 3 (secret shapes) and inline ``name=value`` pairs with a sensitive name."""
        for rx, _kind in _SHAPES:
            s, n = rx.subn(lambda m: (m.groupdict().get("keep") or "") + MASK, s)
            self.count += n

        def inline(m: re.Match[str]) -> str:
            if m.group("value") == MASK or not sensitive_name(m.group("key")):
                return m.group(0)
            self.count += 1
            return f"{m.group('key')}={MASK}"
        return _INLINE.sub(inline, s)

    def env(self, items: Iterable[str]) -> list[str]:
        """``NAME=value`` strings (an environ block)."""
        out = []
        for item in items:
            name, sep, value = item.partition("=")
            if sep and value and sensitive_name(name):
                self.count += 1
                out.append(f"{name}={MASK}")
            else:
                out.append(f"{name}{sep}{self.text(value)}" if sep else self.text(item))
        return out

    def mapping(self, env: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in env.items():
            if isinstance(v, str) and v and sensitive_name(k):
                self.count += 1
                out[k] = MASK
            else:
                out[k] = self.text(v) if isinstance(v, str) else v
        return out

    def argv(self, args: list[str]) -> list[str]:
        """A command line: rules 2 and 3."""
        out: list[str] = []
        redact_next = False
        for a in args:
            if redact_next and not a.startswith("-"):
                self.count += 1
                out.append(MASK)
                redact_next = False
                continue
            redact_next = False
            if a.startswith("-") and "=" not in a and len(a) > 2 and sensitive_name(a):
                out.append(a)
                redact_next = True
                continue
            out.append(self.text(a))
        return out


# -- log lines ----------------------------------------------------------------------------------

LOG_RULES = RULES + [
    "in log lines also name: value (headers, YAML) and \"name\": \"value\" (JSON) with a sensitive name, "
    "the whole value of Authorization, Proxy-Authorization, Cookie and Set-Cookie headers, "
    "and every line of a PEM private key block; lines are kept",
]
# Lines holding none of these (lowercase) words are copied as they are; the rules' own words, and each shape's
_HINTS = {"url": (b"://",), "auth": (b"bearer", b"basic", b"token", b"digest"), "jwt": (b"eyj",),
          "aws": (b"akia", b"asia"), "pem": (b"private key",),
          "token": (b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"github_pat_", b"glpat-", b"xox", b"_live_", b"aiza",
                    b"npm_")}
_ALL = {h for hs in _HINTS.values() for h in hs} | {s.encode() for s in STRONG} | {w.encode() for w in WORDS}
_TRIGGERS = tuple(sorted(w for w in _ALL if not any(o != w and o in w for o in _ALL)))   # "pass" finds "passw"
_JSON_PAIR = re.compile(r'"(?P<key>[^"\\]{1,80})"\s*:\s*"(?P<value>(?:[^"\\]|\\.)*)"')
_COLON = re.compile(r"(?P<key>(?<![A-Za-z0-9_.\-])[A-Za-z][A-Za-z0-9_.\-]{0,63})[ \t]*:[ \t]+"
                    r"(?=(?P<value>[^\s,;\"']+))")
_WHOLE_HEADER = re.compile(r"(?P<key>(?<![A-Za-z0-9_\-])(?:proxy-)?authorization|(?<![A-Za-z0-9_\-])(?:set-)?cookie)"
                           r"[ \t]*:[ \t]*(?P<value>\S.*)$", re.I)
_PEM_BEGIN = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_PEM_END = re.compile(rb"-----END [A-Z ]*PRIVATE KEY-----")


def _log_line(red: Redactor, line: str, low: bytes) -> str:
    """One log line that holds a trigger word (``low``: its bytes, lowercased): rules 1, 3 and 4."""
    if b"cookie" in low or b"authoriz" in low:
        def whole(m: re.Match[str]) -> str:
            if m.group("value").strip() == MASK:
                return m.group(0)
            red.count += 1
            return m.group(0)[: m.start("value") - m.start()] + MASK
        line = _WHOLE_HEADER.sub(whole, line)
    for rx, kind in _SHAPES:
        if any(h in low for h in _HINTS[kind]):
            line, n = rx.subn(lambda m: (m.groupdict().get("keep") or "") + MASK, line)
            red.count += n

    def pair(m: re.Match[str]) -> str:
        v = m.group("value")
        if not v or v == MASK or MASK in v or not sensitive_name(m.group("key")):
            return m.group(0)
        red.count += 1
        return m.group(0)[: m.start("value") - m.start()] + MASK + m.group(0)[m.end("value") - m.start():]

    if "=" in line:
        line = _INLINE.sub(pair, line)
    if '"' in line:
        line = _JSON_PAIR.sub(pair, line)
    if ":" in line:
        spans = [m.span("value") for m in _COLON.finditer(line)        # the value is looked ahead, not consumed:
                 if m.group("value") != MASK and sensitive_name(m.group("key"))]   # "a: b: c" has two pairs
        for start, end in reversed(spans):
            red.count += 1
            line = line[:start] + MASK + line[end:]
    return line


class LogRedactor:
    """Redacts a log, bytes in and bytes out, chunk by chunk: every line kept (and its end), secrets
    replaced by ``[REDACTED]`` (rules 1-4), PEM private key blocks across lines. ``count`` is how many."""

    def __init__(self) -> None:
        self.red = Redactor()
        self.rest = b""
        self.in_pem = False

    @property
    def count(self) -> int:
        return self.red.count

    def _line(self, line: bytes, low: bytes | None = None) -> bytes:
        if self.in_pem:
            end = _PEM_END.search(line)
            if end is None:                   # inside the block (counted once, at its start)
                body = line.rstrip(b"\r")
                return MASK.encode() + line[len(body):] if body else line
            self.in_pem = False
            return MASK.encode() + line[end.end():]
        low = line.lower() if low is None else low
        text = line.decode("utf-8", "surrogateescape")
        out = _log_line(self.red, text, low).encode("utf-8", "surrogateescape")
        begin = _PEM_BEGIN.search(line)
        if begin is not None and not _PEM_END.search(line, begin.end()):
            self.in_pem = True
        return out

    def _block(self, block: bytes) -> bytes:
        """Complete lines (``block`` ends with a newline): those holding a trigger word are redacted, the
        others copied as they are (found with one ``find`` pass per word over the lowercased block)."""
        low = block.lower()
        starts = {0} if self.in_pem else set()
        for word in _TRIGGERS:
            i = low.find(word)
            while i >= 0:
                ls = low.rfind(b"\n", 0, i) + 1
                starts.add(ls)
                i = low.find(word, low.index(b"\n", i) + 1)      # the next line holding it
        if not starts:
            return block
        out: list[bytes] = []
        pos = 0
        for ls in sorted(starts):
            if ls < pos:
                continue
            le = block.find(b"\n", ls)
            out += [block[pos:ls], self._line(block[ls:le], low[ls:le])]
            pos = le
            while self.in_pem and pos + 1 < len(block):     # the rest of a PEM block, line by line
                ns, ne = pos + 1, block.find(b"\n", pos + 1)
                out += [block[pos:ns], self._line(block[ns:ne])]
                pos = ne
        out.append(block[pos:])
        return b"".join(out)

    def feed(self, data: bytes) -> bytes:
        """The redacted complete lines of what was fed so far (a last line without its end waits)."""
        data = self.rest + data
        cut = data.rfind(b"\n") + 1
        self.rest = data[cut:]
        return self._block(data[:cut]) if cut else b""

    def finish(self) -> bytes:
        """The last line (one without a newline), redacted."""
        rest, self.rest = self.rest, b""
        return self._block(rest + b"\n")[:-1] if rest else b""


def redact_log(data: bytes) -> tuple[bytes, int]:
    """A whole log's bytes redacted, and how many secrets were replaced."""
    lr = LogRedactor()
    out = lr.feed(data) + lr.finish()
    return out, lr.count
