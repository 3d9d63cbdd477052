"""The `refund-bridge` command: help, one-line failures, the store commands."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from bridge.cli import load_commands
from bridge.config import Settings
from tests.support.helpers import settings_env


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(load_commands(), ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "db"):
        assert command in result.output


def test_serve_without_directus_url_stops_with_one_line(settings: Settings) -> None:
    env = settings_env(settings)
    del env["BRIDGE_DIRECTUS_URL"]
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "serve"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "refund-bridge: configuration: BRIDGE_DIRECTUS_URL: is required but not set"
    ]
    assert "Traceback" not in result.stderr


def test_db_upgrade_then_check(runner: CliRunner, settings: Settings, database_url: str) -> None:
    env = settings_env(settings, database_url)
    check = runner.invoke(load_commands(), ["db", "check"], env=env)
    assert check.exit_code == 1
    assert "db upgrade" in check.output
    upgrade = runner.invoke(load_commands(), ["db", "upgrade"], env=env)
    assert upgrade.exit_code == 0, upgrade.output
    assert runner.invoke(load_commands(), ["db", "check"], env=env).exit_code == 0
