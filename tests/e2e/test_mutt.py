"""mutt, a real mail reader, opens the Maildir that mailfast wrote."""

from __future__ import annotations

import os
import shlex
import signal
import smtplib
import subprocess
from pathlib import Path

import pytest

from .server import MailfastServer
from .tools import require_tool

pytestmark = pytest.mark.e2e

MUTT_TIMEOUT_S = 20.0

# MIME with an encoded-word Subject and a quoted-printable body: mutt shows
# "Grüße" and "Köln" only if it found where mailfast's header block ends.
MESSAGE = (
    b"From: Sender <sender@example.org>\r\n"
    b"To: Alice <alice@localhost>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_from_mailfast?=\r\n"
    b"Message-ID: <mutt-1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Hello Alice,\r\n"
    b"greetings from K=C3=B6ln.\r\n"
)


def mutt_pipe_message(maildir: Path, workdir: Path) -> str:
    """The first message of ``maildir`` as mutt decodes it for a pipe.

    mutt is a full-screen program: ``script`` gives it a pseudo-terminal, and
    keys pushed from the command line pipe the message to a file and quit.
    """
    output = workdir / "mutt-output.txt"
    home = workdir / "mutt-home"
    home.mkdir()
    mutt = [
        require_tool("mutt"),
        "-n",
        "-F",
        "/dev/null",
        # A missing $folder (~/Mail) makes mutt ask whether to create it, and
        # that prompt would swallow the pushed keys.
        "-e",
        f"set folder={maildir.parent}",
        "-e",
        "set charset=utf-8 pipe_decode=yes wait_key=no",
        "-f",
        str(maildir),
        "-e",
        f'push "<pipe-message>cat > {shlex.quote(str(output))}<enter><quit>"',
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TERM": "xterm",
        "LANG": "C.UTF-8",
    }
    proc = subprocess.Popen(
        [require_tool("script"), "-qec", shlex.join(mutt), "/dev/null"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
        start_new_session=True,
    )
    try:
        screen, _ = proc.communicate(timeout=MUTT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        screen, _ = proc.communicate()
        pytest.fail(f"mutt did not finish; its screen:\n{screen!r}")
    assert proc.returncode == 0, screen
    assert output.exists(), f"mutt piped nothing; its screen:\n{screen!r}"
    return output.read_text(encoding="utf-8").replace("\r\n", "\n")


def test_mutt_reads_the_delivered_message(
    mailfast: MailfastServer, tmp_path: Path
) -> None:
    with smtplib.SMTP(mailfast.host, mailfast.port, timeout=10) as client:
        client.sendmail("sender@example.org", ["alice@localhost"], MESSAGE)
    assert len(mailfast.delivered("alice")) == 1

    shown = mutt_pipe_message(mailfast.maildir("alice"), tmp_path)

    assert "Subject: Grüße from mailfast\n" in shown
    assert "Delivered-To: alice@localhost\n" in shown
    assert "\nHello Alice,\ngreetings from Köln.\n" in shown
