"""A worker process: one uvloop event loop serving the inherited sockets.

Runs only in a freshly forked child: the event loop, the executor thread and
everything else with state are created here, after the fork, never inherited.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import uvloop

from .config import Config
from .delivery import Delivery
from .directory import Directory
from .groupcommit import GroupCommitter
from .maildir import MaildirStore
from .protocol import SMTPConnection, WorkerContext
from .session import SessionSettings

log = logging.getLogger("mailfast.worker")

HEARTBEAT_INTERVAL_S = 1.0


def run(config: Config, sockets: list[socket.socket], heartbeat_fd: int) -> int:
    """The worker's whole life; returns its exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master decides on Ctrl-C
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(config, sockets, heartbeat_fd))
    finally:
        loop.close()


async def _serve(config: Config, sockets: list[socket.socket], heartbeat_fd: int) -> int:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
    committer = GroupCommitter(executor, config.maildir.sync)
    context = _context(config, committer)
    servers = [
        await loop.create_server(lambda: SMTPConnection(context), sock=sock, backlog=1024)
        for sock in sockets
    ]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    _beat(loop, heartbeat_fd, stop)
    log.info("worker %d started", os.getpid())

    await stop.wait()
    log.info("worker %d draining", os.getpid())
    for server in servers:
        server.close()
    await _drain(context, config.server.shutdown_grace_s)
    await committer.drain()
    executor.shutdown(wait=True)
    log.info(
        "worker %d stopped: %d messages in %d commit batches",
        os.getpid(),
        committer.jobs,
        committer.batches,
    )
    return 0


def _context(config: Config, committer: GroupCommitter) -> WorkerContext:
    hostname = config.hostname
    limits = config.limits
    maildirs = MaildirStore(config.maildir.root)
    return WorkerContext(
        settings=SessionSettings.build(hostname, limits),
        directory=Directory(config),
        delivery=Delivery(hostname, maildirs, committer),
        max_command_octets=limits.max_command_octets,
        max_data_line_octets=limits.max_data_line_octets,
        command_timeout_s=limits.command_timeout_s,
        data_timeout_s=limits.data_timeout_s,
        spool_dir=os.path.abspath(config.server.spool_dir),
        memory_buffer_octets=limits.memory_buffer_octets,
        connections=set(),
    )


async def _drain(context: WorkerContext, grace_s: float) -> None:
    """Let sessions finish for ``grace_s``, then end the rest with 421."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while context.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for connection in list(context.connections):
        connection.shut_down()
    # Sessions in the middle of a commit finish it and get their reply.
    while any(connection.busy for connection in context.connections):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0)  # let the transports flush their last writes


def _beat(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event) -> None:
    """Tell the master this loop still turns; sent from inside the loop itself."""
    try:
        os.write(fd, b".")
    except BlockingIOError:
        pass  # the master is behind; it has seen recent beats anyway
    except OSError:
        # The master is gone: nobody would restart us or reap us, so drain.
        log.error("worker %d lost its master, stopping", os.getpid())
        stop.set()
        return
    loop.call_later(HEARTBEAT_INTERVAL_S, _beat, loop, fd, stop)
