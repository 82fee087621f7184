"""The durable queue of messages to relay.

Theory of operation
-------------------
One file per message holds everything needed to deliver it: a first line of
JSON with the envelope (sender, recipients with their DSN parameters, BODY,
SMTPUTF8, RET, ENVID, arrival time), then the message itself, trace header
included, exactly as it will be sent. The file is written by the group
committer together with any Maildir copies of the same message, so it is
durable before the client hears 250.

Where a file is says who owns it::

    tmp/<id>             being written; not yet a queued message
    active/<pid>/<id>    owned by worker <pid>, which is delivering it
    deferred/<id>        waiting; its mtime is the time of its next attempt
    state/<id>           attempts so far, recipients finished, last error

A worker that accepts a message owns it at once (it is written straight into
its active directory) and starts delivering without any polling delay. A
deferred message is claimed by renaming it into the claimer's active
directory: rename is atomic, so exactly one worker wins. When a worker dies,
the master moves its active directory back to deferred/ before starting a
replacement (and, at start-up, every active directory), so nothing is
orphaned and nothing is delivered by two workers at once.

Invariants:
  * A message file is never modified after it is written; progress lives in
    the state file, which is replaced atomically and synced, so a recipient
    that was delivered is not delivered again after a crash.
  * Removing a finished message needs no sync: if the unlink is lost in a
    crash, the state file still says every recipient is done.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .envelope import Envelope, Recipient
from .groupcommit import PendingFile, fsync_directory
from .relaymodel import RelayMessage, RelayRecipient
from .spool import MessageBuffer, write_all

FORMAT_VERSION = 1


@dataclass(slots=True)
class DeliveryState:
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    done: list[int] = field(default_factory=list)  # recipient indices finished

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "attempts": self.attempts,
                "next_attempt": self.next_attempt,
                "last_error": self.last_error,
                "done": self.done,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DeliveryState:
        raw = json.loads(data)
        return cls(raw["attempts"], raw["next_attempt"], raw["last_error"], raw["done"])


@dataclass(slots=True)
class QueuedMessage:
    path: str
    envelope: dict  # the JSON first line
    content_offset: int
    content_size: int
    state: DeliveryState

    @property
    def queue_id(self) -> str:
        return self.envelope["id"]

    @property
    def sender(self) -> str:
        return self.envelope["sender"]

    @property
    def arrival(self) -> float:
        return self.envelope["arrival"]

    def recipients(self) -> list[RelayRecipient]:
        return [
            RelayRecipient(r["address"], tuple(r["notify"]), r["orcpt"])
            for r in self.envelope["recipients"]
        ]

    def pending(self) -> list[int]:
        done = set(self.state.done)
        return [i for i in range(len(self.envelope["recipients"])) if i not in done]

    def relay_message(self, indices: list[int]) -> RelayMessage:
        recipients = self.recipients()
        return RelayMessage(
            queue_id=self.queue_id,
            sender=self.sender,
            recipients=[recipients[i] for i in indices],
            content_path=self.path,
            content_offset=self.content_offset,
            content_size=self.content_size,
            body=self.envelope["body"],
            smtputf8=self.envelope["smtputf8"],
            ret=self.envelope["ret"],
            envid=self.envelope["envid"],
        )


class MailQueue:
    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.tmp_dir = os.path.join(self.directory, "tmp")
        self.deferred_dir = os.path.join(self.directory, "deferred")
        self.active_root = os.path.join(self.directory, "active")
        self.state_dir = os.path.join(self.directory, "state")
        self.flush_path = os.path.join(self.directory, "flush")

    def create_directories(self) -> None:
        # The queue directory itself first: makedirs gives the parents it
        # creates the umask's mode, not ours.
        for path in (
            self.directory,
            self.tmp_dir,
            self.deferred_dir,
            self.active_root,
            self.state_dir,
        ):
            os.makedirs(path, mode=0o700, exist_ok=True)

    def active_dir(self, pid: int | None = None) -> str:
        return os.path.join(self.active_root, str(pid or os.getpid()))

    # Writing (on the accepting worker).

    def pending_file(
        self,
        queue_id: str,
        envelope: Envelope,
        recipients: list[Recipient],
        received: bytes,
        message: MessageBuffer,
        arrival: float,
    ) -> PendingFile:
        """The queue file of a message, for the group committer to write."""
        header = _envelope_line(queue_id, envelope, recipients, arrival)
        prefix = header + received
        active = self.active_dir()
        return PendingFile(
            os.path.join(self.tmp_dir, queue_id),
            os.path.join(active, queue_id),
            lambda fd: message.write_to(fd, prefix),
        )

    def prepare_worker(self) -> None:
        """Create this worker's active directory, durably (before any message)."""
        self.create_directories()
        os.makedirs(self.active_dir(), mode=0o700, exist_ok=True)
        fsync_directory(self.active_root)

    def pending_generated(
        self, queue_id: str, envelope_line: bytes, content: bytes
    ) -> PendingFile:
        """The queue file of a message mailfast wrote itself (a bounce)."""
        return PendingFile(
            os.path.join(self.tmp_dir, queue_id),
            os.path.join(self.active_dir(), queue_id),
            lambda fd: write_all(fd, [envelope_line, content]),
        )

    # Reading and progress (blocking: call from an executor).

    def load(self, path: str) -> QueuedMessage:
        with open(path, "rb") as f:
            line = f.readline()
            size = os.fstat(f.fileno()).st_size
        envelope = json.loads(line)
        state = self._read_state(envelope["id"])
        return QueuedMessage(path, envelope, len(line), size - len(line), state)

    def _read_state(self, queue_id: str) -> DeliveryState:
        try:
            with open(os.path.join(self.state_dir, queue_id), "rb") as f:
                return DeliveryState.from_json(f.read())
        except FileNotFoundError:
            return DeliveryState()

    def save_state(self, message: QueuedMessage) -> None:
        """Replace the state file atomically and durably."""
        final = os.path.join(self.state_dir, message.queue_id)
        temporary = final + ".tmp"
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
        )
        try:
            write_all(fd, [message.state.to_json()])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, final)
        fsync_directory(self.state_dir)

    def defer(self, message: QueuedMessage) -> None:
        """Save progress and move the message to deferred/ until its next attempt."""
        self.save_state(message)
        target = os.path.join(self.deferred_dir, message.queue_id)
        os.rename(message.path, target)
        os.utime(target, (message.state.next_attempt, message.state.next_attempt))
        message.path = target

    def remove(self, message: QueuedMessage) -> None:
        os.unlink(message.path)
        try:
            os.unlink(os.path.join(self.state_dir, message.queue_id))
        except FileNotFoundError:
            pass

    def claim_due(self, now: float, limit: int) -> list[str]:
        """Move up to ``limit`` due deferred messages into our active directory."""
        claimed = []
        active = self.active_dir()
        with os.scandir(self.deferred_dir) as entries:
            for entry in entries:
                if len(claimed) >= limit:
                    break
                try:
                    if entry.stat().st_mtime > now:
                        continue
                    target = os.path.join(active, entry.name)
                    os.rename(entry.path, target)
                except FileNotFoundError:
                    continue  # another worker claimed it first
                claimed.append(target)
        return claimed

    def recover(self, pid: int | None = None) -> int:
        """Give the messages of a dead worker (or of all workers) back to deferred/.

        Runs in the master, where no worker owns the directories concerned.
        """
        if not os.path.isdir(self.active_root):
            return 0
        if pid is None:
            # Nothing runs yet: half-written files were never acknowledged.
            for name in os.listdir(self.tmp_dir):
                os.unlink(os.path.join(self.tmp_dir, name))
        pids = [str(pid)] if pid is not None else os.listdir(self.active_root)
        moved = 0
        now = time.time()
        for name in pids:
            directory = os.path.join(self.active_root, name)
            try:
                entries = os.listdir(directory)
            except FileNotFoundError:
                continue
            for entry in entries:
                target = os.path.join(self.deferred_dir, entry)
                os.rename(os.path.join(directory, entry), target)
                os.utime(target, (now, now))  # due at once
                moved += 1
            os.rmdir(directory)
        return moved

    def request_flush(self) -> None:
        """Ask running workers to retry every deferred message now."""
        now = time.time()
        with os.scandir(self.deferred_dir) as entries:
            for entry in entries:
                try:
                    os.utime(entry.path, (now, now))
                except FileNotFoundError:
                    pass
        with open(self.flush_path, "wb"):
            pass
        os.utime(self.flush_path, None)

    def flush_requested_at(self) -> float:
        try:
            return os.stat(self.flush_path).st_mtime
        except FileNotFoundError:
            return 0.0

    def all_messages(self) -> Iterator[tuple[str, str]]:
        """(where, path) of every queued message: where is "active" or "deferred"."""
        for name in sorted(os.listdir(self.deferred_dir)):
            yield "deferred", os.path.join(self.deferred_dir, name)
        for pid in sorted(os.listdir(self.active_root)):
            directory = os.path.join(self.active_root, pid)
            for name in sorted(os.listdir(directory)):
                yield "active", os.path.join(directory, name)


def envelope_line(
    queue_id: str,
    sender: str,
    recipients: list[dict],
    arrival: float,
    body: str = "7BIT",
    smtputf8: bool = False,
    ret: str = "",
    envid: str = "",
    client_ip: str = "",
    helo: str = "",
) -> bytes:
    record = {
        "v": FORMAT_VERSION,
        "id": queue_id,
        "sender": sender,
        "recipients": recipients,
        "body": body,
        "smtputf8": smtputf8,
        "ret": ret,
        "envid": envid,
        "arrival": arrival,
        "client_ip": client_ip,
        "helo": helo,
    }
    # ensure_ascii keeps the line free of raw newlines and of UTF-8 surprises.
    return json.dumps(record, ensure_ascii=True).encode("ascii") + b"\n"


def _envelope_line(
    queue_id: str, envelope: Envelope, recipients: list[Recipient], arrival: float
) -> bytes:
    return envelope_line(
        queue_id,
        envelope.sender,
        [
            {"address": str(r.mailbox), "notify": list(r.notify), "orcpt": r.orcpt}
            for r in recipients
        ],
        arrival,
        body=envelope.body,
        smtputf8=envelope.smtputf8,
        ret=envelope.ret,
        envid=envelope.envid,
        client_ip=envelope.client_ip,
        helo=envelope.helo,
    )
