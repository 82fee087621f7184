"""Relaying in bulk to Postfix's smtp-sink, and to a second mailfast as the MX."""

from __future__ import annotations

import subprocess
import time

import pytest

from .delivery import read_delivery
from .relayfixtures import (
    MX1_ADDRESS,
    MX1_HOST,
    RELAY_DOMAIN,
    SENDER,
    WAIT_S,
    fixture_relay_port,  # noqa: F401 - a fixture, found by pytest here
    fixture_start_relay,  # noqa: F401 - a fixture, found by pytest here
    fixture_zone,  # noqa: F401 - a fixture, found by pytest here
    make_message,
    queued_files,
    relay_lines,
    send,
    smtp_sink,
    wait_for,
)
from .tools import require_tool

pytestmark = pytest.mark.e2e

SESSIONS = 20
MESSAGES = 1000
PAYLOAD_OCTETS = 4096
SOURCE_TIMEOUT_S = 60.0
RELAY_TIMEOUT_S = 60.0
# One MX query per worker at most, with room for an expiry; the point is
# that 1000 messages do not cost anything like 1000 queries.
MAX_MX_QUERIES = 4


def test_1000_messages_reach_smtp_sink_with_a_shared_mx_cache(
    start_relay, zone, relay_port, tmp_path
) -> None:
    with smtp_sink(MX1_ADDRESS, relay_port, tmp_path / "sink" / "dump") as dump_dir:
        server = start_relay(workers=2)
        started = time.monotonic()
        source = subprocess.run(
            [
                require_tool("smtp-source"),
                "-s",
                str(SESSIONS),
                "-m",
                str(MESSAGES),
                "-l",
                str(PAYLOAD_OCTETS),
                "-f",
                "sender@localhost",
                "-t",
                f"rcpt@{RELAY_DOMAIN}",
                f"{server.host}:{server.port}",
            ],
            capture_output=True,
            text=True,
            timeout=SOURCE_TIMEOUT_S,
        )
        accepted = time.monotonic()
        assert source.returncode == 0, source.stdout + source.stderr

        # Every message was queued before its 250: an empty queue means every
        # one has had its outcome.
        wait_for(
            lambda: not queued_files(server),
            RELAY_TIMEOUT_S,
            lambda: f"{len(queued_files(server))} messages still queued",
        )
        relayed = time.monotonic()
    print(
        f"{MESSAGES} messages accepted in {accepted - started:.2f} s, "
        f"all relayed after {relayed - started:.2f} s"
    )

    sent = relay_lines(server, "sent")
    assert len(sent) == MESSAGES, relay_lines(server)[:5]
    assert {line["to"] for line in sent} == {f"rcpt@{RELAY_DOMAIN}"}
    assert all(line["relay"].startswith(f"{MX1_HOST}[{MX1_ADDRESS}]") for line in sent)

    # The sink is stopped: every dump file is complete. One file per
    # transaction, so a message sent twice would show as an extra file.
    dumps = [path.read_bytes() for path in dump_dir.iterdir()]
    with_content = [d for d in dumps if b"\nMessage-Id: " in d]
    assert len(with_content) == MESSAGES, (len(dumps), len(with_content))
    for dump in with_content[:: MESSAGES // 20]:
        assert b"X-Mail-Args: <sender@localhost>" in dump
        assert f"X-Rcpt-Args: <rcpt@{RELAY_DOMAIN}>".encode() in dump
        body = dump.split(b"\n\n", 1)[1]
        assert body.count(b"X") >= PAYLOAD_OCTETS - 200, len(body)

    queries = zone.count(RELAY_DOMAIN, "MX")
    print(f"MX queries for {RELAY_DOMAIN}: {queries}")
    assert 1 <= queries <= MAX_MX_QUERIES, zone.counts()


def test_relay_to_a_second_mailfast_as_the_mx(start_relay, relay_port) -> None:
    receiver = start_relay(
        listen=(MX1_ADDRESS, relay_port),
        server={"hostname": MX1_HOST},
        domains={RELAY_DOMAIN: {"mailboxes": ["carol"]}},
    )
    relay = start_relay()
    message = make_message(
        "to a second mailfast", "<second-mailfast@localhost>", f"carol@{RELAY_DOMAIN}"
    )

    send(relay, [f"carol@{RELAY_DOMAIN}"], message)

    [path] = wait_for(
        lambda: receiver.delivered("carol", RELAY_DOMAIN),
        WAIT_S,
        lambda: f"nothing in carol's Maildir; relay log:\n{relay.log()[-3000:]}",
    )
    delivery = read_delivery(path)
    assert delivery.return_path == f"<{SENDER}>"
    assert delivery.delivered_to == f"carol@{RELAY_DOMAIN}"
    # What the receiver got is the relay's Received field, then the message.
    assert delivery.message.startswith(b"Received: from ")
    assert delivery.message.endswith(message)
    assert b"by mx.test" in delivery.message.split(b"\r\n\r\n", 1)[0]
    wait_for(lambda: not queued_files(relay), WAIT_S, "the relay keeps the message")
    [line] = relay_lines(relay)
    assert line["status"] == "sent"
    assert line["relay"] == f"{MX1_HOST}[{MX1_ADDRESS}]:{relay_port}"
