"""The durable queue: a SIGKILL of every process, and ``mailfast queue``."""

from __future__ import annotations

import collections
import json
import os
import smtplib
import time

import pytest

from tests.scriptedpeer import ScriptedPeer

from .relayfixtures import (
    MX1_ADDRESS,
    MX1_HOST,
    RELAY_DOMAIN,
    SENDER,
    WAIT_S,
    bounces,
    fixture_relay_port,  # noqa: F401 - a fixture, found by pytest here
    fixture_start_relay,  # noqa: F401 - a fixture, found by pytest here
    fixture_zone,  # noqa: F401 - a fixture, found by pytest here
    make_message,
    message_ids,
    queue_command,
    queue_dir,
    queue_listing,
    queued_files,
    relay_lines,
    wait_for,
)

pytestmark = pytest.mark.e2e

RECIPIENT = f"bob@{RELAY_DOMAIN}"
CRASH_MESSAGES = 200
CRASH_DELIVERY_TIMEOUT_S = 60.0
RETRIES_BEFORE_KILL = 20
# With a back-off of an hour, only a flush explains a delivery within this.
FLUSH_DELIVERY_S = 10.0
NO_DELIVERY_S = 2.5


def crash_message_id(number: int) -> str:
    return f"<crash-{number}@localhost>"


def test_sigkill_of_every_process_loses_and_repeats_nothing(
    start_relay, relay_port
) -> None:
    server = start_relay()
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        for number in range(CRASH_MESSAGES):
            message = make_message(f"crash {number}", crash_message_id(number))
            assert client.sendmail(SENDER, [RECIPIENT], message) == {}

    # Every message has failed an attempt (its progress is in a state file),
    # and the retries have begun: at the kill, some messages are waiting in
    # deferred/ and others are claimed by a worker for their next attempt.
    wait_for(
        lambda: attempted(server) == CRASH_MESSAGES,
        WAIT_S,
        lambda: f"{attempted(server)} of {CRASH_MESSAGES} attempted",
    )
    wait_for(
        lambda: (
            len(relay_lines(server, "deferred")) >= CRASH_MESSAGES + RETRIES_BEFORE_KILL
        ),
        WAIT_S,
        "no retries",
    )
    workers = server.worker_pids()
    server.kill()  # SIGKILL to the process group: master and workers at once
    wait_for(lambda: not any(_alive(pid) for pid in workers), WAIT_S, "workers live on")
    claimed = list((queue_dir(server) / "active").glob("*/*"))
    assert len(queued_files(server)) == CRASH_MESSAGES
    print(f"at the kill: {len(claimed)} of {CRASH_MESSAGES} claimed by a worker")

    server.start()  # same configuration, same directory
    if claimed:
        # The master gave them back before any new worker could claim them.
        assert f"recovered {len(claimed)} queued messages" in server.log()
    with ScriptedPeer(
        host=MX1_ADDRESS, port=relay_port, name=MX1_HOST
    ).in_thread() as peer:
        wait_for(
            lambda: not queued_files(server),
            CRASH_DELIVERY_TIMEOUT_S,
            lambda: f"{len(queued_files(server))} messages still queued",
        )
        transactions = list(peer.transactions)

    received = collections.Counter(
        message_id for t in transactions for message_id in message_ids(t.data)
    )
    expected = {crash_message_id(n).encode() for n in range(CRASH_MESSAGES)}
    assert set(received) == expected
    repeated = {message_id: n for message_id, n in received.items() if n != 1}
    assert repeated == {}, "delivered more than once"
    assert len(transactions) == CRASH_MESSAGES
    assert bounces(server) == []


def attempted(server) -> int:
    """Messages with a state file: those that have had an attempt."""
    state_dir = queue_dir(server) / "state"
    return sum(1 for name in os.listdir(state_dir) if not name.endswith(".tmp"))


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] != b"Z"


def test_queue_lists_deletes_and_flushes(start_relay, relay_port) -> None:
    server = start_relay(queue={"min_backoff_s": 3600.0, "max_backoff_s": 3600.0})
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        for name in ("kept", "deleted"):
            message = make_message(name, f"<{name}@localhost>")
            assert client.sendmail(SENDER, [RECIPIENT], message) == {}

    # Both are deferred, with the reason the operator needs.
    wait_for(
        lambda: len(relay_lines(server, "deferred")) == 2,
        WAIT_S,
        lambda: f"no deferrals logged:\n{server.log()[-3000:]}",
    )
    listing = queue_listing(server)
    assert len(listing) == 2, listing
    # Waiting in deferred/ until the next attempt, which is the file's mtime.
    now = time.time()
    for queue_id in listing:
        deferred = queue_dir(server) / "deferred" / queue_id
        assert 3000 < deferred.stat().st_mtime - now <= 3600, queue_id
        assert (queue_dir(server) / "state" / queue_id).is_file()
    for entry in listing.values():
        assert "  deferred  " in entry.splitlines()[0], entry
        assert "attempts=1" in entry, entry
        assert f"from: <{SENDER}>" in entry, entry
        assert f"<{RECIPIENT}> (pending)" in entry, entry
        assert "last error: 4.4.1 " in entry, entry
    by_message_id = {
        message_ids(queue_command(server, "show", queue_id).encode())[0]: queue_id
        for queue_id in listing
    }
    kept, deleted = (
        by_message_id[b"<kept@localhost>"],
        by_message_id[b"<deleted@localhost>"],
    )

    # Deleted: gone from the listing and from the disk.
    assert queue_command(server, "delete", deleted).strip() == f"{deleted}: deleted"
    assert list(queue_listing(server)) == [kept]
    assert [path.name for path in queued_files(server)] == [kept]
    assert not (queue_dir(server) / "state" / deleted).exists()

    with ScriptedPeer(
        host=MX1_ADDRESS, port=relay_port, name=MX1_HOST
    ).in_thread() as peer:
        # The peer is back, but the next attempt is an hour away.
        time.sleep(NO_DELIVERY_S)
        assert peer.transactions == []

        queue_command(server, "flush")
        [transaction] = peer.wait_transactions(1, FLUSH_DELIVERY_S)
        wait_for(lambda: not queued_files(server), WAIT_S, "the message stays queued")
        time.sleep(NO_DELIVERY_S / 2)
        assert len(peer.transactions) == 1, "the deleted message was delivered"

    assert message_ids(transaction.data) == [b"<kept@localhost>"]
    assert queue_listing(server) == {}
    [sent] = relay_lines(server, "sent")
    assert sent["queue_id"] == kept
    assert bounces(server) == []


def test_message_is_in_the_accepting_workers_queue_before_the_250(
    start_relay, relay_port
) -> None:
    server = start_relay()
    message = make_message("slow peer", "<slow-peer@localhost>")
    # The peer holds its answer to the final dot: the message stays where
    # the accepting worker put it while it is being delivered.
    peer = ScriptedPeer(
        host=MX1_ADDRESS, port=relay_port, name=MX1_HOST, delays={"DATA_END": 3.0}
    )
    with peer.in_thread():
        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.mail(SENDER)[0] == 250
            assert client.rcpt(RECIPIENT)[0] == 250
            code, text = client.data(message)
            assert code == 250, text
            queue_id = text.decode().rsplit(" ", 1)[-1]
            [path] = queued_files(server)

        assert path.name == queue_id
        assert path.parent.parent == queue_dir(server) / "active"
        assert int(path.parent.name) in server.worker_pids()
        first_line, content = path.read_bytes().split(b"\n", 1)
        envelope = json.loads(first_line)
        assert envelope["id"] == queue_id
        assert envelope["sender"] == SENDER
        assert [r["address"] for r in envelope["recipients"]] == [RECIPIENT]
        assert content.startswith(b"Received: ") and content.endswith(message)
        [entry] = queue_listing(server).values()
        assert "being delivered" in entry, entry

        [transaction] = peer.wait_transactions(1, WAIT_S)
        wait_for(lambda: not queued_files(server), WAIT_S, "the message stays queued")

    assert message_ids(transaction.data) == [b"<slow-peer@localhost>"]
    [sent] = relay_lines(server)
    assert (sent["queue_id"], sent["status"]) == (queue_id, "sent")
