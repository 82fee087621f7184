"""The classic open-relay tricks, tried by a stranger against a real mailfast.

The server trusts 127.0.0.1 only; the stranger connects from 127.0.0.5. The
test zone sends ``remote.test`` to a scripted peer on 127.0.0.2, so mail that
leaked out would be seen arriving there, and would pass through the queue
on its way. Each trick gets a connection of its own, so that the refusals do
not add up to the bad-command limit.

mailfast treats the whole local part as a local user name: the percent hack
and bang paths at our own domain name no mailbox (550 5.1.1), addresses that
are not addresses are syntax errors (553 5.1.3), and anything whose domain is
not one of ours needs relay permission (554 5.7.1).
"""

from __future__ import annotations

import pytest

from tests.scriptedpeer import ScriptedPeer

from .relayfixtures import (
    MX1_ADDRESS,
    RELAY_DOMAIN,
    fixture_relay_port,  # noqa: F401 - a fixture, found by pytest here
    fixture_start_relay,  # noqa: F401 - a fixture, found by pytest here
    fixture_zone,  # noqa: F401 - a fixture, found by pytest here
    make_message,
    queue_dir,
    queued_files,
    send,
)
from .securityfixtures import SecureWire, small_message

pytestmark = pytest.mark.e2e

TRUSTED = "127.0.0.1"
STRANGER_ADDRESS = "127.0.0.5"  # loopback, but outside trusted_networks
STRANGER = "stranger@example.org"

UNKNOWN_USER = (550, "5.1.1")
BAD_SYNTAX = (553, "5.1.3")
RELAY_DENIED = (554, "5.7.1")

TRICKS = {
    f"user%{RELAY_DOMAIN}@localhost": UNKNOWN_USER,  # the percent hack
    f"{RELAY_DOMAIN}!user@localhost": UNKNOWN_USER,  # a UUCP bang path, at us
    f"{RELAY_DOMAIN}!user": BAD_SYNTAX,  # a bare bang path
    f"@localhost:user@{RELAY_DOMAIN}": RELAY_DENIED,  # a source route through us
    f'"user@{RELAY_DOMAIN}"@localhost': UNKNOWN_USER,  # "@" inside quotes
    "alice@localhost.": RELAY_DENIED,  # our own domain, fully qualified
    f"ALICE@{RELAY_DOMAIN.upper()}": RELAY_DENIED,
    f"user@{RELAY_DOMAIN}@localhost": BAD_SYNTAX,
    f"user@[{MX1_ADDRESS}]": RELAY_DENIED,  # an address literal
}


@pytest.fixture(name="peer")
def fixture_peer(relay_port: int):
    """The MX of remote.test: it records whatever reaches it."""
    with ScriptedPeer(host=MX1_ADDRESS, port=relay_port).in_thread() as peer:
        yield peer


def stranger_session(server) -> SecureWire:
    wire = SecureWire(server.host, server.port, source=STRANGER_ADDRESS)
    try:
        assert wire.reply().code == 220
        assert wire.command("EHLO stranger.test").code == 250
        assert wire.sock.getsockname()[0] == STRANGER_ADDRESS
    except BaseException:
        wire.close()
        raise
    return wire


def queue_entries(server) -> list[str]:
    """Every file under the queue's active and deferred directories."""
    root = queue_dir(server)
    return sorted(
        str(path.relative_to(root))
        for sub in ("active", "deferred")
        for path in (root / sub).rglob("*")
        if path.is_file()
    )


def test_no_relay_trick_gets_mail_out(start_relay, peer: ScriptedPeer) -> None:
    server = start_relay(relay={"trusted_networks": [f"{TRUSTED}/32"]})

    answers = {}
    for recipient in TRICKS:
        with stranger_session(server) as wire:
            assert wire.command(f"MAIL FROM:<{STRANGER}>").code == 250
            reply = wire.command(f"RCPT TO:<{recipient}>")
            answers[recipient] = (reply.code, reply.enhanced)
            # Had it been accepted, this would send it.
            data = wire.command("DATA")
            assert data.code in (503, 554), (recipient, data)
            wire.command("QUIT")
    assert answers == TRICKS

    # The same recipients at our own domain are ours to take.
    with stranger_session(server) as wire:
        message = small_message("for a local mailbox", sender=STRANGER)
        assert wire.command(f"MAIL FROM:<{STRANGER}>").code == 250
        assert wire.command("RCPT TO:<alice@localhost>").code == 250
        assert wire.command("RCPT TO:<ALICE@LOCALHOST>").code == 250
        assert wire.command("DATA").code == 354
        wire.send(message + b".\r\n")
        assert wire.reply().code == 250
    assert len(server.delivered("alice")) == 1

    # Nothing was queued and nothing reached the remote MX.
    assert queue_entries(server) == []
    assert queued_files(server) == []
    assert peer.connections == []
    assert peer.transactions == []

    # The control: relayed mail from the trusted address does reach the peer,
    # so the silence above means something.
    send(server, [f"bob@{RELAY_DOMAIN}"], make_message("control", "<control@test>"))
    [transaction] = peer.wait_transactions(1, timeout_s=15)
    assert transaction.rcpt_to == [f"bob@{RELAY_DOMAIN}"]
    assert all(c.client != STRANGER_ADDRESS for c in peer.connections)


def test_a_stranger_cannot_relay_over_an_accepted_transaction(
    start_relay, peer: ScriptedPeer
) -> None:
    # A local recipient first, then the remote one: the transaction being
    # acceptable must not carry the remote recipient along.
    server = start_relay(relay={"trusted_networks": [f"{TRUSTED}/32"]})
    with stranger_session(server) as wire:
        assert wire.command(f"MAIL FROM:<{STRANGER}>").code == 250
        assert wire.command("RCPT TO:<alice@localhost>").code == 250
        reply = wire.command(f"RCPT TO:<bob@{RELAY_DOMAIN}>")
        assert (reply.code, reply.enhanced) == RELAY_DENIED, reply
        assert wire.command("DATA").code == 354
        wire.send(small_message("mixed recipients", sender=STRANGER) + b".\r\n")
        assert wire.reply().code == 250
        # Nor does a second transaction on the same connection inherit anything.
        reply = wire.command("RSET")
        assert reply.code == 250
        reply = wire.command(f"MAIL FROM:<{STRANGER}>")
        assert reply.code == 250
        reply = wire.command(f"RCPT TO:<bob@{RELAY_DOMAIN}>")
        assert (reply.code, reply.enhanced) == RELAY_DENIED, reply

    assert len(server.delivered("alice")) == 1
    assert queue_entries(server) == []
    assert peer.connections == []
