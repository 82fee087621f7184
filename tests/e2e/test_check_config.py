"""``mailfast check-config``: the operator's way to validate a file before use."""

from __future__ import annotations

import os
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest

from .server import default_settings, free_port, mailfast_command, render_toml

pytestmark = pytest.mark.e2e


def mailfast(
    cwd: Path, *args: str, timeout_s: float = 20
) -> subprocess.CompletedProcess:
    """Run mailfast to completion; on a hang, end its whole process group."""
    proc = subprocess.Popen(
        [*mailfast_command(), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"mailfast {' '.join(args)} still running after {timeout_s} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_typo_in_a_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_recipents = 5\n")

    result = mailfast(tmp_path, "check-config", "--config", str(config))

    assert result.returncode != 0
    assert "limits.max_recipents" in result.stderr
    assert "unknown key" in result.stderr


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nworkers = "two"\n', "server.workers"),
        ('[server]\nlisten = ["localhost"]\n', "server.listen"),
        ("[maildir]\nroots = 'x'\n", "maildir.roots"),
        ("[domains.localhost]\nmailbox = ['alice']\n", "domains.localhost.mailbox"),
        ("[limits]\ncommand_timeout_s = nan\n", "limits.command_timeout_s"),
        ("[domains.'../etc']\n", "domains.../etc"),
    ],
    ids=[
        "wrong-type",
        "bad-listen",
        "typo-section",
        "typo-domain-key",
        "nan-timeout",
        "domain-path-traversal",
    ],
)
def test_other_mistakes_are_named(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)

    result = mailfast(tmp_path, "check-config", "--config", str(config))

    assert result.returncode != 0
    assert key in result.stderr


def test_toml_syntax_error_fails(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server\nworkers = 2\n")

    result = mailfast(tmp_path, "check-config", "--config", str(config))

    assert result.returncode != 0
    assert result.stderr.strip()


def test_missing_file_fails(tmp_path: Path) -> None:
    result = mailfast(tmp_path, "check-config", "--config", str(tmp_path / "none.toml"))

    assert result.returncode != 0
    assert "none.toml" in result.stderr


def test_good_file_prints_the_effective_configuration(tmp_path: Path) -> None:
    settings = default_settings(free_port())
    settings["limits"]["max_recipients"] = 7
    config = tmp_path / "good.toml"
    config.write_text(render_toml(settings))

    result = mailfast(tmp_path, "check-config", "--config", str(config))

    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    # What the file says...
    assert effective["server"]["hostname"] == "mx.test"
    assert effective["server"]["listen"] == settings["server"]["listen"]
    assert effective["limits"]["max_recipients"] == 7
    assert effective["domains"]["localhost"]["mailboxes"] == ["alice", "bob"]
    assert effective["domains"]["localhost"]["aliases"]["team"] == ["alice", "bob"]
    # ...and the defaults it left out, spelled out.
    assert effective["limits"]["command_timeout_s"] == 300.0
    assert effective["limits"]["max_bad_commands"] == 10

    # The printed configuration is itself a valid configuration.
    again = tmp_path / "again.toml"
    again.write_text(result.stdout)
    second = mailfast(tmp_path, "check-config", "--config", str(again))
    assert second.returncode == 0, second.stderr
    assert tomllib.loads(second.stdout) == effective


def test_embedded_default(tmp_path: Path) -> None:
    result = mailfast(tmp_path, "check-config")

    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    assert effective["server"]["listen"] == ["127.0.0.1:2525"]
    assert effective["maildir"]["root"] == "var/mail"
    assert set(effective["domains"]["localhost"]["mailboxes"]) == {"alice", "bob"}
    assert effective["domains"]["localhost"]["aliases"]["postmaster"] in (
        "alice",
        ["alice"],
    )


def test_serving_with_a_bad_file_fails_fast(tmp_path: Path) -> None:
    # A listen address of its own: should mailfast wrongly start, it must not
    # take a developer's port 2525.
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{free_port()}"]\n[limits]\nmax_recipents = 5\n'
    )

    result = mailfast(tmp_path, "--config", str(config), "--workers", "1")

    assert result.returncode != 0
    assert "limits.max_recipents" in result.stderr
    assert not (tmp_path / "var").exists()
