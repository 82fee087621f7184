"""``mailfast queue``: list, show, flush and delete queued messages.

Works on the queue directory directly, so it needs no connection to the
server and works while it runs: a deferred message is taken out of reach of
the workers by renaming it (the same claim the workers use) before it is
deleted, and a flush only makes deferred messages due and tells the workers'
queue runners to look, which they do within a second.

An entry that is not a readable message (see ``CorruptQueueFile``) is listed
as unreadable, with the reason, so that it hides nothing else; ``delete``
removes it like any other. Entries the workers set aside in corrupt/ are
listed as corrupt, and can be shown and deleted by their name.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from .mailqueue import STATE_SUFFIX, CorruptQueueFile, MailQueue


def run(queue: MailQueue, action: str, queue_ids: list[str]) -> int:
    if not os.path.isdir(queue.deferred_dir) and action in ("list", "flush"):
        print(f"-- 0 messages in the queue ({os.path.abspath(queue.directory)})")
        return 0
    if action == "list":
        return _list(queue)
    if action == "flush":
        queue.request_flush()
        print("flush requested: deferred messages are due now")
        return 0
    if not queue_ids:
        print(f"mailfast queue {action}: give one or more queue ids", file=sys.stderr)
        return 2
    status = 0
    for queue_id in queue_ids:
        found = _find(queue, queue_id)
        if found is None:
            print(f"{queue_id}: not in the queue", file=sys.stderr)
            status = 1
        elif action == "show":
            status |= _show(queue, queue_id, *found)
        elif action == "delete":
            status |= _delete(queue, queue_id, *found)
    return status


def _find(queue: MailQueue, queue_id: str) -> tuple[str, str] | None:
    if (
        "/" in queue_id
        or queue_id.startswith(".")
        or not os.path.isdir(queue.deferred_dir)
    ):
        return None
    for where, path in queue.all_messages():
        if os.path.basename(path) == queue_id:
            return where, path
    return None


def _list(queue: MailQueue) -> int:
    count = unreadable = corrupt = 0
    now = time.time()
    for where, path in queue.all_messages():
        name = os.path.basename(path)
        if where == "corrupt":
            # The reason is in the log line of the worker that moved it.
            print(f"{name}  corrupt")
            corrupt += 1
            continue
        try:
            message = queue.load(path)
        except FileNotFoundError:
            continue  # delivered or moved while we looked
        except (CorruptQueueFile, OSError) as exc:
            print(f"{name}  {where}  unreadable: {_reason(exc)}")
            unreadable += 1
            continue
        count += 1
        state = message.state
        pending = set(message.pending())
        if where == "deferred":
            try:  # the mtime, not the state: a flush moves it to now
                next_attempt = _duration(os.stat(path).st_mtime - now)
            except FileNotFoundError:
                next_attempt = "now"
        else:
            next_attempt = "being delivered"
        print(
            f"{message.queue_id}  {where}  age={_duration(now - message.arrival)}  "
            f"size={message.content_size}  attempts={state.attempts}  "
            f"next={next_attempt}"
        )
        print(f"  from: <{message.sender}>")
        for index, recipient in enumerate(message.recipients()):
            mark = "pending" if index in pending else "done"
            print(f"  to:   <{recipient.address}> ({mark})")
        if state.last_error:
            print(f"  last error: {state.last_error}")
    summary = f"{count} message{'s' if count != 1 else ''} in the queue"
    if unreadable:
        summary += f", {unreadable} unreadable"
    if corrupt:
        summary += f", {corrupt} corrupt"
    print(f"-- {summary} ({os.path.abspath(queue.directory)})")
    return 0


def _show(queue: MailQueue, queue_id: str, where: str, path: str) -> int:
    try:
        message = queue.load(path)
        with open(path, "rb") as f:
            f.seek(message.content_offset)
            content = f.read(message.content_size)
    except FileNotFoundError:
        print(f"{queue_id}: no longer in the queue", file=sys.stderr)
        return 1
    except (CorruptQueueFile, OSError) as exc:
        print(f"{queue_id}: {where}, unreadable: {_reason(exc)}", file=sys.stderr)
        return 1
    print(json.dumps({"where": where, **message.envelope}, indent=2))
    print(json.dumps({"state": json.loads(message.state.to_json())}, indent=2))
    sys.stdout.write(content.decode("utf-8", "replace"))
    return 0


def _delete(queue: MailQueue, queue_id: str, where: str, path: str) -> int:
    if where == "corrupt":
        # No worker reads corrupt/, so there is no race to win first.
        _remove(path)
        try:
            os.unlink(path + STATE_SUFFIX)
        except FileNotFoundError:
            pass
        print(f"{queue_id}: deleted")
        return 0
    if where != "deferred":
        print(f"{queue_id}: being delivered right now; try again", file=sys.stderr)
        return 1
    claimed = os.path.join(queue.tmp_dir, f"{queue_id}.deleting")
    try:
        os.rename(path, claimed)  # a worker claiming it now loses the race
    except FileNotFoundError:
        print(f"{queue_id}: claimed by a worker meanwhile; try again", file=sys.stderr)
        return 1
    _remove(claimed)
    try:
        os.unlink(os.path.join(queue.state_dir, queue_id))
    except FileNotFoundError:
        pass
    print(f"{queue_id}: deleted")
    return 0


def _reason(exc: Exception) -> str:
    """Why an entry cannot be read: the check that failed, or the system's word."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _remove(path: str) -> None:
    """Remove a queue entry, even one that is a directory left by mistake."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
