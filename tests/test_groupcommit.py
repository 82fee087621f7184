"""Group commit with real files, a real thread pool and a real event loop.

Every test runs with both sync methods. The committer starts a batch as soon
as a job arrives when none is running, so of jobs committed together the
first goes alone and the rest queue up behind it as the second batch: that is
how a failing job is made to share its batch with jobs that succeed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailfast.addresses import Mailbox
from mailfast.directory import LocalTarget
from mailfast.envelope import Envelope, Recipient, received_header
from mailfast.groupcommit import FileJob, GroupCommitter, PendingFile
from mailfast.maildir import MaildirStore
from mailfast.spool import MessageBuffer

ALICE = LocalTarget("localhost", "alice")
BOB = LocalTarget("localhost", "bob")


@pytest.fixture(params=["syncfs", "fsync"])
def committer(request) -> Iterator[GroupCommitter]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit") as executor:
        yield GroupCommitter(executor, request.param)


def commit_together(
    committer: GroupCommitter, jobs: list[FileJob]
) -> list[BaseException | None]:
    """Commit ``jobs`` concurrently; what each commit raised, or None."""

    async def commit_all() -> list[BaseException | None]:
        return await asyncio.gather(
            *(committer.commit(job) for job in jobs), return_exceptions=True
        )

    return asyncio.run(commit_all())


def make_maildir(path: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]


def pending_file(maildir: Path, name: str, content: bytes) -> PendingFile:
    return PendingFile(
        str(maildir / "tmp" / name),
        str(maildir / "new" / name),
        lambda fd: write_all(fd, content),
    )


def files_in(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def test_concurrent_commits_share_batches(
    committer: GroupCommitter, tmp_path: Path
) -> None:
    maildirs = [make_maildir(tmp_path / f"box{n}") for n in range(5)]
    contents = {f"msg{n}": f"message {n}\r\n".encode() * (n + 1) for n in range(50)}
    jobs = [
        FileJob([pending_file(maildirs[n % 5], name, content)])
        for n, (name, content) in enumerate(contents.items())
    ]

    assert commit_together(committer, jobs) == [None] * 50

    assert committer.jobs == 50
    # The first job is synced alone; the 49 that queued meanwhile share a batch.
    assert committer.batches == 2
    delivered = {}
    for maildir in maildirs:
        delivered.update(files_in(maildir / "new"))
        assert files_in(maildir / "tmp") == {}
    assert delivered == contents


def test_job_whose_prepare_fails_fails_alone(
    committer: GroupCommitter, tmp_path: Path
) -> None:
    maildir = make_maildir(tmp_path / "box")

    def no_space() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    jobs = [FileJob([pending_file(maildir, f"msg{n}", b"x\r\n")]) for n in range(6)]
    jobs[3].prepare = no_space

    results = commit_together(committer, jobs)

    assert committer.batches == 2  # the failing job shared a batch with four
    failure = results.pop(3)
    assert isinstance(failure, OSError) and failure.errno == errno.ENOSPC
    assert results == [None] * 5
    assert sorted(files_in(maildir / "new")) == ["msg0", "msg1", "msg2", "msg4", "msg5"]
    assert files_in(maildir / "tmp") == {}


def test_job_with_a_temporary_path_it_cannot_create_fails_alone(
    committer: GroupCommitter, tmp_path: Path
) -> None:
    good = make_maildir(tmp_path / "good")
    missing = tmp_path / "missing"  # never created: opening tmp/ in it fails
    jobs = [FileJob([pending_file(good, f"msg{n}", b"x\r\n")]) for n in range(4)]
    # Its first file is written before the second fails: it must go as well.
    jobs[2] = FileJob(
        [
            pending_file(good, "first", b"first\r\n"),
            pending_file(missing, "second", b""),
        ]
    )

    results = commit_together(committer, jobs)

    assert committer.batches == 2
    assert isinstance(results.pop(2), FileNotFoundError)
    assert results == [None] * 3
    assert sorted(files_in(good / "new")) == ["msg0", "msg1", "msg3"]
    assert files_in(good / "tmp") == {}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any directory")
def test_job_whose_maildir_is_not_writable_fails_alone(
    committer: GroupCommitter, tmp_path: Path
) -> None:
    writable = make_maildir(tmp_path / "writable")
    read_only = make_maildir(tmp_path / "read-only")
    (read_only / "tmp").chmod(0o500)
    jobs = [FileJob([pending_file(writable, f"msg{n}", b"x\r\n")]) for n in range(4)]
    jobs[1] = FileJob([pending_file(read_only, "refused", b"x\r\n")])
    try:
        results = commit_together(committer, jobs)
    finally:
        (read_only / "tmp").chmod(0o700)

    assert isinstance(results.pop(1), PermissionError)
    assert results == [None] * 3
    assert sorted(files_in(writable / "new")) == ["msg0", "msg2", "msg3"]
    assert files_in(read_only / "tmp") == files_in(read_only / "new") == {}


def test_failing_write_removes_its_temporary_file(
    committer: GroupCommitter, tmp_path: Path
) -> None:
    maildir = make_maildir(tmp_path / "box")

    def half_then_full_disk(fd: int) -> None:
        write_all(fd, b"the first half")
        raise OSError(errno.ENOSPC, "No space left on device")

    jobs = [FileJob([pending_file(maildir, f"msg{n}", b"x\r\n")]) for n in range(3)]
    jobs[1].files[0].write = half_then_full_disk

    results = commit_together(committer, jobs)

    assert isinstance(results[1], OSError) and results[1].errno == errno.ENOSPC
    assert results[0] is results[2] is None
    assert sorted(files_in(maildir / "new")) == ["msg0", "msg2"]
    assert files_in(maildir / "tmp") == {}


# Maildir delivery: MaildirStore builds the job, MessageBuffer holds the body.


def envelope_to(*targets: LocalTarget, sender: Mailbox | None) -> Envelope:
    envelope = Envelope("192.0.2.7", "client.test", "ESMTP", reverse_path=sender)
    for target in targets:
        envelope.recipients.append(
            Recipient(Mailbox(target.mailbox, target.domain), (target,))
        )
    return envelope


def deliver(
    committer: GroupCommitter,
    root: Path,
    envelope: Envelope,
    message: MessageBuffer,
) -> bytes:
    """Commit the Maildir copies of ``message``; the trace fields it got."""
    received = received_header(envelope, "mx.test", "QID", 1_700_000_000.0)
    store = MaildirStore(str(root))
    job = store.job(envelope, message, received, envelope.local_targets())
    try:
        asyncio.run(committer.commit(job))
    finally:
        message.discard()
    return received


def delivered_file(maildir: Path) -> Path:
    """The one message in ``maildir``, checked for what every copy must be."""
    (path,) = (maildir / "new").iterdir()
    assert list((maildir / "tmp").iterdir()) == []
    assert list((maildir / "cur").iterdir()) == []
    # ",S=<size>" in the name lets readers skip a stat (a Maildir++ custom).
    assert path.name.endswith(f",S={path.stat().st_size}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path


def test_copy_has_the_trace_fields_then_the_exact_content(
    committer: GroupCommitter, tmp_path: Path
) -> None:
    message = MessageBuffer(str(tmp_path / "spool"), memory_limit=65_536)
    content = b"Subject: hi\r\n\r\nhello\r\n"
    message.write(content[:5])
    message.write(content[5:])
    envelope = envelope_to(ALICE, sender=Mailbox("sender", "example.org"))

    received = deliver(committer, tmp_path / "mail", envelope, message)

    path = delivered_file(tmp_path / "mail" / "localhost" / "alice")
    assert path.read_bytes() == (
        b"Return-Path: <sender@example.org>\r\n"
        b"Delivered-To: alice@localhost\r\n" + received + content
    )
    assert received.startswith(b"Received: from client.test ([192.0.2.7])\r\n")
    # A body that fits in memory never touches the spool.
    assert not (tmp_path / "spool").exists()


def test_two_targets_get_a_copy_each(committer: GroupCommitter, tmp_path: Path) -> None:
    message = MessageBuffer(str(tmp_path / "spool"), memory_limit=65_536)
    message.write(b"Subject: both\r\n\r\nhi\r\n")
    envelope = envelope_to(ALICE, BOB, sender=None)

    received = deliver(committer, tmp_path / "mail", envelope, message)

    for target in (ALICE, BOB):
        path = delivered_file(tmp_path / "mail" / "localhost" / target.mailbox)
        assert path.read_bytes() == (
            b"Return-Path: <>\r\n"
            + f"Delivered-To: {target.address}\r\n".encode()
            + received
            + b"Subject: both\r\n\r\nhi\r\n"
        )


def spilled_message(spool: Path, octets: int) -> tuple[MessageBuffer, bytes]:
    """A message of ``octets``, far over its memory limit, written in uneven pieces."""
    content = bytes(n % 251 for n in range(octets))
    message = MessageBuffer(str(spool), memory_limit=4096)
    offset = 0
    for size in [1, 4000, 1000, 70_000] * (octets // 75_001 + 1):
        message.write(content[offset : offset + size])
        offset += size
    assert offset >= octets and message.size == octets
    return message, content


def test_body_over_the_memory_limit_spills_and_is_copied_exactly(
    committer: GroupCommitter, tmp_path: Path
) -> None:
    message, content = spilled_message(tmp_path / "spool", 300_000)
    # The spool file was unlinked when made: a crash leaves nothing behind.
    assert list((tmp_path / "spool").iterdir()) == []
    assert message.head(10) == content[:10]
    envelope = envelope_to(ALICE, sender=None)

    deliver(committer, tmp_path / "mail", envelope, message)

    path = delivered_file(tmp_path / "mail" / "localhost" / "alice")
    assert path.read_bytes().endswith(b"\r\n" + content)
    assert path.stat().st_size > len(content)


def test_spool_on_another_file_system_than_the_maildirs(
    committer: GroupCommitter, tmp_path: Path
) -> None:
    # server.spool_dir and maildir.root are set independently; a spool on
    # tmpfs under mail on disk is a common layout. copy_file_range(2) fails
    # with EXDEV between different file systems on current kernels.
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no tmpfs at /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as spool:
        if os.stat(spool).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same file system as tmp_path")
        message, content = spilled_message(Path(spool), 100_000)
        envelope = envelope_to(ALICE, sender=None)

        deliver(committer, tmp_path / "mail", envelope, message)

    path = delivered_file(tmp_path / "mail" / "localhost" / "alice")
    assert path.read_bytes().endswith(b"\r\n" + content)


def test_body_in_more_pieces_than_one_writev_takes(
    committer: GroupCommitter, tmp_path: Path
) -> None:
    message = MessageBuffer(str(tmp_path / "spool"), memory_limit=65_536)
    lines = [b"line %04d\r\n" % n for n in range(3000)]  # IOV_MAX is 1024
    for line in lines:
        message.write(line)
    envelope = envelope_to(ALICE, sender=None)

    deliver(committer, tmp_path / "mail", envelope, message)

    path = delivered_file(tmp_path / "mail" / "localhost" / "alice")
    assert path.read_bytes().endswith(b"".join(lines))
