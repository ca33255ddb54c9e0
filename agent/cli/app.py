"""What every ``goldenhour`` command shares: the context, the error mapping, the output helpers.

Command modules import from here (never ``main`` from ``agent/cli/__init__.py``):
``App`` (the lazily loaded config and global flags, handed to a command by
``pass_app``), ``CONTEXT`` (the click settings every command uses), ``Group``
(turns a ``GoldenhourError`` into one line ``goldenhour: error: ...`` and its exit
code, see ``agent/errors.py``), ``emit_json``, ``human_size`` and ``resolve_bundle``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from agent import config as config_mod
from agent.errors import GoldenhourError, NotFoundError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class App:
    """What every command gets: the loaded config (lazily) and the global flags."""

    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self._cfg: config_mod.Config | None = None

    @property
    def cfg(self) -> config_mod.Config:
        if self._cfg is None:
            try:
                self._cfg = config_mod.load(self.config_path)
            except config_mod.ConfigError as exc:
                raise UsageError(str(exc)) from None
            env_store = os.environ.get("GOLDENHOUR_STORE")
            if env_store:
                self._cfg.set("store.path", env_store)
        return self._cfg

    def store_override(self, store: str | None) -> None:
        if store:
            self.cfg.set("store.path", store)


pass_app = click.make_pass_decorator(App)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=1, default=str))


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Group(click.Group):
    """Turns GoldenhourError into one line on stderr and its exit code; every command added to it
    (and each of a group's subcommands) also takes ``--config FILE`` after its name."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _accept_config(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GoldenhourError as exc:
            click.echo(f"goldenhour: error: {exc}", err=True)
            ctx.exit(exc.exit_code)


def resolve_bundle(app: App, name: str) -> Path:
    """A bundle named on the command line: an existing path, else a bundle name in the local store (else exit 4)."""
    from agent.store import Store
    p = Path(name)
    if p.exists():
        return p
    found = Store(app.cfg.store_path).find(name)
    if found is None:
        raise NotFoundError(f"no bundle {name!r} (neither a file nor a bundle in {app.cfg.store_path})")
    return found


def _accept_config(cmd: click.Command) -> None:
    """``goldenhour snapshot --config FILE`` as well as ``goldenhour --config FILE snapshot``."""
    if not any(p.name == "config_path" for p in cmd.params):
        cmd.params.append(click.Option(["--config", "config_path"], metavar="FILE", expose_value=False,
                                       callback=_set_config, help="Config file (as before the command name)."))
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _accept_config(sub)


def _set_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    app = ctx.find_object(App)
    if app is None:                             # the command runs without the main group (a test's CliRunner)
        ctx.obj = app = App(value)
    given = ctx.find_root().get_parameter_source("config_path") is ParameterSource.COMMANDLINE
    if given and app.config_path != value:
        raise click.UsageError(f"--config given twice ({app.config_path} and {value}); give it once", ctx)
    app.config_path, app._cfg = value, None     # the config is loaded lazily, when a command first reads it
