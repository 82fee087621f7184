"""A worker process: one uvloop event loop serving the inherited sockets.

Runs only in a freshly forked child: the event loop, the executor thread and
everything else with state are created here, after the fork, never inherited.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import signal
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

import dns.resolver
import uvloop

from . import config as configuration
from . import privileges
from .config import HEARTBEAT_INTERVAL_S, Config, split_smarthost
from .connlimits import ConnectionLimiter, ConnectionTable
from .delivery import Delivery
from .directory import Directory
from .groupcommit import GroupCommitter
from .maildir import MaildirStore
from .mailqueue import MailQueue
from .mx import MXResolver
from .mxcache import MXCache
from .loginfailures import LoginFailures
from .policy import Networks, RelayPolicy
from .protocol import SMTPConnection, WorkerContext
from .relay import Relayer
from .relayclient import RelayClient, RelaySettings
from .session import ListenerPolicy, SessionSettings
from .users import UserDatabase

log = logging.getLogger("mailfast.worker")

ACCEPTED_SETTLE_S = 0.05


def run(
    config: Config,
    sockets: list[tuple[str, socket.socket]],
    heartbeat_fd: int,
    connection_table: ConnectionTable,
    slot: int,
) -> int:
    """The worker's whole life; returns its exit status.

    ``sockets`` pairs each listening socket with its kind: "smtp",
    "submission" or "submissions". ``slot`` is this worker's row in the
    connection table the master shares with all workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master decides on Ctrl-C
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        limiter = ConnectionLimiter(
            connection_table,
            slot,
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
            config.limits.max_connection_rate_per_ip,
        )
        return loop.run_until_complete(_serve(config, sockets, heartbeat_fd, limiter))
    finally:
        loop.close()


async def _serve(
    config: Config,
    sockets: list[tuple[str, socket.socket]],
    heartbeat_fd: int,
    limiter: ConnectionLimiter,
) -> int:
    loop = asyncio.get_running_loop()
    # One thread for the group committer, whose batches run one at a time,
    # and a few for queue bookkeeping, so a slow state sync never holds up
    # the 250s of other sessions.
    commit_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
    queue_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="queue")
    committer = GroupCommitter(commit_executor, config.maildir.sync)
    queue = MailQueue(config.queue.directory)
    context = _context(config, committer, queue)  # reads the TLS key and users
    context.limiter = limiter
    privileges.drop(config)
    queue.prepare_worker()
    relayer = _relayer(config, queue, context.delivery, queue_executor)
    context.delivery.on_queued = relayer.submit
    runner = loop.create_task(relayer.run())
    servers = []
    for kind, sock in sockets:
        listener = _listener_policy(config, kind)
        servers.append(
            await loop.create_server(
                functools.partial(SMTPConnection, context, listener),
                sock=sock,
                backlog=1024,
                ssl=context.tls_context if listener.implicit_tls else None,
                ssl_handshake_timeout=(
                    config.tls.handshake_timeout_s if listener.implicit_tls else None
                ),
            )
        )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # The master forked us with these blocked; a SIGTERM sent meanwhile is
    # delivered now, to the handler above.
    signal.pthread_sigmask(
        signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    )
    _beat(loop, heartbeat_fd, stop, limiter)
    log.info("worker %d started", os.getpid())

    await stop.wait()
    log.info("worker %d draining", os.getpid())
    for server in servers:
        server.close()
    # A connection accepted just before the close reaches connection_made a
    # loop turn later: seen by no drain, it would be reset when we exit.
    await asyncio.sleep(ACCEPTED_SETTLE_S)
    await _drain(context, config.server.shutdown_grace_s)
    await committer.drain()
    runner.cancel()
    await relayer.drain(timeout_s=min(5.0, config.server.shutdown_grace_s))
    await committer.drain()
    if context.connections:  # none should be left; never leave one to a reset
        await _drain(context, config.server.shutdown_grace_s)
    commit_executor.shutdown(wait=True)
    queue_executor.shutdown(wait=True)
    context.auth_executor.shutdown(wait=False, cancel_futures=True)
    log.info(
        "worker %d stopped: %d messages in %d commit batches",
        os.getpid(),
        committer.jobs,
        committer.batches,
    )
    return 0


def _context(
    config: Config, committer: GroupCommitter, queue: MailQueue
) -> WorkerContext:
    hostname = config.hostname
    limits = config.limits
    directory = Directory(config)
    spool_dir = os.path.abspath(config.server.spool_dir)
    delivery = Delivery(
        hostname,
        directory,
        MaildirStore(config.maildir.root),
        queue,
        committer,
        spool_dir,
    )
    return WorkerContext(
        settings=SessionSettings.build(hostname, limits),
        directory=directory,
        relay_policy=RelayPolicy(config.relay.trusted_networks),
        per_ip_exempt=Networks(limits.per_ip_exempt_networks),
        delivery=delivery,
        max_command_octets=limits.max_command_octets,
        max_data_line_octets=limits.max_data_line_octets,
        command_timeout_s=limits.command_timeout_s,
        data_timeout_s=limits.data_timeout_s,
        spool_dir=spool_dir,
        memory_buffer_octets=limits.memory_buffer_octets,
        connections=set(),
        tls_context=_server_tls_context(config),
        tls_handshake_timeout_s=config.tls.handshake_timeout_s,
        users=_load_users(config),
        auth_executor=ThreadPoolExecutor(max_workers=2, thread_name_prefix="auth"),
        login_failures=LoginFailures(
            os.path.abspath(config.auth.failures_path),
            config.auth.max_failures,
            config.auth.failure_window_s,
        ),
        plaintext_auth_on_loopback=config.auth.allow_plaintext_on_loopback,
        sender_must_match=config.auth.sender_must_match,
    )


def _load_users(config: Config) -> UserDatabase:
    """The users file, read at start and again when a login finds it changed."""
    users = UserDatabase.for_server(config.auth.users_file)
    if not users.exists and _offers_auth(config):
        log.warning("no users file at %s: every AUTH will fail", config.auth.users_file)
    return users


def _offers_auth(config: Config) -> bool:
    return bool(config.server.submission or config.server.submissions) or (
        config.auth.offer_on_smtp
    )


def _listener_policy(config: Config, kind: str) -> ListenerPolicy:
    tls = bool(config.tls.certificate)
    if kind == "smtp":
        return ListenerPolicy(tls_available=tls, auth_offered=config.auth.offer_on_smtp)
    # Submission (RFC 6409) and submissions (RFC 8314): users must log in.
    return ListenerPolicy(
        tls_available=tls,
        auth_offered=True,
        auth_required=True,
        implicit_tls=kind == "submissions",
    )


def _server_tls_context(config: Config) -> ssl.SSLContext | None:
    if not config.tls.certificate:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls.certificate, config.tls.key)
    return context


def _relayer(
    config: Config, queue: MailQueue, delivery: Delivery, executor: ThreadPoolExecutor
) -> Relayer:
    relay = config.relay
    nameservers = [configuration.parse_nameserver(ns) for ns in relay.nameservers]
    if not nameservers:
        try:
            nameservers = [(ns, 53) for ns in dns.resolver.Resolver().nameservers]
        except dns.resolver.NoResolverConfiguration:
            log.error("no relay.nameservers and no usable /etc/resolv.conf")
            nameservers = [("127.0.0.1", 53)]
    smarthost = split_smarthost(relay.smarthost, relay.port)
    port = smarthost[1] if smarthost else relay.port
    our_addresses = frozenset(
        str(ipaddress.ip_address(host))
        for host, listen_port in (
            configuration.parse_listen(address, "server.listen")
            for address in config.server.listen
        )
        if listen_port == port
    )
    resolver = MXResolver(
        nameservers,
        MXCache(
            relay.mx_cache_path,
            min_ttl_s=relay.mx_cache_min_ttl_s,
            max_ttl_s=relay.mx_cache_max_ttl_s,
            negative_ttl_s=relay.mx_cache_negative_ttl_s,
        ),
        timeout_s=relay.dns_timeout_s,
        our_names=frozenset({config.hostname.lower()}),
        our_addresses=our_addresses,
        relay_port=port,
    )
    client = RelayClient(
        RelaySettings(
            helo_name=config.hostname,
            port=port,
            connect_timeout_s=relay.connect_timeout_s,
            greeting_timeout_s=relay.command_timeout_s,
            command_timeout_s=relay.command_timeout_s,
            data_init_timeout_s=min(120.0, relay.command_timeout_s),
            data_block_timeout_s=relay.data_timeout_s,
            data_final_timeout_s=relay.final_timeout_s,
            idle_reuse_s=relay.idle_reuse_s,
            max_per_destination=relay.max_per_destination,
            tls_context=_outbound_tls_context() if relay.tls != "none" else None,
        )
    )
    return Relayer(config, queue, resolver, client, delivery, executor)


def _outbound_tls_context() -> ssl.SSLContext:
    """Opportunistic STARTTLS (RFC 3207): encrypt when offered, verify nothing.

    Like Postfix's "may" level, this protects against passive listeners
    only; an unverified certificate is still better than plain text.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _drain(context: WorkerContext, grace_s: float) -> None:
    """Let sessions finish for ``grace_s``, then end the rest with 421."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while context.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for connection in list(context.connections):
        connection.shut_down()
    # Sessions in the middle of a commit finish it and get their reply; then
    # give the transports a moment to flush the 421s before the process exits.
    flush_deadline = loop.time() + 2.0
    while context.connections and (
        loop.time() < flush_deadline
        or any(connection.busy for connection in context.connections)
    ):
        await asyncio.sleep(0.01)


def _beat(
    loop: asyncio.AbstractEventLoop,
    fd: int,
    stop: asyncio.Event,
    limiter: ConnectionLimiter,
) -> None:
    """Tell the master this loop still turns; sent from inside the loop itself."""
    limiter.tick()  # expire this worker's old rate counts while it is idle
    try:
        os.write(fd, b".")
    except BlockingIOError:
        pass  # the master is behind; it has seen recent beats anyway
    except OSError:
        # The master is gone: nobody would restart us or reap us, so drain.
        log.error("worker %d lost its master, stopping", os.getpid())
        stop.set()
        return
    loop.call_later(HEARTBEAT_INTERVAL_S, _beat, loop, fd, stop, limiter)
