"""Command modules of other areas; importing each adds its commands to ``agent.cli.main``.

One line per area keeps ``agent/cli.py`` readable top to bottom.
"""
from agent import cli_daemon  # noqa: F401
from agent import cli_report  # noqa: F401
from agent import cli_storage  # noqa: F401,E402
