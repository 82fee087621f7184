"""Local delivery into Maildirs: the files one message needs, per mailbox.

A mailbox ``alice`` of domain ``example.com`` is the Maildir
``<root>/example.com/alice`` with its ``tmp``, ``new`` and ``cur``
subdirectories, created on first delivery. Each copy is written under
``tmp/`` and renamed into ``new/`` by the group committer, which makes the
batch durable in between; readers (Dovecot, mutt) never see a partial file.
"""

from __future__ import annotations

import os
import time

from .directory import LocalTarget
from .envelope import Envelope
from .groupcommit import FileJob, PendingFile, fsync_directory
from .ids import maildir_name
from .spool import MessageBuffer


class MaildirStore:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def path(self, target: LocalTarget) -> str:
        return os.path.join(self.root, target.domain, target.mailbox)

    def job(
        self,
        envelope: Envelope,
        message: MessageBuffer,
        received: bytes,
        targets: list[LocalTarget],
    ) -> FileJob:
        """The files that deliver ``message`` to each of ``targets``.

        Called on the event loop: only string work here, the directories are
        made (once per mailbox) by the write callbacks in the executor.
        """
        mailboxes = [self.path(target) for target in targets]
        job = FileJob(prepare=lambda: self.ensure_mailboxes(mailboxes))
        return_path = f"Return-Path: <{envelope.sender}>\r\n".encode("utf-8")
        now = time.time_ns()
        for target, mailbox in zip(targets, mailboxes):
            prefix = b"".join(
                (
                    return_path,
                    f"Delivered-To: {target.address}\r\n".encode("utf-8"),
                    received,
                )
            )
            name = maildir_name(len(prefix) + message.size, now)
            job.files.append(
                PendingFile(
                    os.path.join(mailbox, "tmp", name),
                    os.path.join(mailbox, "new", name),
                    self._writer(mailbox, message, prefix),
                )
            )
        return job

    def ensure_mailboxes(self, mailboxes: list[str]) -> None:
        """Create missing Maildirs, durably (runs in the executor).

        Looked at for every message, not remembered: two stats cost a few
        microseconds, and an operator may remove a mailbox while we run.
        """
        for mailbox in mailboxes:
            if os.path.isdir(os.path.join(mailbox, "tmp")) and os.path.isdir(
                os.path.join(mailbox, "new")
            ):
                continue
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(mailbox, sub), mode=0o700, exist_ok=True)
            # New directory entries must survive a crash like the files in
            # them: sync each level up to the root.
            for directory in (mailbox, os.path.dirname(mailbox), self.root):
                fsync_directory(directory)

    def _writer(self, mailbox: str, message: MessageBuffer, prefix: bytes):
        def write(fd: int) -> None:
            message.write_to(fd, prefix)

        return write
