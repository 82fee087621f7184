"""Bounces (RFC 3464) to a local sender: 5xx replies, DNS verdicts, mail loops."""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.scriptedpeer import ScriptedPeer

from .relayfixtures import (
    MX1_ADDRESS,
    MX1_HOST,
    NULL_MX_DOMAIN,
    NXDOMAIN_DOMAIN,
    RELAY_DOMAIN,
    SENDER,
    SERVFAIL_DOMAIN,
    WAIT_S,
    bounces,
    delivery_status,
    fixture_relay_port,  # noqa: F401 - a fixture, found by pytest here
    fixture_start_relay,  # noqa: F401 - a fixture, found by pytest here
    fixture_zone,  # noqa: F401 - a fixture, found by pytest here
    make_message,
    message_ids,
    queue_listing,
    queued_files,
    relay_lines,
    returned_original,
    send,
    wait_for,
)
from .server import HOSTNAME, free_port

pytestmark = pytest.mark.e2e

GOOD = f"good@{RELAY_DOMAIN}"
BAD = f"bad@{RELAY_DOMAIN}"
REJECTION = f"550 5.1.1 <{BAD}>: Recipient address rejected: User unknown"
# Long enough for a second, wrong, bounce to show up after the first.
QUIET_S = 2.0
# A DNS verdict needs no connection: the bounce comes at once.
PROMPT_BOUNCE_S = 5.0
LOOP_HOPS = 60
LIFETIME_S = 3.0


def wait_for_bounce(server):
    return wait_for(
        lambda: bounces(server),
        WAIT_S,
        lambda: f"no bounce for {SENDER}; log:\n{server.log()[-3000:]}",
    )


def recipient_fields(bounce) -> dict[str, str]:
    """The one recipient group of a DSN, as a dict of its fields."""
    [_message_fields, recipient] = delivery_status(bounce)
    return dict(recipient.items())


def test_one_rejected_recipient_is_bounced_the_other_delivered(
    start_relay, relay_port
) -> None:
    server = start_relay()
    message = make_message("half bounced", "<half-bounced@localhost>", GOOD)
    peer = ScriptedPeer(
        host=MX1_ADDRESS,
        port=relay_port,
        name=MX1_HOST,
        replies={f"RCPT {BAD}": REJECTION},
    )
    with peer.in_thread():
        send(server, [GOOD, BAD], message)
        [transaction] = peer.wait_transactions(1, WAIT_S)
        [bounce] = wait_for_bounce(server)
        wait_for(lambda: not queued_files(server), WAIT_S, "the message stays queued")
        time.sleep(QUIET_S)

    assert transaction.rcpt_to == [GOOD]
    assert message_ids(transaction.data) == [b"<half-bounced@localhost>"]
    assert len(bounces(server)) == 1, "one failed recipient, one bounce"

    # The report (RFC 3464 §2): a multipart/report with one recipient group.
    assert bounce["Return-Path"] == "<>"
    assert bounce["Delivered-To"] == SENDER
    assert bounce["To"] == f"<{SENDER}>"
    [notification, report, returned] = bounce.get_payload()
    assert notification.get_content_type() == "text/plain"
    assert report.get_content_type() == "message/delivery-status"
    assert returned.get_content_type() == "message/rfc822"
    message_fields = delivery_status(bounce)[0]
    assert message_fields["Reporting-MTA"] == f"dns; {HOSTNAME}"
    fields = recipient_fields(bounce)
    assert fields["Final-Recipient"] == f"rfc822; {BAD}"
    assert fields["Action"] == "failed"
    assert fields["Status"] == "5.1.1"
    assert fields["Diagnostic-Code"] == f"smtp; {REJECTION}"
    assert fields["Remote-MTA"] == f"dns; {MX1_HOST}"
    assert GOOD not in str(report)

    original = returned_original(bounce)
    assert original["Message-ID"] == "<half-bounced@localhost>"
    assert original["Subject"] == "half bounced"

    outcomes = {line["to"]: line for line in relay_lines(server)}
    assert outcomes[GOOD]["status"] == "sent"
    assert outcomes[BAD]["status"] == "bounced"
    assert outcomes[BAD]["dsn"] == "5.1.1"
    assert outcomes[BAD]["reply"] == REJECTION


@pytest.mark.parametrize(
    ("domain", "status"),
    [(NULL_MX_DOMAIN, "5.1.10"), (NXDOMAIN_DOMAIN, "5.1.2")],
    ids=["null-mx", "nxdomain"],
)
def test_domain_that_takes_no_mail_bounces_at_once(start_relay, domain, status) -> None:
    server = start_relay()
    recipient = f"someone@{domain}"
    started = time.monotonic()

    send(
        server,
        [recipient],
        make_message(f"to {domain}", f"<{domain}@localhost>", recipient),
    )

    [bounce] = wait_for_bounce(server)
    assert time.monotonic() - started < PROMPT_BOUNCE_S
    fields = recipient_fields(bounce)
    assert fields["Final-Recipient"] == f"rfc822; {recipient}"
    assert fields["Action"] == "failed"
    assert fields["Status"] == status
    assert returned_original(bounce)["Message-ID"] == f"<{domain}@localhost>"
    [line] = relay_lines(server)
    assert (line["to"], line["status"], line["dsn"]) == (recipient, "bounced", status)
    wait_for(lambda: not queued_files(server), WAIT_S, "the message stays queued")


def test_dns_server_failure_defers_and_does_not_bounce(start_relay, zone) -> None:
    server = start_relay(queue={"min_backoff_s": 60.0, "max_backoff_s": 60.0})
    recipient = f"someone@{SERVFAIL_DOMAIN}"

    send(
        server, [recipient], make_message("servfail", "<servfail@localhost>", recipient)
    )

    wait_for(
        lambda: relay_lines(server, "deferred"),
        WAIT_S,
        lambda: f"no deferral logged:\n{server.log()[-3000:]}",
    )
    assert zone.count(SERVFAIL_DOMAIN, "MX") >= 1
    [line] = relay_lines(server)
    assert line["dsn"] == "4.4.3", line
    [entry] = queue_listing(server).values()
    assert f"<{recipient}> (pending)" in entry, entry
    assert (
        f"last error: 4.4.3 DNS temporary failure looking up {SERVFAIL_DOMAIN} MX"
        in (entry)
    ), entry
    time.sleep(QUIET_S)
    assert bounces(server) == []


def test_too_many_received_fields_is_a_loop(start_relay, relay_port) -> None:
    server = start_relay()
    hops = "".join(
        f"Received: from hop{n}.example (hop{n}.example [192.0.2.{n}])\r\n"
        f"\tby relay{n}.example; Thu, 1 Jan 2026 00:00:{n:02d} +0000\r\n"
        for n in range(LOOP_HOPS)
    )
    message = make_message("looping", "<looping@localhost>", GOOD, extra=hops)
    with ScriptedPeer(
        host=MX1_ADDRESS, port=relay_port, name=MX1_HOST
    ).in_thread() as peer:
        send(server, [GOOD], message)
        [bounce] = wait_for_bounce(server)
        wait_for(lambda: not queued_files(server), WAIT_S, "the message stays queued")
        assert peer.transactions == [], "a looping message was relayed"

    fields = recipient_fields(bounce)
    assert fields["Final-Recipient"] == f"rfc822; {GOOD}"
    assert fields["Status"] == "5.4.6"
    [line] = relay_lines(server)
    assert (line["status"], line["dsn"]) == ("bounced", "5.4.6")


def test_mx_that_is_ourselves_is_a_loop(start_relay, zone) -> None:
    # This mailfast listens where the MX of loop.test points, on the port it
    # relays to: sending there would be sending to itself.
    port = free_port()
    zone.load(
        {"loop.test": {"MX": "10 mx.loop.test"}, "mx.loop.test": {"A": "127.0.0.1"}}
    )
    server = start_relay(listen=("127.0.0.1", port), relay={"port": port})
    recipient = "someone@loop.test"

    send(
        server, [recipient], make_message("to myself", "<myself@localhost>", recipient)
    )

    [bounce] = wait_for_bounce(server)
    fields = recipient_fields(bounce)
    assert fields["Final-Recipient"] == f"rfc822; {recipient}"
    assert fields["Status"] == "5.4.6"
    assert "loops back to myself" in fields["Diagnostic-Code"], fields
    wait_for(lambda: not queued_files(server), WAIT_S, "the message stays queued")
    time.sleep(QUIET_S)
    # Bounced on the first attempt: the message never went round.
    [line] = relay_lines(server)
    assert (line["to"], line["status"], line["dsn"]) == (recipient, "bounced", "5.4.6")
    assert len(bounces(server)) == 1


def test_message_older_than_the_queue_lifetime_bounces(start_relay) -> None:
    # Nothing listens on either MX: every attempt defers, until the lifetime.
    server = start_relay(queue={"max_lifetime_s": LIFETIME_S})
    started = time.monotonic()

    send(server, [GOOD], make_message("expiring", "<expiring@localhost>", GOOD))

    [bounce] = wait_for_bounce(server)
    assert time.monotonic() - started > LIFETIME_S
    fields = recipient_fields(bounce)
    assert fields["Final-Recipient"] == f"rfc822; {GOOD}"
    assert fields["Action"] == "failed"
    assert fields["Status"] == "4.4.7"
    assert returned_original(bounce)["Message-ID"] == "<expiring@localhost>"
    wait_for(lambda: not queued_files(server), WAIT_S, "the message stays queued")
    *retries, last = relay_lines(server)
    assert retries and all(line["status"] == "deferred" for line in retries)
    assert (last["status"], last["dsn"]) == ("bounced", "4.4.7")


@pytest.mark.parametrize(
    ("sender", "rcpt_options"),
    [("", []), (SENDER, ["NOTIFY=NEVER"])],
    ids=["null-sender", "notify-never"],
)
def test_no_bounce_when_none_may_be_sent(start_relay, sender, rcpt_options) -> None:
    # RFC 5321 §6.1: never bounce a bounce; RFC 3461 §4.1: NOTIFY=NEVER.
    server = start_relay()
    recipient = f"someone@{NXDOMAIN_DOMAIN}"
    message = make_message("no bounce", "<no-bounce@localhost>", recipient)
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail(sender)[0] == 250
        assert client.rcpt(recipient, rcpt_options)[0] == 250
        assert client.data(message)[0] == 250

    wait_for(lambda: relay_lines(server, "bounced"), WAIT_S, "no outcome logged")
    wait_for(lambda: not queued_files(server), WAIT_S, "the message stays queued")
    time.sleep(QUIET_S)
    assert server.all_delivered() == []
    assert queued_files(server) == []
