"""Postfix's smtp-source load generator: 5000 messages over 20 parallel sessions."""

from __future__ import annotations

import subprocess
import time

import pytest

from .delivery import read_delivery
from .server import MailfastServer
from .tools import require_tool

pytestmark = pytest.mark.e2e

SESSIONS = 20
MESSAGES = 5000
PAYLOAD_OCTETS = 4096


def test_smtp_source_5000_messages(mailfast: MailfastServer) -> None:
    command = [
        require_tool("smtp-source"),
        "-s",
        str(SESSIONS),
        "-m",
        str(MESSAGES),
        "-l",
        str(PAYLOAD_OCTETS),
        "-f",
        "load@example.org",
        "-t",
        "alice@localhost",
        f"{mailfast.host}:{mailfast.port}",
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=150)
    elapsed = time.monotonic() - started
    # Printed, never asserted: shown with -s or when the test fails.
    print(f"smtp-source: {MESSAGES} messages in {elapsed:.2f} s")

    assert result.returncode == 0, result.stdout + result.stderr
    delivered = mailfast.delivered("alice")
    assert len(delivered) == MESSAGES
    assert mailfast.unfinished("alice") == []

    # A sample is enough to catch truncation; reading all 5000 would add
    # seconds. smtp-source sends the same payload in every message.
    bodies = set()
    for path in delivered[:: MESSAGES // 50]:
        delivery = read_delivery(path)
        assert delivery.return_path == "<load@example.org>"
        bodies.add(delivery.message.split(b"\r\n\r\n", 1)[1])
    [body] = bodies
    assert len(body) >= PAYLOAD_OCTETS - 100, len(body)
