#!/usr/bin/python3
"""Build the goldenhour Debian package: ``make deb`` -> dist/goldenhour_<version>_<arch>.deb.

What the package holds (the maintainer scripts beside this file set up the rest):
  /opt/goldenhour/                  a venv made from /usr/bin/python3 with --system-site-packages (Debian's
                                    python3-bpfcc stays importable): goldenhour and its PyPI dependencies,
                                    pinned by packaging/deb/constraints.txt; no pip, no bytecode
  /usr/bin/goldenhour               -> /opt/goldenhour/bin/goldenhour
  /lib/systemd/system/goldenhour.service            systemd/goldenhour.service, running /usr/bin/goldenhour
  /lib/systemd/system/goldenhour-recorder.service   systemd/goldenhour-recorder.service (the flight recorder)
  /lib/systemd/system/goldenhour-relay.service      the fleet relay's unit (enabled only on the relay's machine)
  /usr/share/goldenhour/goldenhour-pre-restart.conf the pre-restart drop-in example (same substitution)
  /etc/goldenhour/config.example.toml               the conffile, 0640 in a 0750 directory (as scripts/install.sh);
                                    postinst makes config.toml from it once (the admin's file from then on)
  /usr/share/doc/goldenhour/        copyright (with every bundled distribution and its license), changelog,
                                    README and docs/
  /usr/share/man/man1/goldenhour.1.gz               rendered from the click commands' --help

Why the venv is built in a staging directory and then relocated. Building it at the real /opt/goldenhour
would touch the build host (where the package may be installed); a private mount namespace with the stage
bind-mounted over /opt/goldenhour is correct by construction but needs CAP_SYS_ADMIN or user namespaces,
which build containers often lack; ``pip install --root/--prefix`` writes shebangs naming the build
interpreter. A venv names its own path in few places only: bin/python* are symlinks to /usr/bin/python3 and
site-packages is found from pyvenv.cfg beside the interpreter, so what is left is the console scripts'
shebangs, bin/activate*, pyvenv.cfg's ``command`` line, the ``direct_url.json`` of a wheel installed from a
file, and bytecode (co_filename). So: pip installs with --no-compile and the package ships no bytecode
(postinst compiles at the final path and prerm removes it, as Debian's py3compile/py3clean do); the text
files are rewritten (RECORD hashes updated), direct_url.json dropped; then the build fails if any file still
contains a build path (the stage, the work directory or the checkout).

Reproducible: the same checkout and constraints give the same bytes. SOURCE_DATE_EPOCH (default: the last
commit's time) stamps every file and the changelog, modes are normalised, owner is root:root
(``dpkg-deb --root-owner-group``, no fakeroot needed), dpkg-deb sorts the members, gzip writes no name or time.

  /usr/bin/python3 packaging/deb/build.py [--out DIR] [--relock] [--keep-work] [-Z xz|zstd|gzip|none]
--relock rewrites constraints.txt from what the current pyproject.toml resolves to today (then commit it).
"""
from __future__ import annotations

import argparse
import base64
import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PREFIX = "/opt/goldenhour"
BIN = "/usr/bin/goldenhour"
PY_SYS = "/usr/bin/python3"
CONSTRAINTS = HERE / "constraints.txt"
SDIST_OK = ("nkeys",)        # pure-Python dependencies published without a wheel
# safe.directory: a build by another user than the checkout's owner reads the same commit (git refuses otherwise)
GIT = ["git", "-c", f"safe.directory={ROOT}", "-C", str(ROOT)]
# config.example.toml is the conffile (an upgrade brings new keys into it); config.toml is the admin's:
# postinst makes it from the example once, and no upgrade ever touches or asks about it.
CONFFILES = ("/etc/goldenhour/config.example.toml",)
PRIVATE_DIRS = {"etc/goldenhour": 0o750}          # secrets live beside the config
PRIVATE_FILES = {"etc/goldenhour/config.example.toml": 0o640}

# Debian relationships (the Python bounds are added from the interpreter the venv is made from).
# Depends: what goldenhour cannot do its default (standard) profile without. Recommends: the tools
# the collectors use when present (each collector says why it skipped; `goldenhour collectors`).
# Suggests: what helps only some hosts: kernel headers must match the running kernel, so the admin
# picks the flavour (or linux-headers-$(uname -r)); bpftool only to inspect our probes.
DEPENDS = ["python3-bpfcc", "iproute2", "procps"]
RECOMMENDS = ["conntrack", "elfutils", "gdb", "zstd", "kmod", "delve"]
SUGGESTS = ["bpftool", "linux-headers-amd64 | linux-headers-cloud-amd64"]
DESCRIPTION = """\
forensic evidence capture for Linux hosts
 goldenhour takes a host's volatile state (thread and heap dumps, sockets,
 kernel messages, conntrack, eBPF latency histograms, log tails) into one
 verifiable bundle per capture, filed under an incident ID, stored locally
 and uploaded to S3, before anyone restarts anything. Its daemon receives
 incident-tracker webhooks and captures on its own.
 .
 This package bundles goldenhour and its Python dependencies in a private
 virtual environment under /opt/goldenhour, made from Debian's python3 so
 that python3-bpfcc is used for the eBPF probes."""


class BuildError(Exception):
    pass


STARTED = time.monotonic()


def log(msg: str) -> None:
    print(f"deb: {time.monotonic() - STARTED:5.1f}s {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], *, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run a build step; its output is shown only when it fails."""
    cp = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if cp.returncode != 0:
        sys.stderr.write(cp.stdout[-4000:] + cp.stderr[-4000:])
        raise BuildError(f"{' '.join(argv[:4])}... failed (exit {cp.returncode})")
    return cp.stdout


# -- inputs --------------------------------------------------------------------------------------

def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def source_date_epoch() -> int:
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(GIT + ["log", "-1", "--format=%ct"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
        if out.isdigit():
            return int(out)
    except (OSError, subprocess.SubprocessError):
        pass
    return int((ROOT / "pyproject.toml").stat().st_mtime)


def source_revision() -> str:
    try:
        return subprocess.run(GIT + ["describe", "--always", "--dirty", "--abbrev=12"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def source_files() -> list[str]:
    """The checkout's files as git sees them (tracked and new, not ignored); everything if not a checkout."""
    try:
        out = subprocess.run(GIT + ["ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, timeout=60)
        if out.returncode == 0:
            return sorted({f for f in out.stdout.decode().split("\0") if f and (ROOT / f).is_file()})
    except (OSError, subprocess.SubprocessError):
        pass
    skip = {".venv", ".git", "build", "dist", "__pycache__"}
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                  if p.is_file() and not skip.intersection(p.relative_to(ROOT).parts))


def check_prerequisites() -> None:
    if not os.access(PY_SYS, os.X_OK):
        raise BuildError(f"{PY_SYS} is missing: apt-get install python3")
    if subprocess.run([PY_SYS, "-c", "import ensurepip, venv"], capture_output=True).returncode != 0:
        raise BuildError("python3 cannot make a venv: apt-get install python3-venv")
    if shutil.which("dpkg-deb") is None:
        raise BuildError("dpkg-deb is missing (Debian package dpkg)")


# -- the venv ------------------------------------------------------------------------------------

def staged_env() -> dict:
    """Environment for every staged Python run: no bytecode written, no user site, no checkout on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1", PIP_NO_INPUT="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_WARN_SCRIPT_LOCATION="1")
    return env


def build_venv(work: Path, venv: Path, relock: bool) -> list[dict]:
    """Make the venv at ``venv`` (inside the stage) and install goldenhour into it; return its distributions."""
    src = work / "src"
    for f in source_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    env = staged_env()
    log(f"venv from {PY_SYS} (--system-site-packages)")
    run([PY_SYS, "-m", "venv", "--system-site-packages", str(venv)], env=env)
    py = str(venv / "bin" / "python")
    # A clean copy builds the wheel: setuptools writes build/ and *.egg-info next to the sources.
    log("wheel of goldenhour (pip wheel, isolated build)")
    run([py, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(work / "wheels"), str(src)], env=env)
    wheel = next((work / "wheels").glob("goldenhour-*.whl"))
    # --ignore-installed: the venv sees /usr/lib/python3/dist-packages, and pip would otherwise take a
    # dependency as satisfied by a Debian package of the BUILD host (python3-six, python3-urllib3...)
    # that the target host need not have. --only-binary: no compiler runs, no sdist build varies.
    pins = [] if relock or not CONSTRAINTS.exists() else ["--constraint", str(CONSTRAINTS)]
    # nkeys (nats-py's nkey auth) is on PyPI as an sdist only: pure Python, its wheel is built here
    # from the pinned sdist, with no compiler and the same files every time
    sdists = [f"--no-binary={n}" for n in SDIST_OK]
    log("dependencies from PyPI" + (f" (pinned by {CONSTRAINTS.relative_to(ROOT)})" if pins else " (unpinned)"))
    try:
        run([py, "-m", "pip", "install", "-q", "--ignore-installed", "--no-compile", "--only-binary=:all:",
             *sdists, *pins, str(wheel)], env=env)
    except BuildError as exc:
        hint = " (pyproject.toml now wants versions the pins exclude? packaging/deb/build.py --relock)" if pins else ""
        raise BuildError(f"{exc}{hint}") from None
    dists = json.loads(run([py, "-I", "-B", "-c", DISTS_SCRIPT, str(site_packages(venv))], env=env, cwd=work))
    # pip check also judges the build host's Debian Python packages (the venv sees them): only ours count.
    ours = {norm(d["name"]) for d in dists}
    cp = subprocess.run([py, "-m", "pip", "check"], env=env, capture_output=True, text=True, timeout=300)
    broken = [l for l in cp.stdout.splitlines() if l.split() and norm(l.split()[0]) in ours]
    if broken:
        raise BuildError("inconsistent dependencies: " + "; ".join(broken))
    # pip and setuptools came with the venv; the package must not be changed by pip at run time.
    run([py, "-m", "pip", "uninstall", "-q", "-y", "pip", "setuptools"], env=env)
    for p in sorted(venv.rglob("__pycache__"), reverse=True):
        shutil.rmtree(p)
    for p in sorted(venv.joinpath("include").rglob("*"), reverse=True) + [venv / "include"]:
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()        # the venv's include/ is for building extensions in place: empty, unused
    return [d for d in dists if d["name"].lower() not in ("pip", "setuptools")]


DISTS_SCRIPT = r"""
import json, sys
from importlib import metadata
out = []
for d in metadata.distributions(path=[sys.argv[1]]):
    m = d.metadata
    lic = m.get("License-Expression") or ", ".join(
        c.split(" :: ")[-1] for c in (m.get_all("Classifier") or []) if c.startswith("License ::"))
    if not lic and m.get("License"):
        lic = m.get("License").strip().splitlines()[0][:60]
    out.append({"name": m["Name"], "version": d.version, "license": lic or "see its dist-info"})
print(json.dumps(sorted(out, key=lambda d: d["name"].lower())))
"""


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3.*/site-packages"))


def check_pins(dists: list[dict], relock: bool) -> None:
    shipped = {norm(d["name"]): d["version"] for d in dists if norm(d["name"]) != "goldenhour"}
    if relock:
        lines = ["# Exact versions of goldenhour's PyPI dependencies in the Debian package (a pip constraints",
                 "# file). Written by `packaging/deb/build.py --relock`; `make deb` installs exactly these.",
                 *(f"{n}=={v}" for n, v in sorted(shipped.items()))]
        CONSTRAINTS.write_text("\n".join(lines) + "\n")
        log(f"wrote {CONSTRAINTS.relative_to(ROOT)} ({len(shipped)} pins)")
        return
    pinned = {}
    if CONSTRAINTS.exists():
        for line in CONSTRAINTS.read_text().splitlines():
            m = re.match(r"^\s*([A-Za-z0-9._-]+)==(\S+)", line)
            if m:
                pinned[norm(m.group(1))] = m.group(2)
    loose = sorted(n for n in shipped if n not in pinned)
    if loose:
        log(f"warning: not pinned in {CONSTRAINTS.name}: {', '.join(loose)} (the build is not reproducible "
            "until `packaging/deb/build.py --relock` pins them)")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- relocation: the stage path out of every file ------------------------------------------------

def relocate(venv: Path, final: str, changed: set[Path]) -> None:
    """Rewrite the venv's own path to ``final`` in the few files that hold it (see the module docstring);
    ``changed``: files already modified (stripped), whose RECORD lines need new hashes too."""
    old, new = str(venv).encode(), final.encode()
    changed = set(changed)
    for p in sorted(venv.rglob("*")):
        if p.is_symlink() or not p.is_file():
            continue
        if p.name == "direct_url.json" and p.parent.name.endswith(".dist-info"):
            p.unlink()
            changed.add(p)
            continue
        data = p.read_bytes()
        if old not in data:
            continue
        if b"\0" in data:
            raise BuildError(f"binary file holds the build path: {p}")
        data = data.replace(old, new)
        # pip writes `#!/bin/sh` + `'''exec' PY "$0" "$@"` when a shebang would be too long (a deep
        # stage); at the final path a plain shebang fits.
        m = re.match(rb"#!/bin/sh\n'''exec' \"?([^\"\n ]+)\"? \"\$0\" \"\$@\"\n' '''\n", data)
        if m:
            data = b"#!" + m.group(1) + b"\n" + data[m.end():]
        p.write_bytes(data)
        changed.add(p)
    fix_records(venv, changed)


def fix_records(venv: Path, changed: set[Path]) -> None:
    """Keep each dist-info RECORD true: new hashes for rewritten files, no line for a removed one."""
    sp = site_packages(venv)
    changed_paths = {os.path.normpath(c) for c in changed}
    for record in sorted(sp.glob("*.dist-info/RECORD")):
        out = []
        for row in csv.reader(io.StringIO(record.read_text())):
            target = Path(os.path.normpath(sp / row[0])) if row else None
            if target is not None and str(target) in changed_paths:
                if not target.exists():
                    continue
                data = target.read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                row = [row[0], f"sha256={digest}", str(len(data))]
            if row:
                out.append(row)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(out)
        record.write_text(buf.getvalue())


def strip_binaries(venv: Path) -> set[Path]:
    """Strip the wheels' ELF files as dh_strip does (zstandard's two modules: 23 MB -> 2 MB); RECORD follows."""
    strip = shutil.which("strip")
    if strip is None:
        log("warning: no strip (binutils): the package keeps the wheels' debug symbols")
        return set()
    done = set()
    for p in sorted(venv.rglob("*")):
        if p.is_symlink() or not p.is_file():
            continue
        with open(p, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        run([strip, "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note", str(p)])
        done.add(p)
    return done


def glibc_floor(venv: Path) -> str:
    """The glibc the wheels need: per wheel the lowest of its manylinux tags, then the highest of those."""
    aliases = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    need = (2, 5)
    for wheel in sorted(site_packages(venv).glob("*.dist-info/WHEEL")):
        floors = []
        for line in wheel.read_text().splitlines():
            if not line.startswith("Tag:"):
                continue
            plat = line.split("-")[-1].strip()
            m = re.match(r"manylinux_(\d+)_(\d+)_", plat)
            if m:
                floors.append((int(m.group(1)), int(m.group(2))))
            elif plat.split("_x86_64")[0].split("_aarch64")[0] in aliases:
                floors.append(aliases[plat.split("_x86_64")[0].split("_aarch64")[0]])
        if floors:
            need = max(need, min(floors))
    return f"{need[0]}.{need[1]}"


def assert_no_build_paths(stage: Path, paths: list[str]) -> None:
    needles = [p.encode() for p in paths]
    bad = []
    for p in sorted(stage.rglob("*")):
        if p.is_symlink():
            if any(n in os.readlink(p).encode() for n in needles):
                bad.append(p)
        elif p.is_file() and not p.is_relative_to(stage / "DEBIAN"):
            data = p.read_bytes()
            if any(n in data for n in needles):
                bad.append(p)
    if bad:
        raise BuildError("build paths left in the package: " + ", ".join(str(b.relative_to(stage)) for b in bad[:8]))


# -- the rest of the tree ------------------------------------------------------------------------

def put(stage: Path, rel: str, data: bytes | str, mode: int = 0o644) -> Path:
    p = stage / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    p.chmod(mode)
    return p


def gz(data: str | bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return buf.getvalue()


def unit_text(path: Path) -> str:
    """A unit file from systemd/, pointing at the package's command and files instead of /usr/local
    (and, for the service, at the package's man page)."""
    text = path.read_text().replace("/usr/local/bin/goldenhour", BIN).replace("/usr/local/share/", "/usr/share/")
    text = text.replace("Installed by `make install` (scripts/install.sh).", "Installed by the goldenhour package.")
    text = text.replace("(`make install` puts a copy in /usr/share/goldenhour/.)",
                        "(The goldenhour package puts a copy in /usr/share/goldenhour/.)")
    if "\nDescription=" in text and "\nDocumentation=" not in text:
        text = re.sub(r"(\nDescription=[^\n]*\n)", r"\1Documentation=man:goldenhour(1)\n", text, count=1)
    if "/usr/local" in text:
        raise BuildError(f"{path.name} still names /usr/local after substitution")
    return text


def lay_out(stage: Path, meta: dict, dists: list[dict], man: str, sde: int, revision: str) -> None:
    sp = "/" + str(site_packages(stage / PREFIX.lstrip("/")).relative_to(stage))
    link = stage / BIN.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"{PREFIX}/bin/goldenhour")
    put(stage, "/lib/systemd/system/goldenhour.service", unit_text(ROOT / "systemd" / "goldenhour.service"))
    put(stage, "/lib/systemd/system/goldenhour-recorder.service",
        unit_text(ROOT / "systemd" / "goldenhour-recorder.service"))
    put(stage, "/lib/systemd/system/goldenhour-relay.service",
        unit_text(ROOT / "systemd" / "goldenhour-relay.service"))
    put(stage, "/usr/share/goldenhour/goldenhour-pre-restart.conf",
        unit_text(ROOT / "systemd" / "goldenhour-pre-restart.conf"))
    example = (ROOT / "config" / "goldenhour.example.toml").read_bytes()
    put(stage, "/etc/goldenhour/config.example.toml", example, 0o640)
    put(stage, "/usr/share/goldenhour/config.example.toml", example)     # postinst's pristine copy
    doc = "/usr/share/doc/goldenhour"
    put(stage, f"{doc}/copyright", copyright_text(dists, meta, sp, sde))
    put(stage, f"{doc}/changelog.gz", gz(changelog_text(meta, sde, revision)))
    put(stage, f"{doc}/README.md.gz", gz((ROOT / "README.md").read_bytes()))
    for md in sorted((ROOT / "docs").rglob("*.md")) if (ROOT / "docs").is_dir() else []:
        put(stage, f"{doc}/docs/{md.relative_to(ROOT / 'docs')}.gz", gz(md.read_bytes()))
    put(stage, "/usr/share/man/man1/goldenhour.1.gz", gz(man))
    put(stage, "/usr/share/lintian/overrides/goldenhour", (HERE / "lintian-overrides").read_text())


def maintainer() -> str:
    name = os.environ.get("DEBFULLNAME") or "goldenhour maintainers"
    email = os.environ.get("DEBEMAIL") or "goldenhour@example.org"
    return f"{name} <{email}>"


def changelog_text(meta: dict, sde: int, revision: str) -> str:
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(sde))
    built = f", built from {revision[:40]}" if revision else ""
    return (f"goldenhour ({meta['version']}) unstable; urgency=medium\n\n"
            f"  * goldenhour {meta['version']}{built}.\n\n"
            f" -- {maintainer()}  {date}\n")


def copyright_text(dists: list[dict], meta: dict, sp: str, sde: int) -> str:
    own = [d for d in dists if norm(d["name"]) == "goldenhour"]
    rest = [d for d in dists if norm(d["name"]) != "goldenhour"]
    lines = [
        "goldenhour: " + meta.get("description", ""),
        "",
        f"Copyright: {time.gmtime(sde).tm_year} the goldenhour authors",
        f"License: {meta.get('license', 'Apache-2.0')}",
        " On Debian systems the full text of the Apache License 2.0 is in",
        " /usr/share/common-licenses/Apache-2.0.",
        "",
        f"Bundled in {PREFIX}: these Python distributions from PyPI, each under its own",
        f"license (the texts and notices are in {sp}/<name>-<version>.dist-info/):",
        "",
    ]
    width = max((len(d["name"]) + len(d["version"]) + 1 for d in rest), default=10) + 2
    lines += [f"  {(d['name'] + ' ' + d['version']).ljust(width)}{d['license']}" for d in rest]
    if own:
        lines += ["", f"goldenhour itself: {own[0]['version']}"]
    return "\n".join(lines) + "\n"


MAN_SCRIPT = r"""
import json
import click
from agent.cli import main
def context(cmd, name, parent=None):
    settings = {**getattr(cmd, "context_settings", {}), "terminal_width": 78, "max_content_width": 78}
    return click.Context(cmd, info_name=name, parent=parent, **settings)
def help_text(cmd, ctx):
    lines = cmd.get_help(ctx).splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("Usage:") else lines).strip("\n")
ctx = context(main, "goldenhour")
out = {"main": help_text(main, ctx), "commands": []}
def walk(group, parent, prefix):
    for name in group.list_commands(parent):
        cmd = group.get_command(parent, name)
        if cmd is None or getattr(cmd, "hidden", False):
            continue
        sub = context(cmd, name, parent)
        out["commands"].append([prefix + name, cmd.get_help(sub)])
        if isinstance(cmd, click.Group):
            walk(cmd, sub, prefix + name + " ")
walk(main, ctx, "")
print(json.dumps(out))
"""


def man_page(py: str, work: Path, meta: dict, sde: int) -> str:
    """goldenhour(1): the click commands' own --help texts, so the page cannot disagree with the command."""
    helps = json.loads(run([py, "-I", "-B", "-c", MAN_SCRIPT], env=staged_env(), cwd=work))

    def verbatim(text: str) -> list[str]:
        out = [".nf"]
        for line in text.rstrip().splitlines():
            line = line.replace("\\", "\\e")
            out.append("\\&" + line if line.startswith((".", "'")) else line)
        return out + [".fi"]

    date = time.strftime("%Y-%m-%d", time.gmtime(sde))
    lines = [f'.TH GOLDENHOUR 1 "{date}" "goldenhour {meta["version"]}" "User Commands"',
             ".SH NAME", "goldenhour \\- " + meta.get("description", "").rstrip(".").replace("-", "\\-"),
             ".SH SYNOPSIS", ".B goldenhour", "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
             ".SH DESCRIPTION", *verbatim(helps["main"]),
             ".SH COMMANDS"]
    for name, text in helps["commands"]:
        lines += [f'.SS "goldenhour {name}"', *verbatim(text)]
    lines += [".SH FILES",
              ".TP", "/etc/goldenhour/config.toml", "The configuration (every key listed, commented out).",
              ".TP", "/var/lib/goldenhour", "The local store: bundles, upload receipts, daemon state.",
              ".TP", "/lib/systemd/system/goldenhour.service", "The daemon's unit.",
              ".TP", "/lib/systemd/system/goldenhour-recorder.service",
              "The flight recorder's unit (goldenhour record).",
              ".TP", "/var/lib/goldenhour/recorder/ring", "The flight recorder's ring: days of host samples.",
              ".TP", "/lib/systemd/system/goldenhour-relay.service", "The fleet relay's unit.",
              ".TP", "/usr/share/goldenhour/goldenhour-pre-restart.conf",
              "A drop-in that captures a unit's evidence before it stops.",
              ".SH SEE ALSO",
              "/usr/share/doc/goldenhour/README.md.gz and the manual in /usr/share/doc/goldenhour/docs/"]
    return "\n".join(lines) + "\n"


# -- control, modes, dpkg-deb ---------------------------------------------------------------------

def normalise(stage: Path, sde: int) -> None:
    """Modes independent of the umask and of what pip chose; every mtime = SOURCE_DATE_EPOCH."""
    for p in sorted(stage.rglob("*"), reverse=True):
        rel = str(p.relative_to(stage))
        if p.is_symlink():
            pass
        elif p.is_dir():
            p.chmod(PRIVATE_DIRS.get(rel, 0o755))
        elif rel in PRIVATE_FILES:
            p.chmod(PRIVATE_FILES[rel])
        else:
            p.chmod(0o755 if is_program(p) else 0o644)
        os.utime(p, (sde, sde), follow_symlinks=False)
    stage.chmod(0o755)
    os.utime(stage, (sde, sde))


def is_program(p: Path) -> bool:
    """Executable: scripts with a shebang and ELF executables; shared objects and the rest are 0644."""
    if not os.access(p, os.X_OK):
        return False
    with open(p, "rb") as f:
        head = f.read(4)
    if head.startswith(b"#!"):
        return True
    return head == b"\x7fELF" and ".so" not in p.name


def installed_size(stage: Path) -> int:
    kib = 0
    for p in stage.rglob("*"):
        if p.is_relative_to(stage / "DEBIAN"):
            continue
        kib += -(-p.lstat().st_size // 1024) if p.is_file() and not p.is_symlink() else 1
    return kib


def control(stage: Path, meta: dict, arch: str, pyver: tuple[int, int], libc: str) -> None:
    major, minor = pyver
    # The venv's site-packages is lib/python3.N and its compiled modules are built for 3.N: a different
    # python3 (a distribution upgrade) breaks it, so apt must not install one under it.
    # libc6: what the wheels' compiled modules were built against (their manylinux tags).
    depends = [f"python3 (>= {major}.{minor}~)", f"python3 (<< {major}.{minor + 1})", f"libc6 (>= {libc})",
               *DEPENDS]
    fields = [
        ("Package", "goldenhour"),
        ("Version", meta["version"]),
        ("Architecture", arch),
        ("Maintainer", maintainer()),
        ("Installed-Size", str(installed_size(stage))),
        ("Depends", ", ".join(depends)),
        ("Recommends", ", ".join(RECOMMENDS)),
        ("Suggests", ", ".join(SUGGESTS)),
        ("Section", "admin"),
        ("Priority", "optional"),
        ("Description", DESCRIPTION),
    ]
    debian = stage / "DEBIAN"
    debian.mkdir(exist_ok=True)
    debian.chmod(0o755)
    put(stage, "DEBIAN/control", "".join(f"{k}: {v}\n" for k, v in fields))
    put(stage, "DEBIAN/conffiles", "".join(f"{c}\n" for c in CONFFILES))
    for script in ("postinst", "prerm", "postrm"):
        put(stage, f"DEBIAN/{script}", (HERE / script).read_text(), 0o755)
    sums = []
    for p in sorted(stage.rglob("*")):
        rel = str(p.relative_to(stage))
        if rel.startswith("DEBIAN") or p.is_symlink() or not p.is_file() or "/" + rel in CONFFILES:
            continue
        sums.append(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {rel}\n")
    put(stage, "DEBIAN/md5sums", "".join(sums))


def build(args: argparse.Namespace) -> Path:
    check_prerequisites()
    meta = project()
    sde = source_date_epoch()
    revision = source_revision()
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    out_dir = Path(args.out).resolve()
    work = Path(tempfile.mkdtemp(prefix="goldenhour-deb."))
    try:
        stage = work / "root"
        venv = stage / PREFIX.lstrip("/")
        dists = build_venv(work, venv, args.relock)
        check_pins(dists, args.relock)
        py = str(venv / "bin" / "python")
        pyver = tuple(json.loads(run([py, "-I", "-c", "import sys, json; print(json.dumps(sys.version_info[:2]))"],
                                     env=staged_env())))
        man = man_page(py, work, meta, sde)
        relocate(venv, PREFIX, strip_binaries(venv))
        libc = glibc_floor(venv)
        lay_out(stage, meta, dists, man, sde, revision)
        assert_no_build_paths(stage, [str(work), str(ROOT)])
        normalise(stage, sde)
        control(stage, meta, arch, pyver, libc)
        out_dir.mkdir(parents=True, exist_ok=True)
        deb = out_dir / f"goldenhour_{meta['version']}_{arch}.deb"
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(sde))
        log(f"dpkg-deb -Z{args.compression}")
        run(["dpkg-deb", "--root-owner-group", f"-Z{args.compression}", "--build", str(stage), str(deb)], env=env)
        return deb
    finally:
        if args.keep_work:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description="Build the goldenhour Debian package (see the module docstring).")
    ap.add_argument("--out", default=str(ROOT / "dist"), help="where the .deb goes (default: dist/)")
    ap.add_argument("--relock", action="store_true", help="resolve the dependencies afresh and rewrite "
                    "packaging/deb/constraints.txt")
    ap.add_argument("--lintian", action="store_true", help="check the package with lintian (if installed); "
                    "errors and warnings fail the build")
    ap.add_argument("--keep-work", action="store_true", help="keep the staging directory (to inspect it)")
    ap.add_argument("-Z", dest="compression", default="xz", choices=("xz", "gzip", "zstd", "none"),
                    help="dpkg-deb compression: xz (default, the Debian archive's; ~20 s here), gzip (~1 s, ~10%% "
                    "larger), zstd (dpkg >= 1.21.18 reads it, but lintian and older repository tools reject it)")
    args = ap.parse_args()
    started = time.monotonic()
    try:
        deb = build(args)
    except BuildError as exc:
        print(f"deb: error: {exc}", file=sys.stderr)
        return 1
    size = deb.stat().st_size
    print(f"{deb} ({size / 2**20:.1f} MiB, {time.monotonic() - started:.0f} s)")
    if args.lintian:
        if shutil.which("lintian") is None:
            log("lintian is not installed (apt-get install lintian): package not checked")
        else:
            log("lintian")
            cp = subprocess.run(["lintian", "--fail-on", "error,warning", "--pedantic", str(deb)], text=True,
                                capture_output=True, timeout=900)
            out = "\n".join(l for l in (cp.stdout + cp.stderr).splitlines() if "running with root" not in l)
            if out.strip():
                print(out, file=sys.stderr)
            if cp.returncode != 0:
                print("deb: error: lintian found errors or warnings", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
