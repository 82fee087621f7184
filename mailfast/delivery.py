"""Taking responsibility for a message: what must be durable before the 250.

Local recipients get their Maildir copies and remote recipients one queue
file, all written in the same group commit: when ``accept`` returns, every
copy the message needs is on disk, and only then may the session say 250.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .addresses import AddressError, parse_mailbox
from .directory import Directory
from .envelope import Envelope, Recipient, received_header
from .groupcommit import GroupCommitter
from .ids import new_queue_id
from .mailqueue import MailQueue
from .maildir import MaildirStore
from .spool import MessageBuffer

log = logging.getLogger("mailfast.delivery")


class Delivery:
    def __init__(
        self,
        hostname: str,
        directory: Directory,
        maildirs: MaildirStore,
        queue: MailQueue,
        committer: GroupCommitter,
        spool_dir: str,
    ):
        self.hostname = hostname
        self.directory = directory
        self.maildirs = maildirs
        self.queue = queue
        self.committer = committer
        self.spool_dir = spool_dir
        # Called with the path of each newly queued file: starts its delivery.
        self.on_queued: Callable[[str], None] = lambda path: None

    async def accept(
        self, envelope: Envelope, message: MessageBuffer, queue_id: str
    ) -> None:
        """Return once the message is durable for every recipient; OSError if not."""
        arrival = time.time()
        received = received_header(envelope, self.hostname, queue_id, arrival)
        job = self.maildirs.job(envelope, message, received, envelope.local_targets())
        remote = envelope.remote_recipients()
        if remote:
            queued = self.queue.pending_file(
                queue_id, envelope, remote, received, message, arrival
            )
            job.files.append(queued)
        await self.committer.commit(job)
        if remote:
            self.on_queued(queued.final_path)

    async def accept_generated(
        self, recipient_address: str, content: bytes, body: str, smtputf8: bool
    ) -> str | None:
        """Deliver a message mailfast wrote (a bounce) from the null sender.

        Returns its queue id, or None when the recipient cannot be reached
        from here at all (a local address that does not exist).
        """
        envelope = Envelope("127.0.0.1", self.hostname, "LOCAL", body=body)
        envelope.smtputf8 = smtputf8
        try:
            mailbox = parse_mailbox(recipient_address.encode("utf-8"), utf8=True)
        except AddressError:
            return None
        if self.directory.is_local_domain(mailbox.domain):
            targets = self.directory.resolve(mailbox)
            if targets is None:
                return None
        else:
            targets = ()
        envelope.recipients.append(Recipient(mailbox, targets))
        message = MessageBuffer(self.spool_dir, len(content) + 1)
        message.write(content)
        queue_id = new_queue_id()
        try:
            await self.accept(envelope, message, queue_id)
        finally:
            message.discard()
        return queue_id
