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
    corrupt/<id>         unusable (see below), with its state as <id>.state

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

A file that cannot be a message mailfast wrote (a disk error, a truncated
copy, an editor's leftover) raises ``CorruptQueueFile`` from ``load``, which
checks everything the relay reads. The worker moves it to corrupt/, as
Postfix does: it is neither delivered nor bounced, since a damaged envelope
cannot say to whom, and it does not come back at every restart. An entry
that is not a regular file is set aside too; what recovery cannot use (a
file where a worker's directory belongs, a directory in tmp/) stays where it
is, with a warning, so that it never stops the server from starting.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .envelope import Envelope, Recipient
from .groupcommit import PendingFile, fsync_directory
from .relaymodel import RelayMessage, RelayRecipient
from .spool import MessageBuffer, write_all

FORMAT_VERSION = 1
STATE_SUFFIX = ".state"  # a state file set aside next to its message in corrupt/

log = logging.getLogger("mailfast.queue")


class CorruptQueueFile(ValueError):
    """A queue or state file that mailfast cannot have written; str() says why."""


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
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as exc:  # bad UTF-8, deep nesting
            raise CorruptQueueFile(f"state file is not JSON: {exc}") from None
        _check_fields(raw, _STATE_FIELDS, "state file")
        if not all(_is_int(index) for index in raw["done"]):
            raise CorruptQueueFile("state file: 'done' holds a non-integer")
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
        self.corrupt_dir = os.path.join(self.directory, "corrupt")
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
            self.corrupt_dir,
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
        """The message in the queue file at ``path``.

        Raises CorruptQueueFile if the file or its state file is unusable, and
        OSError (FileNotFoundError above all) if it cannot be read.
        """
        with open(_open_regular(path), "rb") as f:
            line = f.readline()
            size = os.fstat(f.fileno()).st_size
        envelope = parse_envelope(line, os.path.basename(path))
        state = self._read_state(envelope["id"])
        return QueuedMessage(path, envelope, len(line), size - len(line), state)

    def _read_state(self, queue_id: str) -> DeliveryState:
        try:
            with open(os.path.join(self.state_dir, queue_id), "rb") as f:
                return DeliveryState.from_json(f.read())
        except FileNotFoundError:
            return DeliveryState()
        except IsADirectoryError:
            raise CorruptQueueFile("its state file is a directory") from None

    def quarantine(self, path: str) -> str:
        """Move the queue entry at ``path``, and its state file, into corrupt/.

        Returns where the entry went. Not synced: if the rename is lost in a
        crash, the file is found corrupt again and moved again.
        """
        os.makedirs(self.corrupt_dir, mode=0o700, exist_ok=True)
        name = os.path.basename(path)
        target = os.path.join(self.corrupt_dir, name)
        if os.path.lexists(target):  # keep what an earlier failure set aside
            target = f"{target}.{time.time_ns()}"
        # The message first: a state file without its message is inert, while
        # a message without its state would be sent again to whoever had it.
        os.rename(path, target)
        try:
            os.rename(os.path.join(self.state_dir, name), target + STATE_SUFFIX)
        except FileNotFoundError:
            pass
        return target

    def _set_aside(self, path: str, reason: str) -> None:
        """Quarantine an entry that is no message, or warn that it stays."""
        try:
            target = self.quarantine(path)
        except FileNotFoundError:
            return  # someone else took it
        except OSError as exc:
            log.warning(
                "queue: %s is %s and cannot be moved: %s", path, reason, exc.strerror
            )
        else:
            log.warning("queue: %s is %s; moved to %s", path, reason, target)

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
                    # d_type answers this without a system call, so the scan
                    # of a large queue costs no more.
                    if not entry.is_file(follow_symlinks=False):
                        self._set_aside(entry.path, "not a regular file")
                        continue
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
        What is not a worker's directory or a regular file is left alone or
        moved to corrupt/, with a warning: a stray entry must not stop the
        server from starting.
        """
        if not os.path.isdir(self.active_root):
            return 0
        if pid is None:
            # Nothing runs yet: half-written files were never acknowledged.
            for name in os.listdir(self.tmp_dir):
                path = os.path.join(self.tmp_dir, name)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # a directory: not ours to remove
                    log.warning(
                        "queue: cannot remove %s, skipped: %s", path, exc.strerror
                    )
        pids = [str(pid)] if pid is not None else os.listdir(self.active_root)
        moved = 0
        now = time.time()
        for name in pids:
            directory = os.path.join(self.active_root, name)
            try:
                mode = os.lstat(directory).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(mode):
                log.warning("queue: %s is not a worker's directory; skipped", directory)
                continue
            for entry in os.listdir(directory):
                moved += self._requeue(os.path.join(directory, entry), now)
            try:
                os.rmdir(directory)
            except OSError as exc:  # something above could not be moved
                log.warning("queue: cannot remove %s: %s", directory, exc.strerror)
        return moved

    def _requeue(self, path: str, now: float) -> int:
        """Move a dead worker's file to deferred/, due at once; 1 if moved."""
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                self._set_aside(path, "not a regular file")
                return 0
            target = os.path.join(self.deferred_dir, os.path.basename(path))
            os.rename(path, target)
            os.utime(target, (now, now))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning(
                "queue: cannot move %s back to deferred/: %s", path, exc.strerror
            )
            return 0
        return 1

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
        """(where, path) of every queue entry: "deferred", "active" or "corrupt".

        Entries are not checked: ``load`` says whether each is a message.
        """
        for name in sorted(os.listdir(self.deferred_dir)):
            yield "deferred", os.path.join(self.deferred_dir, name)
        for pid in sorted(os.listdir(self.active_root)):
            directory = os.path.join(self.active_root, pid)
            try:
                names = sorted(os.listdir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue  # recovered meanwhile, or a stray file recover() reports
            for name in names:
                yield "active", os.path.join(directory, name)
        try:
            names = sorted(os.listdir(self.corrupt_dir))
        except FileNotFoundError:
            names = []  # a queue made before corrupt/ existed
        present = set(names)
        for name in names:
            if name.endswith(STATE_SUFFIX) and name[: -len(STATE_SUFFIX)] in present:
                continue  # part of the entry before it
            yield "corrupt", os.path.join(self.corrupt_dir, name)


_NUMBER = ((int, float), "a number")
_STRING = (str, "a string")
_ENVELOPE_FIELDS = {
    "v": (int, "an integer"),
    "id": _STRING,
    "sender": _STRING,
    "recipients": (list, "a list"),
    "body": _STRING,
    "smtputf8": (bool, "a boolean"),
    "ret": _STRING,
    "envid": _STRING,
    "arrival": _NUMBER,
}
_RECIPIENT_FIELDS = {
    "address": _STRING,
    "notify": (list, "a list"),
    "orcpt": _STRING,
}
_STATE_FIELDS = {
    "attempts": (int, "an integer"),
    "next_attempt": _NUMBER,
    "last_error": _STRING,
    "done": (list, "a list"),
}


def parse_envelope(line: bytes, queue_id: str) -> dict:
    """The envelope record of queue file ``queue_id``, from its first line.

    Checks every field the relay reads, so that a damaged file fails here,
    as CorruptQueueFile, rather than half-way through an attempt.
    """
    if not line.endswith(b"\n"):
        raise CorruptQueueFile("envelope line truncated" if line else "empty file")
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, deep nesting
        raise CorruptQueueFile(f"envelope is not JSON: {exc}") from None
    _check_fields(record, _ENVELOPE_FIELDS, "envelope")
    if record["v"] != FORMAT_VERSION:
        raise CorruptQueueFile(f"unknown format version {record['v']}")
    # The id names the state file: one taken from another file's name would
    # read or overwrite that file's progress.
    if record["id"] != queue_id:
        raise CorruptQueueFile(f"envelope id {record['id'][:40]!r} is not the file's")
    for index, recipient in enumerate(record["recipients"]):
        _check_fields(recipient, _RECIPIENT_FIELDS, f"recipient {index}")
        if not all(isinstance(value, str) for value in recipient["notify"]):
            raise CorruptQueueFile(f"recipient {index}: 'notify' holds a non-string")
    return record


def _check_fields(record: object, fields: dict[str, tuple], what: str) -> None:
    if not isinstance(record, dict):
        raise CorruptQueueFile(f"{what} is a JSON {_json_kind(record)}, not an object")
    for key, (kind, description) in fields.items():
        if key not in record:
            raise CorruptQueueFile(f"{what} has no {key!r}")
        value = record[key]
        # bool is an int to isinstance, but never what a number field holds.
        if not isinstance(value, kind) or (
            isinstance(value, bool) and kind is not bool
        ):
            raise CorruptQueueFile(f"{what}: {key!r} is not {description}")


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array"}.get(type(value), type(value).__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _open_regular(path: str) -> int:
    """A descriptor of the regular file at ``path``; CorruptQueueFile if not one.

    Neither follows a symbolic link nor blocks on a FIFO left in the queue.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptQueueFile("a symbolic link, not a file") from None
        raise
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise CorruptQueueFile("not a regular file")
    return fd


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
