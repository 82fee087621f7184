"""MX fail-over and retries: a host that is down, then all of them."""

from __future__ import annotations

import pytest

from tests.scriptedpeer import ScriptedPeer

from .delivery import read_delivery
from .relayfixtures import (
    MX1_ADDRESS,
    MX1_HOST,
    MX2_ADDRESS,
    MX2_HOST,
    RELAY_DOMAIN,
    SENDER,
    WAIT_S,
    bounces,
    fixture_relay_port,  # noqa: F401 - a fixture, found by pytest here
    fixture_start_relay,  # noqa: F401 - a fixture, found by pytest here
    fixture_zone,  # noqa: F401 - a fixture, found by pytest here
    make_message,
    message_ids,
    queue_listing,
    queued_files,
    relay_lines,
    send,
    wait_for,
)

pytestmark = pytest.mark.e2e

RECIPIENT = f"bob@{RELAY_DOMAIN}"


def test_first_mx_down_delivers_through_the_second(start_relay, relay_port) -> None:
    server = start_relay()
    with ScriptedPeer(
        host=MX2_ADDRESS, port=relay_port, name=MX2_HOST
    ).in_thread() as peer:
        send(server, [RECIPIENT], make_message("fail-over", "<failover@localhost>"))
        [transaction] = peer.wait_transactions(1, WAIT_S)
        wait_for(lambda: not queued_files(server), WAIT_S, "the message stays queued")

    assert transaction.mail_from == SENDER
    assert transaction.rcpt_to == [RECIPIENT]
    assert message_ids(transaction.data) == [b"<failover@localhost>"]
    [line] = relay_lines(server)
    assert line["status"] == "sent", line
    assert line["relay"] == f"{MX2_HOST}[{MX2_ADDRESS}]:{relay_port}"
    assert bounces(server) == []


def test_all_mx_down_defers_then_delivers_when_one_comes_back(
    start_relay, relay_port
) -> None:
    server = start_relay(queue={"min_backoff_s": 1.0, "max_backoff_s": 2.0})
    send(server, [RECIPIENT], make_message("retried", "<retried@localhost>"))

    wait_for(
        lambda: relay_lines(server, "deferred"),
        WAIT_S,
        lambda: f"no deferral logged:\n{server.log()[-3000:]}",
    )
    [(queue_id, entry)] = queue_listing(server).items()
    assert f"<{RECIPIENT}> (pending)" in entry, entry
    assert "last error: 4.4.1 " in entry, entry
    [line, *_] = relay_lines(server, "deferred")
    assert line["queue_id"] == queue_id
    assert line["dsn"].startswith("4."), line

    with ScriptedPeer(
        host=MX1_ADDRESS, port=relay_port, name=MX1_HOST
    ).in_thread() as peer:
        [transaction] = peer.wait_transactions(1, WAIT_S)
        wait_for(lambda: not queued_files(server), WAIT_S, "the message stays queued")

    assert transaction.rcpt_to == [RECIPIENT]
    assert message_ids(transaction.data) == [b"<retried@localhost>"]
    [sent] = relay_lines(server, "sent")
    assert sent["queue_id"] == queue_id
    assert sent["relay"] == f"{MX1_HOST}[{MX1_ADDRESS}]:{relay_port}"
    assert queue_listing(server) == {}
    assert bounces(server) == []


def test_local_and_remote_recipients_of_one_message(start_relay, relay_port) -> None:
    server = start_relay()
    message = make_message("both ways", "<both-ways@localhost>")
    with ScriptedPeer(
        host=MX1_ADDRESS, port=relay_port, name=MX1_HOST
    ).in_thread() as peer:
        send(server, ["bob@localhost", RECIPIENT], message)
        [transaction] = peer.wait_transactions(1, WAIT_S)
        wait_for(lambda: not queued_files(server), WAIT_S, "the message stays queued")

    # Each copy once, each where it belongs.
    assert transaction.rcpt_to == [RECIPIENT]
    assert transaction.data.endswith(message)
    [local] = server.delivered("bob")
    assert read_delivery(local).message.endswith(message)
    assert server.delivered("alice") == []
    [line] = relay_lines(server)
    assert (line["to"], line["status"]) == (RECIPIENT, "sent")
    # Accepted, one copy delivered and one queued: the acceptance line says so.
    assert " result=delivered,queued " in server.log()
