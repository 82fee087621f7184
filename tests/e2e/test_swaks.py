"""swaks, the SMTP Swiss army knife, delivering to mailfast."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .delivery import read_delivery
from .server import MailfastServer
from .tools import require_tool

pytestmark = pytest.mark.e2e


def run_swaks(server: MailfastServer, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            require_tool("swaks"),
            "--server",
            f"{server.host}:{server.port}",
            "--to",
            "alice@localhost",
            "--timeout",
            "20",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def sent_message(transcript: str) -> bytes:
    """The message swaks put on the wire, rebuilt from its transcript.

    swaks prints each line it sends as `` -> line``; between the 354 reply and
    the lone ``.`` they are the dot-stuffed message, sent with CRLF endings.
    """
    lines = transcript.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("<-  354"))
    end = lines.index(" -> .", start)
    body = [line.removeprefix(" -> ") for line in lines[start + 1 : end]]
    assert all(line.startswith(" -> ") for line in lines[start + 1 : end])
    unstuffed = [line[1:] if line.startswith(".") else line for line in body]
    return "".join(line + "\r\n" for line in unstuffed).encode("ascii")


def test_swaks_default_message(mailfast: MailfastServer) -> None:
    result = run_swaks(mailfast)

    assert result.returncode == 0, result.stdout + result.stderr
    [path] = mailfast.delivered("alice")
    assert read_delivery(path).message == sent_message(result.stdout)


def test_swaks_message_from_file(mailfast: MailfastServer, tmp_path: Path) -> None:
    # No line ending after the last line: swaks ends it with the CRLF that
    # precedes its ".", so what is delivered is the file plus CRLF.
    message = (
        b"From: swaks <swaks@example.org>\r\n"
        b"To: alice@localhost\r\n"
        b"Subject: swaks with dots\r\n"
        b"Message-ID: <swaks-1@example.org>\r\n"
        b"\r\n"
        b"first\r\n"
        b".dot first\r\n"
        b"..dot dot\r\n"
        b".\r\n"
        b"last"
    )
    data_file = tmp_path / "message.eml"
    data_file.write_bytes(message)

    result = run_swaks(
        mailfast, "--from", "swaks@example.org", "--data", f"@{data_file}"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    [path] = mailfast.delivered("alice")
    delivery = read_delivery(path)
    assert delivery.message == sent_message(result.stdout)
    assert delivery.message == message + b"\r\n"
    assert delivery.return_path == "<swaks@example.org>"
