"""The relay queue on real files: what ``Delivery.accept`` writes, and the
renames between active/, deferred/ and state/ that decide who owns a message.

Messages are accepted through the real ``Delivery`` and group committer, so
the files under test are the ones a worker writes. Where a test needs more
than one worker, ``WorkerQueue`` gives each its own process id for its
active directory; everything else, the renames above all, is the real code.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailfast.addresses import Mailbox
from mailfast.config import parse
from mailfast.delivery import Delivery
from mailfast.directory import Directory, LocalTarget
from mailfast.envelope import Envelope, Recipient
from mailfast.groupcommit import GroupCommitter
from mailfast.ids import new_queue_id
from mailfast.maildir import MaildirStore
from mailfast.mailqueue import (
    CorruptQueueFile,
    DeliveryState,
    MailQueue,
    envelope_line,
)
from mailfast.relaymodel import RelayRecipient
from mailfast.spool import MessageBuffer

HOSTNAME = "mx.test"
CONFIG = parse(
    f'[server]\nhostname = "{HOSTNAME}"\n\n[domains.localhost]\nmailboxes = ["alice"]\n'
)
CONTENT = (
    b"From: Carol <carol@example.org>\r\n"
    b"To: Bob <bob@example.net>, Alice <alice@localhost>\r\n"
    b"Subject: minutes\r\n"
    b"\r\n"
    b"The minutes are attached.\r\n"
    b".\r\n"
    b"(a lone dot, unstuffed: part of the content)\r\n"
)
CAROL = Mailbox("carol", "example.org")
BOB = Mailbox("bob", "example.net")
ALICE = Mailbox("alice", "localhost")
ALICE_BOX = LocalTarget("localhost", "alice")


@dataclass
class Site:
    """One worker's view of a queue and a mail root under tmp_path."""

    queue: MailQueue
    committer: GroupCommitter
    delivery: Delivery
    mail_root: Path
    spool_dir: Path
    queued: list[str] = field(default_factory=list)  # what on_queued was given


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit") as executor:
        queue = MailQueue(str(tmp_path / "queue"))
        queue.prepare_worker()
        committer = GroupCommitter(executor, "fsync")
        delivery = Delivery(
            HOSTNAME,
            Directory(CONFIG),
            MaildirStore(str(tmp_path / "mail")),
            queue,
            committer,
            str(tmp_path / "spool"),
        )
        site = Site(queue, committer, delivery, tmp_path / "mail", tmp_path / "spool")
        delivery.on_queued = site.queued.append
        yield site


class WorkerQueue(MailQueue):
    """The queue as the worker with process id ``pid`` sees it."""

    def __init__(self, directory: str, pid: int):
        super().__init__(directory)
        self.pid = pid

    def active_dir(self, pid: int | None = None) -> str:
        return super().active_dir(pid or self.pid)


def envelope(*recipients: Recipient, sender: Mailbox | None = CAROL) -> Envelope:
    result = Envelope("192.0.2.7", "client.example", "ESMTP", reverse_path=sender)
    result.recipients.extend(recipients)
    return result


def accept(site: Site, message_envelope: Envelope, memory_limit: int = 1 << 20) -> str:
    """Accept CONTENT (written in pieces) for ``message_envelope``; its queue id."""
    message = MessageBuffer(str(site.spool_dir), memory_limit)
    for start in range(0, len(CONTENT), 40):
        message.write(CONTENT[start : start + 40])
    queue_id = new_queue_id()
    try:
        asyncio.run(site.delivery.accept(message_envelope, message, queue_id))
    finally:
        message.discard()
    return queue_id


def split_queue_file(data: bytes) -> tuple[dict, bytes, bytes]:
    """(envelope record, Received field, content) of a queue file from accept."""
    line, _newline, rest = data.partition(b"\n")
    # The trace field is folded: it ends at the first line not starting a tab.
    end = 0
    while True:
        end = rest.index(b"\r\n", end) + 2
        if rest[end : end + 1] != b"\t":
            break
    return json.loads(line), rest[:end], rest[end:]


def put_deferred(queue: MailQueue, queue_id: str, due_at: float) -> Path:
    """A queued message in deferred/, due at ``due_at``."""
    path = Path(queue.deferred_dir) / queue_id
    recipients = [{"address": "bob@example.net", "notify": [], "orcpt": ""}]
    line = envelope_line(queue_id, "carol@example.org", recipients, due_at - 600)
    path.write_bytes(line + CONTENT)
    os.utime(path, (due_at, due_at))
    return path


def put_active(queue: MailQueue, queue_id: str, mtime: float) -> Path:
    path = Path(queue.active_dir()) / queue_id
    recipients = [{"address": "bob@example.net", "notify": [], "orcpt": ""}]
    path.write_bytes(envelope_line(queue_id, "", recipients, mtime) + CONTENT)
    os.utime(path, (mtime, mtime))
    return path


# Accepting.


@pytest.mark.parametrize("memory_limit", [1 << 20, 16], ids=["in-memory", "spooled"])
def test_accepted_remote_message_is_one_queue_file_in_our_active_directory(
    site: Site, memory_limit: int
) -> None:
    bob = Recipient(
        BOB,
        targets=(),
        notify=("SUCCESS", "FAILURE"),
        orcpt="rfc822;bob+2Bx@example.net",
    )
    message_envelope = envelope(bob)
    message_envelope.body = "8BITMIME"
    message_envelope.smtputf8 = True
    message_envelope.ret = "HDRS"
    message_envelope.envid = "trip+2B1"

    before = time.time()
    queue_id = accept(site, message_envelope, memory_limit)
    after = time.time()

    active = Path(site.queue.active_dir())
    assert os.listdir(active) == [queue_id]
    assert site.queued == [str(active / queue_id)]
    assert os.listdir(site.queue.tmp_dir) == []
    assert os.listdir(site.queue.deferred_dir) == []
    assert not site.mail_root.exists()  # no local recipient, no Maildir
    record, received, content = split_queue_file((active / queue_id).read_bytes())
    assert before <= record.pop("arrival") <= after
    assert record == {
        "v": 1,
        "id": queue_id,
        "sender": "carol@example.org",
        "recipients": [
            {
                "address": "bob@example.net",
                "notify": ["SUCCESS", "FAILURE"],
                "orcpt": "rfc822;bob+2Bx@example.net",
            }
        ],
        "body": "8BITMIME",
        "smtputf8": True,
        "ret": "HDRS",
        "envid": "trip+2B1",
        "client_ip": "192.0.2.7",
        "helo": "client.example",
    }
    head, _semicolon, date = received.rpartition(b"; ")
    assert head == (
        b"Received: from client.example ([192.0.2.7])\r\n"
        b"\tby mx.test (mailfast) with ESMTP id " + queue_id.encode() + b"\r\n"
        b"\tfor <bob@example.net>"
    )
    when = email.utils.parsedate_to_datetime(date.decode()).timestamp()
    assert int(before) - 1 <= when <= after
    assert content == CONTENT


def test_local_and_remote_recipients_are_written_by_one_commit(site: Site) -> None:
    bob = Recipient(BOB, targets=())
    queue_id = accept(site, envelope(Recipient(ALICE, targets=(ALICE_BOX,)), bob, bob))

    assert (site.committer.batches, site.committer.jobs) == (1, 1)
    queue_path = Path(site.queue.active_dir()) / queue_id
    assert site.queued == [str(queue_path)]
    record, received, content = split_queue_file(queue_path.read_bytes())
    # A remote address named twice is one recipient of the queued message.
    assert [r["address"] for r in record["recipients"]] == ["bob@example.net"]
    assert content == CONTENT
    [copy] = list((site.mail_root / "localhost" / "alice" / "new").iterdir())
    assert copy.read_bytes() == (
        b"Return-Path: <carol@example.org>\r\n"
        b"Delivered-To: alice@localhost\r\n" + received + CONTENT
    )
    assert b"\tfor <" not in received  # named only for a single recipient


def test_local_recipients_only_leave_the_queue_alone(site: Site) -> None:
    accept(site, envelope(Recipient(ALICE, targets=(ALICE_BOX,))))

    assert site.queued == []
    assert os.listdir(site.queue.active_dir()) == []
    assert len(os.listdir(site.mail_root / "localhost" / "alice" / "new")) == 1


# Reading back and recording progress.


def test_load_reads_back_envelope_content_and_a_fresh_state(site: Site) -> None:
    bob = Recipient(BOB, (), notify=("FAILURE",), orcpt="rfc822;bob@example.net")
    jose = Recipient(Mailbox("josé", "example.net"), ())
    message_envelope = envelope(bob, jose)
    message_envelope.smtputf8 = True
    queue_id = accept(site, message_envelope)
    path = os.path.join(site.queue.active_dir(), queue_id)

    message = site.queue.load(path)

    data = Path(path).read_bytes()
    first_line = data[: data.index(b"\n") + 1]
    assert first_line.isascii()  # non-ASCII addresses are escaped in the JSON
    assert message.path == path
    assert message.queue_id == queue_id
    assert message.sender == "carol@example.org"
    assert message.arrival == pytest.approx(time.time(), abs=30)
    assert message.content_offset == len(first_line)
    assert message.content_size == len(data) - len(first_line)
    assert data[message.content_offset :].endswith(CONTENT)
    assert message.state == DeliveryState()
    assert message.recipients() == [
        RelayRecipient("bob@example.net", ("FAILURE",), "rfc822;bob@example.net"),
        RelayRecipient("josé@example.net", (), ""),
    ]
    assert message.pending() == [0, 1]
    message.state.done.append(0)
    assert message.pending() == [1]
    relay = message.relay_message([1])
    assert relay.queue_id == queue_id
    assert relay.sender == "carol@example.org"
    assert relay.recipients == [RelayRecipient("josé@example.net", (), "")]
    assert (relay.content_path, relay.content_offset, relay.content_size) == (
        path,
        message.content_offset,
        message.content_size,
    )
    assert (relay.body, relay.smtputf8, relay.ret, relay.envid) == (
        "7BIT",
        True,
        "",
        "",
    )


def test_delivery_state_round_trips_through_json() -> None:
    state = DeliveryState(3, 1_700_000_123.456789, "451 4.3.0 Mailbox busy", [0, 2])

    assert DeliveryState.from_json(state.to_json()) == state
    assert DeliveryState.from_json(DeliveryState().to_json()) == DeliveryState()


def good_record(queue_id: str) -> dict:
    recipients = [{"address": "bob@example.net", "notify": [], "orcpt": ""}]
    return json.loads(envelope_line(queue_id, "carol@example.org", recipients, 1.0))


def altered(queue_id: str, **changes: object) -> bytes:
    """The envelope line of a good record with ``changes`` (None deletes)."""
    record = good_record(queue_id)
    for key, value in changes.items():
        if value is None:
            del record[key]
        else:
            record[key] = value
    return json.dumps(record).encode() + b"\n"


# The first line of queue file "Q1", and words of the reason CorruptQueueFile gives.
BAD_ENVELOPES = {
    "no id": (b'{"v":1}\n', "no 'id'"),
    "json array": (b"[1]\n", "JSON array"),
    "json null": (b"null\n", "JSON null"),
    "not json": (b"From: carol@example.org\n", "not JSON"),
    "bad utf-8": (b'{"v":1,"id":"\xff"}\n', "not JSON"),
    "deep nesting": (b"[" * 100_000 + b"\n", "not JSON"),
    "truncated": (altered("Q1")[:40], "truncated"),
    "empty": (b"", "empty file"),
    "no recipients": (altered("Q1", recipients=None), "no 'recipients'"),
    "recipient not an object": (altered("Q1", recipients=["bob"]), "recipient 0"),
    "notify not strings": (
        altered("Q1", recipients=[{"address": "b@x", "notify": [1], "orcpt": ""}]),
        "'notify'",
    ),
    "arrival not a number": (altered("Q1", arrival=True), "'arrival'"),
    "smtputf8 not a boolean": (altered("Q1", smtputf8="yes"), "'smtputf8'"),
    "another version": (altered("Q1", v=2), "version 2"),
    "another file's id": (altered("Q1", id="../state/Q2"), "not the file's"),
}


@pytest.mark.parametrize("case", list(BAD_ENVELOPES), ids=list(BAD_ENVELOPES))
def test_load_of_an_envelope_of_the_wrong_shape_raises_corrupt_queue_file(
    tmp_path: Path, case: str
) -> None:
    queue = MailQueue(str(tmp_path / "queue"))
    queue.prepare_worker()
    line, reason = BAD_ENVELOPES[case]
    path = Path(queue.deferred_dir) / "Q1"
    # A line without its newline is all there is: the file was cut there.
    path.write_bytes(line + CONTENT if line.endswith(b"\n") else line)

    with pytest.raises(CorruptQueueFile, match=reason) as raised:
        queue.load(str(path))

    assert isinstance(raised.value, ValueError)  # one type for every caller


BAD_STATES = {
    "missing keys": (b'{"attempts": 1}', "no 'next_attempt'"),
    "json array": (b"[]", "JSON array"),
    "not json": (b"\xff", "not JSON"),
    "done not indices": (
        b'{"attempts": 1, "next_attempt": 0, "last_error": "", "done": ["0"]}',
        "'done'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STATES), ids=list(BAD_STATES))
def test_load_of_a_message_with_a_malformed_state_raises_corrupt_queue_file(
    tmp_path: Path, case: str
) -> None:
    queue = MailQueue(str(tmp_path / "queue"))
    queue.prepare_worker()
    path = put_deferred(queue, "Q1", time.time())
    data, reason = BAD_STATES[case]
    (Path(queue.state_dir) / "Q1").write_bytes(data)

    with pytest.raises(CorruptQueueFile, match=reason):
        queue.load(str(path))


def test_load_of_what_is_not_a_regular_file_raises_corrupt_queue_file(
    tmp_path: Path,
) -> None:
    queue = MailQueue(str(tmp_path / "queue"))
    queue.prepare_worker()
    good = put_deferred(queue, "Q1", time.time())
    deferred = Path(queue.deferred_dir)
    (deferred / "adir").mkdir()
    os.mkfifo(deferred / "afifo")  # must not block the reader
    (deferred / "alink").symlink_to(good)
    (Path(queue.state_dir) / "Q1").mkdir()

    for name, reason in [
        ("adir", "not a regular file"),
        ("afifo", "not a regular file"),
        ("alink", "symbolic link"),
        ("Q1", "state file is a directory"),
    ]:
        with pytest.raises(CorruptQueueFile, match=reason):
            queue.load(str(deferred / name))


def test_quarantine_moves_the_file_and_its_state_into_corrupt(
    tmp_path: Path,
) -> None:
    queue = MailQueue(str(tmp_path / "queue"))
    queue.create_directories()
    queue.prepare_worker()
    path = put_active(queue, "Q1", time.time())
    (Path(queue.state_dir) / "Q1").write_bytes(b"[]")
    other = put_active(queue, "Q2", time.time())

    assert queue.quarantine(str(path)) == os.path.join(queue.corrupt_dir, "Q1")
    assert queue.quarantine(str(other)) == os.path.join(queue.corrupt_dir, "Q2")

    assert sorted(os.listdir(queue.corrupt_dir)) == ["Q1", "Q1.state", "Q2"]
    assert os.listdir(queue.active_dir()) == []
    assert os.listdir(queue.state_dir) == []
    assert list(queue.all_messages()) == [
        ("corrupt", os.path.join(queue.corrupt_dir, "Q1")),
        ("corrupt", os.path.join(queue.corrupt_dir, "Q2")),
    ]


def test_quarantine_keeps_an_entry_set_aside_earlier_under_the_same_name(
    tmp_path: Path,
) -> None:
    # MailQueue.quarantine makes corrupt/ itself: a queue may predate it.
    queue = MailQueue(str(tmp_path / "queue"))
    queue.prepare_worker()
    first = put_active(queue, "Q1", time.time())
    first.write_bytes(b"first")
    queue.quarantine(str(first))
    second = put_active(queue, "Q1", time.time())
    second.write_bytes(b"second")

    target = queue.quarantine(str(second))

    assert target.startswith(os.path.join(queue.corrupt_dir, "Q1."))
    assert (Path(queue.corrupt_dir) / "Q1").read_bytes() == b"first"
    assert Path(target).read_bytes() == b"second"


def test_defer_saves_the_state_and_dates_the_file_by_its_next_attempt(
    site: Site,
) -> None:
    queue_id = accept(site, envelope(Recipient(BOB, ()), Recipient(CAROL, ())))
    message = site.queue.load(os.path.join(site.queue.active_dir(), queue_id))
    next_attempt = time.time() + 300.25
    message.state = DeliveryState(1, next_attempt, "451 4.3.0 Mailbox busy", [1])

    site.queue.defer(message)

    deferred = Path(site.queue.deferred_dir) / queue_id
    assert message.path == str(deferred)
    assert os.listdir(site.queue.active_dir()) == []
    assert deferred.stat().st_mtime == pytest.approx(next_attempt, abs=1e-3)
    assert os.listdir(site.queue.state_dir) == [queue_id]  # no temporary left
    again = site.queue.load(str(deferred))
    assert again.state == message.state
    assert again.pending() == [0]


def test_remove_deletes_the_message_and_its_state(site: Site) -> None:
    first = accept(site, envelope(Recipient(BOB, ())))
    second = accept(site, envelope(Recipient(BOB, ())))
    with_state = site.queue.load(os.path.join(site.queue.active_dir(), first))
    with_state.state.attempts = 1
    site.queue.save_state(with_state)
    without_state = site.queue.load(os.path.join(site.queue.active_dir(), second))

    site.queue.remove(with_state)
    site.queue.remove(without_state)

    assert os.listdir(site.queue.active_dir()) == []
    assert os.listdir(site.queue.state_dir) == []


# Claiming deferred messages.


def test_claim_due_takes_only_messages_whose_time_has_come(tmp_path: Path) -> None:
    queue = MailQueue(str(tmp_path / "queue"))
    queue.prepare_worker()
    now = time.time()
    put_deferred(queue, "overdue", now - 3600)
    put_deferred(queue, "justdue", now)
    put_deferred(queue, "later", now + 300)

    claimed = queue.claim_due(now, limit=10)

    assert sorted(claimed) == [
        os.path.join(queue.active_dir(), "justdue"),
        os.path.join(queue.active_dir(), "overdue"),
    ]
    assert sorted(os.listdir(queue.active_dir())) == ["justdue", "overdue"]
    assert os.listdir(queue.deferred_dir) == ["later"]


def test_claim_due_stops_at_its_limit(tmp_path: Path) -> None:
    queue = MailQueue(str(tmp_path / "queue"))
    queue.prepare_worker()
    for number in range(5):
        put_deferred(queue, f"m{number}", time.time() - 60)

    claimed = queue.claim_due(time.time(), limit=2)

    assert len(claimed) == 2
    assert sorted(os.listdir(queue.active_dir())) == sorted(
        map(os.path.basename, claimed)
    )
    assert len(os.listdir(queue.deferred_dir)) == 3


def test_claim_due_sets_aside_what_is_not_a_regular_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = MailQueue(str(tmp_path / "queue"))
    queue.create_directories()
    queue.prepare_worker()
    put_deferred(queue, "due", time.time() - 60)
    deferred = Path(queue.deferred_dir)
    (deferred / "adir").mkdir()
    (deferred / "adir" / "inside").write_bytes(b"x")
    os.mkfifo(deferred / "afifo")
    (deferred / "alink").symlink_to(deferred / "due")

    with caplog.at_level(logging.WARNING, logger="mailfast"):
        claimed = queue.claim_due(time.time(), limit=10)

    assert claimed == [os.path.join(queue.active_dir(), "due")]
    assert os.listdir(queue.deferred_dir) == []
    assert sorted(os.listdir(queue.corrupt_dir)) == ["adir", "afifo", "alink"]
    warned = " ".join(record.getMessage() for record in caplog.records)
    for name in ("adir", "afifo", "alink"):
        assert str(deferred / name) in warned


def test_two_workers_claiming_at_once_never_get_the_same_message(
    tmp_path: Path,
) -> None:
    directory = str(tmp_path / "queue")
    workers = [WorkerQueue(directory, 1001), WorkerQueue(directory, 1002)]
    for worker in workers:
        worker.prepare_worker()
    names = [f"m{number:03d}" for number in range(300)]
    for name in names:
        put_deferred(workers[0], name, time.time() - 60)
    start = threading.Barrier(len(workers))
    claimed: dict[int, list[str]] = {}

    def claim(worker: WorkerQueue) -> None:
        start.wait()
        claimed[worker.pid] = worker.claim_due(time.time(), limit=1000)

    threads = [threading.Thread(target=claim, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    first = {os.path.basename(path) for path in claimed[1001]}
    second = {os.path.basename(path) for path in claimed[1002]}
    assert not first & second
    assert sorted(first | second) == names
    assert set(os.listdir(workers[0].active_dir())) == first
    assert set(os.listdir(workers[1].active_dir())) == second
    assert os.listdir(directory + "/deferred") == []
    assert workers[1].claim_due(time.time(), limit=1000) == []


# Recovery after a worker dies, and flushing.


def test_recover_gives_one_dead_workers_messages_back_due_at_once(
    tmp_path: Path,
) -> None:
    directory = str(tmp_path / "queue")
    dead, alive = WorkerQueue(directory, 4242), WorkerQueue(directory, 4243)
    for worker in (dead, alive):
        worker.prepare_worker()
    put_active(dead, "a", time.time() + 86400)
    put_active(dead, "b", time.time() - 86400)
    put_active(alive, "c", time.time() - 60)
    master = MailQueue(directory)

    before = time.time()
    moved = master.recover(4242)
    after = time.time()

    assert moved == 2
    assert not os.path.exists(dead.active_dir())
    assert os.listdir(alive.active_dir()) == ["c"]
    assert sorted(os.listdir(master.deferred_dir)) == ["a", "b"]
    for name in ("a", "b"):
        mtime = os.stat(os.path.join(master.deferred_dir, name)).st_mtime
        assert before - 0.01 <= mtime <= after + 0.01
    assert master.recover(4242) == 0  # nothing left of it


def test_recover_without_a_pid_empties_every_active_directory(tmp_path: Path) -> None:
    directory = str(tmp_path / "queue")
    workers = [WorkerQueue(directory, pid) for pid in (11, 12, 13)]
    for worker in workers:
        worker.prepare_worker()
    put_active(workers[0], "a", time.time() + 3600)
    put_active(workers[1], "b", time.time() + 3600)
    master = MailQueue(directory)

    assert master.recover() == 2

    assert os.listdir(master.active_root) == []
    assert sorted(os.listdir(master.deferred_dir)) == ["a", "b"]
    successor = WorkerQueue(directory, 14)
    successor.prepare_worker()
    claimed = successor.claim_due(time.time(), 10)
    assert sorted(map(os.path.basename, claimed)) == ["a", "b"]


def test_recover_skips_a_stray_file_in_active_and_a_directory_in_tmp(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = str(tmp_path / "queue")
    worker = WorkerQueue(directory, 21)
    worker.prepare_worker()
    put_active(worker, "a", time.time())
    master = MailQueue(directory)
    stray = Path(master.active_root) / "stray"
    stray.write_bytes(b"")
    (Path(master.tmp_dir) / "straydir").mkdir()
    (Path(master.tmp_dir) / "half-written").write_bytes(b"x")

    with caplog.at_level(logging.WARNING, logger="mailfast"):
        assert master.recover() == 1

    assert os.listdir(master.deferred_dir) == ["a"]
    assert os.listdir(master.active_root) == ["stray"]
    assert os.listdir(master.tmp_dir) == ["straydir"]
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert str(stray) in warned
    assert os.path.join(master.tmp_dir, "straydir") in warned
    assert list(master.all_messages()) == [
        ("deferred", os.path.join(master.deferred_dir, "a"))
    ]
    assert master.recover(21) == 0  # already gone


def test_recover_sets_aside_a_directory_in_a_dead_workers_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = str(tmp_path / "queue")
    dead = WorkerQueue(directory, 4242)
    dead.create_directories()
    dead.prepare_worker()
    put_active(dead, "a", time.time())
    odd = Path(dead.active_dir()) / "odd"
    odd.mkdir()
    master = MailQueue(directory)

    with caplog.at_level(logging.WARNING, logger="mailfast"):
        assert master.recover(4242) == 1

    assert not os.path.exists(dead.active_dir())
    assert os.listdir(master.deferred_dir) == ["a"]
    assert os.listdir(master.corrupt_dir) == ["odd"]
    assert str(odd) in caplog.text


def test_recover_of_a_queue_never_created_moves_nothing(tmp_path: Path) -> None:
    assert MailQueue(str(tmp_path / "nowhere")).recover() == 0


def test_request_flush_makes_deferred_messages_due_and_bumps_the_stamp(
    tmp_path: Path,
) -> None:
    queue = MailQueue(str(tmp_path / "queue"))
    queue.prepare_worker()
    assert queue.flush_requested_at() == 0.0
    put_deferred(queue, "soon", time.time() + 3600)
    put_deferred(queue, "later", time.time() + 7200)
    assert queue.claim_due(time.time(), 10) == []

    queue.request_flush()

    stamp = queue.flush_requested_at()
    assert stamp == pytest.approx(time.time(), abs=5)
    for name in ("soon", "later"):
        mtime = os.stat(os.path.join(queue.deferred_dir, name)).st_mtime
        assert mtime <= time.time()
    os.utime(queue.flush_path, (stamp - 100, stamp - 100))
    queue.request_flush()
    assert queue.flush_requested_at() > stamp - 100
    assert len(queue.claim_due(time.time(), 10)) == 2
