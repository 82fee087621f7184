"""Group commit: make the files of many messages durable with shared syncs.

Theory of operation
-------------------
A message is acknowledged (250) only once its files are durable. An fsync
costs about a millisecond on the disks we measured, so one per message caps a
worker near a thousand messages a second whatever the CPU could do. Databases
solved this long ago: sessions that finish at about the same time share one
sync. Here each worker has one committer; a session hands it a ``FileJob``
and awaits it. While a batch is being synced in the executor, new jobs queue
up; when it completes they all go together as the next batch. A lone message
is never delayed waiting for company.

One batch, in the executor thread:

1. write every file of every job under its temporary name (Maildir ``tmp/``);
2. sync the data: one ``syncfs(2)`` per file system touched, or, with the
   ``fsync`` method, an ``fsync(2)`` per file;
3. rename every file to its final name (Maildir ``new/``);
4. sync again so the renames are durable (``syncfs``, or an fsync of each
   directory).

Only then are the jobs' futures resolved. The data sync must precede the
renames: otherwise a crash could leave a final name pointing at an empty
file. A job whose write fails is removed alone (its temporary files are
unlinked) and its session answers 4xx; a failed sync fails the whole batch.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

log = logging.getLogger("mailfast.commit")

MAX_BATCH_JOBS = 512  # bounds the latency one batch adds to the next

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """syncfs(2): flush the whole file system holding ``fd``, metadata included."""
    if _libc.syncfs(fd) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def fsync_directory(path: str) -> None:
    """Make the entries of directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class PendingFile:
    temporary_path: str
    final_path: str
    write: Callable[[int], None]  # writes the content to an open descriptor


@dataclass(slots=True)
class FileJob:
    """The files one message needs; they succeed or fail together."""

    files: list[PendingFile] = field(default_factory=list)
    prepare: Callable[[], None] | None = None  # runs first, in the executor
    error: OSError | None = None
    _written: list[PendingFile] = field(default_factory=list)
    _published: int = 0


class GroupCommitter:
    def __init__(self, executor: Executor, method: str = "syncfs"):
        self._executor = executor
        self._sync_each_file = method == "fsync"
        self._pending: list[tuple[FileJob, asyncio.Future]] = []
        self._running = False
        self.batches = 0
        self.jobs = 0

    async def commit(self, job: FileJob) -> None:
        """Return once every file of ``job`` is durable; raise OSError if not."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        if not self._running:
            self._start_batch()
        await future

    async def drain(self) -> None:
        while self._running or self._pending:
            await asyncio.sleep(0.01)

    def _start_batch(self) -> None:
        batch = self._pending[:MAX_BATCH_JOBS]
        del self._pending[:MAX_BATCH_JOBS]
        self._running = True
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._run_batch, batch)
        done.add_done_callback(lambda _: self._finish_batch(batch))

    def _finish_batch(self, batch: list[tuple[FileJob, asyncio.Future]]) -> None:
        self._running = False
        self.batches += 1
        self.jobs += len(batch)
        for job, future in batch:
            if future.done():  # the session was cancelled meanwhile
                continue
            if job.error is not None:
                future.set_exception(job.error)
            else:
                future.set_result(None)
        if self._pending:
            self._start_batch()

    # Everything below runs in the executor thread.

    def _run_batch(self, batch: list[tuple[FileJob, asyncio.Future]]) -> None:
        jobs = [job for job, _future in batch]
        try:
            self._commit_jobs(jobs)
        except BaseException as exc:  # never leave the loop's futures hanging
            log.exception("group commit failed")
            for job in jobs:
                if job.error is None:
                    job.error = exc if isinstance(exc, OSError) else OSError(str(exc))

    def _commit_jobs(self, jobs: list[FileJob]) -> None:
        directories: dict[int, str] = {}  # st_dev -> a directory on it
        for job in jobs:
            self._write_job(job, directories)
        live = [job for job in jobs if job.error is None]
        if not live:
            return
        if not self._sync_each_file:
            try:
                self._syncfs_all(directories)
            except OSError as exc:
                for job in live:
                    self._abandon(job, exc)
                return
        for job in live:
            self._publish(job)
        published = [job for job in live if job.error is None or job._published]
        try:
            if self._sync_each_file:
                self._fsync_directories(published)
            else:
                self._syncfs_all(directories)
        except OSError as exc:
            # The renames may or may not survive a crash: we cannot claim them.
            for job in published:
                job.error = exc

    def _write_job(self, job: FileJob, directories: dict[int, str]) -> None:
        if job.prepare is not None:
            try:
                job.prepare()
            except OSError as exc:
                job.error = exc
                return
        for pending in job.files:
            try:
                fd = os.open(
                    pending.temporary_path,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    0o600,
                )
            except OSError as exc:
                self._abandon(job, exc)
                return
            job._written.append(pending)
            try:
                pending.write(fd)
                if self._sync_each_file:
                    os.fsync(fd)
                directories.setdefault(
                    os.fstat(fd).st_dev, os.path.dirname(pending.temporary_path)
                )
            except OSError as exc:
                self._abandon(job, exc)
                return
            finally:
                os.close(fd)

    def _publish(self, job: FileJob) -> None:
        for pending in job._written:
            try:
                os.rename(pending.temporary_path, pending.final_path)
            except OSError as exc:
                self._abandon(job, exc)
                return
            job._published += 1

    def _abandon(self, job: FileJob, exc: OSError) -> None:
        """Fail ``job`` and remove the temporary files it has not published."""
        job.error = exc
        for pending in job._written[job._published :]:
            try:
                os.unlink(pending.temporary_path)
            except FileNotFoundError:
                pass
            except OSError:
                log.error(
                    "cannot remove %s after a failed write", pending.temporary_path
                )

    @staticmethod
    def _syncfs_all(directories: dict[int, str]) -> None:
        for directory in directories.values():
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                syncfs(fd)
            finally:
                os.close(fd)

    @staticmethod
    def _fsync_directories(jobs: list[FileJob]) -> None:
        directories = {
            os.path.dirname(pending.final_path)
            for job in jobs
            for pending in job._written[: job._published]
        }
        for directory in directories:
            fsync_directory(directory)
