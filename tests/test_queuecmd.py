"""``mailfast queue`` run as a command against a queue these tests fill.

The queue is written with the real queue code, as a worker leaves it: one
message waiting in deferred/ after a failed attempt, with its state file,
and one in this process's active directory, as if a worker were delivering
it. The command runs in a subprocess from tmp_path, with a configuration
that names the queue directory relative to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailfast.groupcommit import FileJob, GroupCommitter
from mailfast.ids import new_queue_id
from mailfast.mailqueue import DeliveryState, MailQueue, envelope_line

CONTENT = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: quarterly figures\r\n"
    b"\r\n"
    b"Attached.\r\n"
)
LAST_ERROR = "451 4.3.0 mx.example.net: try again later"


@dataclass
class Queue:
    root: Path  # the directory mailfast runs in
    queue: MailQueue
    deferred_id: str  # waiting: bob pending, carol done, one attempt made
    active_id: str  # being delivered by "a worker" (this process)


@dataclass
class Result:
    returncode: int
    stdout: str  # decoded as is: the CRLFs of a message shown stay CRLFs
    stderr: str


def run_queue(root: Path, *arguments: str) -> Result:
    done = subprocess.run(
        [sys.executable, "-m", "mailfast", "queue", "--config", "mailfast.toml"]
        + list(arguments),
        cwd=root,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def write_message(
    queue: MailQueue, committer: GroupCommitter, sender: str, *addresses: str
) -> str:
    """Queue a message into our active directory, as accept does; its id."""
    queue_id = new_queue_id()
    recipients = [{"address": a, "notify": [], "orcpt": ""} for a in addresses]
    line = envelope_line(queue_id, sender, recipients, time.time() - 90)
    pending = queue.pending_generated(queue_id, line, CONTENT)
    asyncio.run(committer.commit(FileJob(files=[pending])))
    return queue_id


@pytest.fixture
def filled(tmp_path: Path) -> Queue:
    (tmp_path / "mailfast.toml").write_text('[queue]\ndirectory = "var/queue"\n')
    queue = MailQueue(str(tmp_path / "var" / "queue"))
    queue.prepare_worker()
    with ThreadPoolExecutor(max_workers=1) as executor:
        committer = GroupCommitter(executor, "fsync")
        deferred_id = write_message(
            queue,
            committer,
            "alice@example.org",
            "bob@example.net",
            "carol@example.com",
        )
        active_id = write_message(queue, committer, "", "dave@example.org")
    message = queue.load(os.path.join(queue.active_dir(), deferred_id))
    message.state = DeliveryState(1, time.time() + 3600, LAST_ERROR, [1])
    queue.defer(message)
    return Queue(tmp_path, queue, deferred_id, active_id)


def test_list_shows_each_message_with_its_recipients_and_last_error(
    filled: Queue,
) -> None:
    result = run_queue(filled.root, "list")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    deferred = lines.index(
        next(line for line in lines if line.startswith(filled.deferred_id))
    )
    assert "deferred" in lines[deferred].split()
    assert "attempts=1" in lines[deferred].split()
    assert lines[deferred + 1 : deferred + 5] == [
        "  from: <alice@example.org>",
        "  to:   <bob@example.net> (pending)",
        "  to:   <carol@example.com> (done)",
        f"  last error: {LAST_ERROR}",
    ]
    active = lines.index(
        next(line for line in lines if line.startswith(filled.active_id))
    )
    assert "active" in lines[active].split()
    assert lines[active].endswith("next=being delivered")
    assert lines[active + 1 : active + 3] == [
        "  from: <>",
        "  to:   <dave@example.org> (pending)",
    ]
    assert lines[-1].startswith("-- 2 messages in the queue (/")


def test_show_prints_the_envelope_state_and_content(filled: Queue) -> None:
    result = run_queue(filled.root, "show", filled.deferred_id)

    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    envelope, end = decoder.raw_decode(result.stdout)
    state, end2 = decoder.raw_decode(result.stdout, end + 1)
    assert envelope["where"] == "deferred"
    assert envelope["id"] == filled.deferred_id
    assert envelope["sender"] == "alice@example.org"
    assert [r["address"] for r in envelope["recipients"]] == [
        "bob@example.net",
        "carol@example.com",
    ]
    assert state["state"]["attempts"] == 1
    assert state["state"]["done"] == [1]
    assert state["state"]["last_error"] == LAST_ERROR
    assert result.stdout[end2:].lstrip("\n") == CONTENT.decode()


def test_delete_removes_a_deferred_message_and_its_state(filled: Queue) -> None:
    result = run_queue(filled.root, "delete", filled.deferred_id)

    assert result.returncode == 0, result.stderr
    assert filled.deferred_id in result.stdout
    assert os.listdir(filled.queue.deferred_dir) == []
    assert os.listdir(filled.queue.state_dir) == []
    assert os.listdir(filled.queue.tmp_dir) == []
    assert os.listdir(filled.queue.active_dir()) == [filled.active_id]


def test_delete_refuses_a_message_being_delivered(filled: Queue) -> None:
    result = run_queue(filled.root, "delete", filled.active_id)

    assert result.returncode != 0
    assert filled.active_id in result.stderr
    assert os.listdir(filled.queue.active_dir()) == [filled.active_id]


@pytest.mark.parametrize("action", ["show", "delete"])
def test_unknown_queue_ids_are_an_error(filled: Queue, action: str) -> None:
    unknown = ["NOSUCHID", "../deferred", ".hidden"]

    result = run_queue(filled.root, action, *unknown)

    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        f"{queue_id}: not in the queue" for queue_id in unknown
    ]
    assert sorted(os.listdir(filled.queue.deferred_dir)) == [filled.deferred_id]


def test_unknown_queue_id_is_an_error_before_anything_was_queued(
    tmp_path: Path,
) -> None:
    # A script running "mailfast queue delete ID && ..." must not be told
    # that a message it never queued was dealt with.
    (tmp_path / "mailfast.toml").write_text('[queue]\ndirectory = "var/queue"\n')

    result = run_queue(tmp_path, "delete", "NOSUCHID")

    assert result.returncode != 0


def test_flush_makes_deferred_messages_due_now(filled: Queue) -> None:
    deferred = os.path.join(filled.queue.deferred_dir, filled.deferred_id)
    assert os.stat(deferred).st_mtime > time.time() + 3000

    result = run_queue(filled.root, "flush")

    assert result.returncode == 0, result.stderr
    assert "flush" in result.stdout
    assert os.stat(deferred).st_mtime <= time.time()
    assert filled.queue.flush_requested_at() == pytest.approx(time.time(), abs=30)
    [claimed] = filled.queue.claim_due(time.time(), limit=10)
    assert os.path.basename(claimed) == filled.deferred_id


def test_list_of_an_empty_queue(tmp_path: Path) -> None:
    (tmp_path / "mailfast.toml").write_text('[queue]\ndirectory = "var/queue"\n')
    MailQueue(str(tmp_path / "var" / "queue")).create_directories()

    result = run_queue(tmp_path, "list")

    assert result.returncode == 0, result.stderr
    queue_dir = (tmp_path / "var" / "queue").resolve()
    assert result.stdout.splitlines() == [f"-- 0 messages in the queue ({queue_dir})"]


# Entries that are not readable messages.

UNREADABLE = {
    "no id": (b'{"v":1}\n', None, "envelope has no 'id'"),
    "json array": (b"[1]\n", None, "envelope is a JSON array, not an object"),
    "no recipients": (None, None, "envelope has no 'recipients'"),
    "bad utf-8": (b'{"v":1,"id":"\xff\xfe"}\n', None, "envelope is not JSON: "),
    "state without next_attempt": (
        None,
        b'{"attempts": 1}',
        "state file has no 'next_attempt'",
    ),
}


def put_unreadable(filled: Queue, case: str, name: str = "BROKEN") -> str:
    """A deferred entry ``name`` of the shape ``case``; the reason it is listed."""
    line, state, reason = UNREADABLE[case]
    if line is None:
        record = json.loads(envelope_line(name, "eve@example.org", [], time.time()))
        if state is None:
            del record["recipients"]
        line = json.dumps(record).encode() + b"\n"
    (Path(filled.queue.deferred_dir) / name).write_bytes(line + CONTENT)
    if state is not None:
        (Path(filled.queue.state_dir) / name).write_bytes(state)
    return reason


@pytest.mark.parametrize("case", list(UNREADABLE), ids=list(UNREADABLE))
def test_list_shows_an_unreadable_entry_with_its_reason_and_goes_on(
    filled: Queue, case: str
) -> None:
    reason = put_unreadable(filled, case)

    result = run_queue(filled.root, "list")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    [broken] = [line for line in lines if line.startswith("BROKEN")]
    assert broken.startswith(f"BROKEN  deferred  unreadable: {reason}")
    assert any(line.startswith(filled.deferred_id) for line in lines)
    assert any(line.startswith(filled.active_id) for line in lines)
    assert lines[-1].startswith("-- 2 messages in the queue, 1 unreadable (/")


@pytest.mark.parametrize("case", list(UNREADABLE), ids=list(UNREADABLE))
def test_show_of_an_unreadable_entry_says_so_without_a_traceback(
    filled: Queue, case: str
) -> None:
    reason = put_unreadable(filled, case)

    result = run_queue(filled.root, "show", "BROKEN")

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"BROKEN: deferred, unreadable: {reason}")
    assert len(result.stderr.splitlines()) == 1


def test_delete_removes_an_unreadable_entry_and_its_state(filled: Queue) -> None:
    put_unreadable(filled, "state without next_attempt")

    result = run_queue(filled.root, "delete", "BROKEN")

    assert result.returncode == 0, result.stderr
    assert os.listdir(filled.queue.deferred_dir) == [filled.deferred_id]
    assert os.listdir(filled.queue.state_dir) == [filled.deferred_id]
    assert os.listdir(filled.queue.tmp_dir) == []


def test_delete_removes_a_directory_left_in_deferred(filled: Queue) -> None:
    stray = Path(filled.queue.deferred_dir) / "STRAY"
    (stray / "inside").mkdir(parents=True)

    listed = run_queue(filled.root, "list")
    result = run_queue(filled.root, "delete", "STRAY")

    assert "STRAY  deferred  unreadable: not a regular file" in listed.stdout
    assert result.returncode == 0, result.stderr
    assert os.listdir(filled.queue.deferred_dir) == [filled.deferred_id]
    assert os.listdir(filled.queue.tmp_dir) == []


def test_list_skips_a_stray_file_among_the_workers_directories(
    filled: Queue,
) -> None:
    (Path(filled.queue.active_root) / "stray").write_bytes(b"")

    result = run_queue(filled.root, "list")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("-- 2 messages in the queue (/")


def test_corrupt_entries_are_listed_shown_and_deleted(filled: Queue) -> None:
    put_unreadable(filled, "state without next_attempt")
    queue = filled.queue
    queue.quarantine(os.path.join(queue.deferred_dir, "BROKEN"))

    listed = run_queue(filled.root, "list")
    shown = run_queue(filled.root, "show", "BROKEN")
    deleted = run_queue(filled.root, "delete", "BROKEN")

    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert "BROKEN  corrupt" in lines
    assert "BROKEN.state  corrupt" not in lines  # part of BROKEN
    assert lines[-1].startswith("-- 2 messages in the queue, 1 corrupt (/")
    # Its bad state went along as BROKEN.state: show reads the message alone.
    assert shown.returncode == 0, shown.stderr
    envelope, _end = json.JSONDecoder().raw_decode(shown.stdout)
    assert envelope["where"] == "corrupt"
    assert deleted.returncode == 0, deleted.stderr
    assert os.listdir(queue.corrupt_dir) == []
