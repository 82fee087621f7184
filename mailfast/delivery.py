"""Taking responsibility for a message: what must be durable before the 250."""

from __future__ import annotations

import time

from .envelope import Envelope, received_header
from .groupcommit import GroupCommitter
from .maildir import MaildirStore
from .spool import MessageBuffer


class Delivery:
    def __init__(self, hostname: str, maildirs: MaildirStore, committer: GroupCommitter):
        self.hostname = hostname
        self.maildirs = maildirs
        self.committer = committer

    async def accept(
        self, envelope: Envelope, message: MessageBuffer, queue_id: str
    ) -> None:
        """Return once the message is durable for every recipient; OSError if not."""
        received = received_header(envelope, self.hostname, queue_id, time.time())
        job = self.maildirs.job(envelope, message, received, envelope.local_targets())
        await self.committer.commit(job)
