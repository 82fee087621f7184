"""Not an open relay: strangers may send only to our own domains."""

from __future__ import annotations

import smtplib

import pytest

from .relayfixtures import (
    RELAY_DOMAIN,
    fixture_relay_port,  # noqa: F401 - a fixture, found by pytest here
    fixture_start_relay,  # noqa: F401 - a fixture, found by pytest here
    fixture_zone,  # noqa: F401 - a fixture, found by pytest here
    make_message,
    queued_files,
    relay_lines,
)

pytestmark = pytest.mark.e2e

TRUSTED = "127.0.0.1"
UNTRUSTED = "127.0.0.5"  # loopback too, but outside trusted_networks
STRANGER = "stranger@example.org"

# Spellings of a remote recipient that an open relay has been tricked by.
# Each must be refused to a stranger, whatever the reason given.
DISGUISED_REMOTE = [
    f"x@{RELAY_DOMAIN.upper()}",
    f"@localhost:x@{RELAY_DOMAIN}",  # a source route: RFC 5321 says ignore it
    f"x%{RELAY_DOMAIN}@localhost",  # the percent hack
    f'"x@{RELAY_DOMAIN}"@localhost',
    f"x@{RELAY_DOMAIN}.",
    "x@[127.0.0.2]",
    f"x@localhost.{RELAY_DOMAIN}",
]


def connect(server, source: str) -> smtplib.SMTP:
    client = smtplib.SMTP(
        server.host, server.port, timeout=10, source_address=(source, 0)
    )
    client.ehlo("client.test")
    return client


def test_stranger_may_not_relay_but_may_send_to_us(start_relay) -> None:
    server = start_relay(relay={"trusted_networks": [f"{TRUSTED}/32"]})
    with connect(server, UNTRUSTED) as client:
        assert client.sock.getsockname()[0] == UNTRUSTED
        assert client.mail(STRANGER)[0] == 250
        code, text = client.rcpt(f"x@{RELAY_DOMAIN}")
        assert (code, text[:5]) == (554, b"5.7.1"), (code, text)
        assert client.rcpt("alice@localhost")[0] == 250
        message = make_message(
            "from a stranger", "<stranger@example.org>", "alice@localhost"
        )
        assert client.data(message)[0] == 250

    # The local copy only: nothing was queued for the remote domain.
    assert len(server.delivered("alice")) == 1
    assert queued_files(server) == []
    assert relay_lines(server) == []
    assert f"client=[{UNTRUSTED}]" in server.log()


def test_stranger_cannot_disguise_a_remote_recipient(start_relay) -> None:
    server = start_relay(relay={"trusted_networks": [f"{TRUSTED}/32"]})
    accepted = {}
    for recipient in DISGUISED_REMOTE:
        # A connection each: refusals count towards the bad-command limit.
        with connect(server, UNTRUSTED) as client:
            assert client.mail(STRANGER)[0] == 250
            code, text = client.rcpt(recipient)
            if not 500 <= code < 600:
                accepted[recipient] = (code, text)
            client.rset()
    assert accepted == {}
    assert queued_files(server) == []


def test_trusted_client_may_relay(start_relay) -> None:
    server = start_relay(relay={"trusted_networks": [f"{TRUSTED}/32"]})
    with connect(server, TRUSTED) as client:
        assert client.mail("alice@localhost")[0] == 250
        assert client.rcpt(f"x@{RELAY_DOMAIN}")[0] == 250
        client.rset()
