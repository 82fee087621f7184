"""Outbound relay: deliver one message to one destination over SMTP.

Theory of operation
-------------------
``RelayClient.deliver`` turns a message and the mail exchangers of one
destination into one ``Outcome`` per recipient:

1. Hold one of the destination's connection slots: at most
   ``max_per_destination`` deliveries (and so connections) at once.
2. Take an idle connection to one of the candidate addresses from the pool,
   or walk the addresses, host by host, until a server greets us, answers
   EHLO (or HELO) and, when required, starts TLS.
3. Run transactions on that connection until every recipient is decided.
   A transaction ends in one of two ways:
     * DECIDED: the reply codes gave some recipients their outcome. A 452
       "too many recipients" leaves the others for another transaction on
       the same connection (RFC 5321 §4.5.3.1.8).
     * NEXT_HOST: this server cannot take the message now (4xx to MAIL, a
       421, a channel failure before the end of data). What it said about
       single recipients is dropped; the next address gets them all.
4. Put the connection back in the pool if it is in sync and between
   transactions; otherwise QUIT it, or drop it when QUIT cannot work.

When the candidates run out, whatever is still pending is deferred with the
last error seen: 4.4.1 when no server answered, else that server's reply.

Invariants:
  * A pooled connection is always between transactions: one that stopped
    before its end of data was reset with RSET, or the connection dropped.
  * Once the end of data is handed to the transport the server may have the
    message, so it is never offered to another host in this attempt. A lost
    connection or a timeout from then on defers (4.4.2): no bounce, and no
    "delivered" (RFC 1047 explains the duplicates this risks and accepts).
  * ``deliver`` never raises for a delivery problem. An unexpected error
    defers what is pending (4.3.0) and drops the connection in use, which may
    be in the middle of a transaction and must never reach the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from .outcome import Outcome, Status
from .relaymodel import MXHost, RelayMessage, RelayRecipient
from .smtpclient import (
    ChannelError,
    ClientConnection,
    DotStuffer,
    Extensions,
    Reply,
    TLSHandshakeError,
    has_line_break,
    mail_command,
    rcpt_command,
)

log = logging.getLogger("mailfast.relay")

# Content up to this size is read in one pread on the loop: it was written to
# the spool moments ago and sits in the page cache. Larger content is read in
# blocks by the default executor while it is sent.
SMALL_CONTENT_OCTETS = 1 << 20
BLOCK_OCTETS = 65_536
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC

# Our own reasons. X.7.4 "security features not supported" is the RFC 3463
# code for a peer without the TLS we require; X.7.5 "cryptographic failure"
# for a handshake that failed; both as 4xx, since another try may succeed.
TLS_NOT_OFFERED = "4.7.4"
LOCAL_ERROR = "4.3.0"
NO_ANSWER = "4.4.1"
BAD_CONNECTION = "4.4.2"
NO_ADDRESS = "4.4.4"  # X.4.4 "unable to route": no address to try at all
# RFC 3463 X.5.3 "too many recipients"; RFC 5321 §4.5.3.1.10 asks clients to
# take even a 5xx for it as temporary, and send the rest in a new transaction.
TOO_MANY_RECIPIENTS = ("4.5.3", "5.5.3")


@dataclass
class RelaySettings:
    helo_name: str  # our EHLO name
    port: int = 25  # destination port (tests use loopback ports)
    connect_timeout_s: float = 30.0
    greeting_timeout_s: float = 300.0  # RFC 5321 §4.5.3.2.1
    command_timeout_s: float = 300.0  # MAIL/RCPT: §4.5.3.2.2-3
    data_init_timeout_s: float = 120.0  # DATA: §4.5.3.2.4
    data_block_timeout_s: float = 180.0  # each block written: §4.5.3.2.5
    data_final_timeout_s: float = 600.0  # after the final dot: §4.5.3.2.6
    idle_reuse_s: float = 5.0  # how long an idle connection is kept for reuse
    max_per_destination: int = 20  # concurrent connections per destination key
    tls_context: ssl.SSLContext | None = None  # for STARTTLS; None = never try


class RelayClient:
    """The SMTP client of one worker: connection slots and the idle pool.

    Create it inside the worker's event loop and ``close`` it before the loop
    ends; ``deliver`` may be called concurrently.
    """

    def __init__(self, settings: RelaySettings):
        name = settings.helo_name
        if not name or not name.isascii() or any(c.isspace() for c in name):
            raise ValueError("helo_name must be a non-empty ASCII name")
        self.settings = settings
        self._slots: dict[str, _Slot] = {}
        self._idle: dict[str, list[ClientConnection]] = {}
        self._quitting: set[asyncio.Task] = set()
        self._closed = False

    async def deliver(
        self,
        message: RelayMessage,
        hosts: list[MXHost],
        destination: str,
        tls_required: bool = False,
    ) -> list[Outcome]:
        """One Outcome per ``message.recipients`` entry, in the same order.

        ``destination`` (the domain, or the smarthost) keys the concurrency
        limit and the pool of idle connections.
        """
        attempt = _Attempt(self, message, hosts, destination, tls_required)
        async with self._slot(destination):
            try:
                await attempt.run()
            except Exception:
                log.error(
                    "%s: unexpected error relaying to %s",
                    message.queue_id,
                    destination,
                    exc_info=True,
                )
                attempt.give_up(
                    Outcome.deferred(LOCAL_ERROR, "local error in the SMTP client")
                )
            finally:
                # Set only while a connection is in use: it may be anywhere
                # in a transaction, so it is dropped, never pooled.
                if attempt.connection is not None:
                    attempt.connection.abort()
                    attempt.connection = None
        return attempt.outcomes()

    async def close(self) -> None:
        """QUIT and close the idle connections; later ones are not pooled."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                self._release(connection)
        while self._quitting:
            await asyncio.gather(*self._quitting, return_exceptions=True)

    # Concurrency limit.

    @contextlib.asynccontextmanager
    async def _slot(self, destination: str) -> AsyncIterator[None]:
        slot = self._slots.get(destination)
        if slot is None:
            slot = _Slot(asyncio.Semaphore(self.settings.max_per_destination))
            self._slots[destination] = slot
        slot.users += 1
        try:
            async with slot.semaphore:
                yield
        finally:
            # Forget idle destinations: a worker may see millions of domains.
            slot.users -= 1
            if slot.users == 0:
                del self._slots[destination]

    # The pool of idle connections.

    def _take(
        self, destination: str, endpoints: set[tuple[str, int]], tls_required: bool
    ) -> ClientConnection | None:
        """The most recently used idle connection to one of ``endpoints``.

        A connection the server closed while it idled is noticed here. One
        that it closes just as we reuse it fails on MAIL, before any content,
        and the attempt reconnects: so no NOOP probe is needed first.
        """
        idle = self._idle.get(destination, [])
        for connection in [c for c in idle if not c.is_open]:
            idle.remove(connection)
            self._release(connection)
        reusable = (
            c
            for c in reversed(idle)
            if (c.address, c.port) in endpoints and (c.tls or not tls_required)
        )
        connection = next(reusable, None)
        if connection is not None:
            idle.remove(connection)
            connection.idle_timer.cancel()
        if not idle:
            self._idle.pop(destination, None)
        return connection

    def _put(self, destination: str, connection: ClientConnection) -> None:
        if self._closed or not connection.reusable or not connection.is_open:
            self._release(connection)
            return
        loop = asyncio.get_running_loop()
        connection.idle_timer = loop.call_later(
            self.settings.idle_reuse_s, self._expire, destination, connection
        )
        self._idle.setdefault(destination, []).append(connection)

    def _expire(self, destination: str, connection: ClientConnection) -> None:
        idle = self._idle.get(destination, [])
        if connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[destination]
        self._release(connection)

    def _release(self, connection: ClientConnection) -> None:
        """QUIT in the background when the session is in sync, else drop it."""
        if connection.idle_timer is not None:
            connection.idle_timer.cancel()
        if not (connection.reusable and connection.is_open):
            connection.abort()
            return
        task = asyncio.get_running_loop().create_task(connection.quit())
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)


@dataclass(slots=True)
class _Slot:
    semaphore: asyncio.Semaphore
    users: int = 0  # holders and waiters


class _Verdict(enum.Enum):
    DECIDED = "decided"  # some recipients have their outcome from this server
    NEXT_HOST = "next host"  # this server cannot take the message now


class _Attempt:
    """One call of ``deliver``: its recipients, outcomes and connection."""

    def __init__(
        self,
        client: RelayClient,
        message: RelayMessage,
        hosts: list[MXHost],
        destination: str,
        tls_required: bool,
    ):
        self.client = client
        self.settings = client.settings
        self.message = message
        self.destination = destination
        self.tls_required = tls_required
        self.candidates = [(h.name, address) for h in hosts for address in h.addresses]
        self.content = _Content(message)
        self.connection: ClientConnection | None = None  # in use right now
        self.pending = list(range(len(message.recipients)))
        self._outcomes: list[Outcome | None] = [None] * len(message.recipients)
        if self.candidates:
            self.last_error = Outcome.deferred(NO_ANSWER, "no mail exchanger answered")
        else:
            self.last_error = Outcome.deferred(NO_ADDRESS, "no mail exchanger address")

    def outcomes(self) -> list[Outcome]:
        return [outcome or self.last_error for outcome in self._outcomes]

    def give_up(self, outcome: Outcome) -> None:
        self.last_error = outcome
        self.pending = []

    def decide(self, decided: dict[int, Outcome]) -> None:
        for index, outcome in decided.items():
            self._outcomes[index] = outcome
        self.pending = [index for index in self.pending if index not in decided]

    async def run(self) -> None:
        if not self.pending or not self._envelope_is_safe():
            return
        if self.tls_required and self.settings.tls_context is None:
            self.give_up(
                Outcome.deferred(
                    TLS_NOT_OFFERED, "TLS is required, but no TLS context is configured"
                )
            )
            return
        self.content.load_small()
        port = self.settings.port
        endpoints = {(address, port) for _, address in self.candidates}
        self.connection = self.client._take(
            self.destination, endpoints, self.tls_required
        )
        if self.connection is not None:
            log.debug("%s: reusing %s", self.message.queue_id, self.connection.label)
        candidates = iter(self.candidates)

        while self.pending:
            if self.connection is None:
                candidate = next(candidates, None)
                if candidate is None:
                    break
                self.connection = await self._open(*candidate)
                continue
            verdict = await self._transaction(self.connection)
            if verdict is _Verdict.NEXT_HOST:
                log.debug("%s: %s", self.message.queue_id, self.last_error.text)
            if verdict is _Verdict.NEXT_HOST or not self.connection.reusable:
                self.client._release(self.connection)
                self.connection = None

        if self.connection is not None:
            connection, self.connection = self.connection, None
            self.client._put(self.destination, connection)
        # What is still pending keeps the last error: outcomes() fills it in.

    def _envelope_is_safe(self) -> bool:
        # Our SMTP server never queues a CR or LF in these, but one here
        # would end a command line early and smuggle in commands of its own.
        m = self.message
        if has_line_break(m.sender + m.ret + m.envid):
            self.decide(
                {
                    i: Outcome.failed("5.5.4", "line break in the envelope")
                    for i in self.pending
                }
            )
            return False
        self.decide(
            {
                i: Outcome.failed("5.5.4", "line break in a recipient")
                for i in self.pending
                if has_line_break(_recipient_text(m.recipients[i]))
            }
        )
        return bool(self.pending)

    # Opening a session.

    async def _open(
        self, host_name: str, address: str, try_tls: bool = True
    ) -> ClientConnection | None:
        """A greeted session on a new connection, or None and ``last_error``."""
        s = self.settings
        try:
            connection = await ClientConnection.connect(
                host_name, address, s.port, s.connect_timeout_s
            )
        except ChannelError as exc:
            self.last_error = Outcome.deferred(exc.enhanced, exc.reason)
            log.debug("%s: %s", self.message.queue_id, exc.reason)
            return None
        self.connection = connection
        try:
            refusal = await self._greet(connection, try_tls)
        except ChannelError as exc:
            self.connection = None
            connection.abort()
            self.last_error = Outcome.deferred(
                exc.enhanced, exc.reason, connection.label
            )
            log.debug("%s: %s", self.message.queue_id, exc.reason)
            if isinstance(exc, TLSHandshakeError) and try_tls and not self.tls_required:
                # Opportunistic TLS guards against passive listening only; a
                # plain session is what we would have had without STARTTLS.
                return await self._open(host_name, address, try_tls=False)
            return None
        if refusal is not None:
            self.connection = None
            self.last_error = refusal
            log.debug(
                "%s: %s refused: %s",
                self.message.queue_id,
                connection.label,
                refusal.remote_reply or refusal.text,
            )
            self.client._release(connection)
            return None
        return connection

    async def _greet(
        self, connection: ClientConnection, try_tls: bool
    ) -> Outcome | None:
        """Greeting, EHLO and STARTTLS; a deferral when the server refused."""
        s = self.settings
        label = connection.label
        greeting = await connection.read_reply(s.greeting_timeout_s, "greeting")
        if greeting.code != 220:
            # Even a 554 only defers: the next attempt may reach another host.
            return _deferral(greeting, label)
        reply = await connection.hello(s.helo_name, s.command_timeout_s)
        if not reply.positive:
            return _deferral(reply, label)

        if s.tls_context is not None and try_tls and connection.extensions.starttls:
            reply = await connection.starttls(s.tls_context, s.command_timeout_s)
            if reply.code == 220:
                reply = await connection.hello(s.helo_name, s.command_timeout_s)
                if not reply.positive:
                    return _deferral(reply, label)
            elif self.tls_required:
                return _deferral(reply, label)
            # Otherwise the session goes on in plain text (RFC 3207 §4).

        if self.tls_required and not connection.tls:
            return Outcome.deferred(
                TLS_NOT_OFFERED, f"TLS is required, but {label} did not offer it", label
            )
        return None

    # One transaction.

    async def _transaction(self, connection: ClientConnection) -> _Verdict:
        label = connection.label
        batch = list(self.pending)
        refusal = await self._refusal(connection.extensions, label)
        if refusal is not None:
            self.decide({index: refusal for index in batch})
            return _Verdict.DECIDED
        try:
            replies = await self._send_envelope(connection, batch)
        except ChannelError as exc:
            self.last_error = Outcome.deferred(exc.enhanced, exc.reason, label)
            return _Verdict.NEXT_HOST
        mail_reply, rcpt_replies = replies[0], replies[1 : 1 + len(batch)]
        data_reply = replies[-1] if len(replies) > 1 + len(batch) else None
        if data_reply is not None and data_reply.code == 354:
            # The pipelined DATA was accepted: right when a recipient was, but
            # otherwise there is nothing we may send, and no way out of DATA
            # but to hang up.
            if not (mail_reply.positive and any(r.positive for r in rcpt_replies)):
                connection.abort()

        # MAIL FROM: a 5xx fails every recipient; anything else but 2xx means
        # this server cannot take the message now.
        if mail_reply.permanent:
            failed = _outcome(mail_reply, label)
            self.decide({index: failed for index in batch})
            return _Verdict.DECIDED
        if not mail_reply.positive:
            return self._next_host(connection, mail_reply)

        # RCPT TO, recipient by recipient.
        decided: dict[int, Outcome] = {}
        accepted: list[int] = []
        # Fewer replies than recipients only after a 421, which ends the loop.
        for index, reply in zip(batch, rcpt_replies, strict=False):
            if reply.positive:
                accepted.append(index)
            elif reply.code == 421 or not (reply.transient or reply.permanent):
                return self._next_host(connection, reply)
            elif accepted and (
                reply.code == 452 or reply.enhanced in TOO_MANY_RECIPIENTS
            ):
                pass  # too many recipients: left pending for the next transaction
            else:
                decided[index] = _outcome(reply, label)
        if not accepted:
            # A pipelined DATA got its 503 or 554: expected, nothing to send.
            await self._reset(connection)
            self.decide(decided)
            return _Verdict.DECIDED

        verdict = await self._send_message(connection, accepted, decided, data_reply)
        if verdict is _Verdict.DECIDED:
            self.decide(decided)
        return verdict

    async def _send_envelope(
        self, connection: ClientConnection, batch: list[int]
    ) -> list[Reply]:
        """MAIL and RCPT (and DATA when pipelined): the replies, in order.

        With PIPELINING the whole envelope leaves in one write and the
        replies are read afterwards (RFC 2920 §3.1); DATA ends the group.
        BDAT is never in it: it carries the content, which is only sent once
        a recipient was accepted. A 421 ends the replies early.
        """
        s = self.settings
        extensions = connection.extensions
        recipients = self.message.recipients
        mail = mail_command(self.message.sender, self._mail_parameters(extensions))
        rcpts = [
            rcpt_command(
                recipients[i].address, _rcpt_parameters(recipients[i], extensions)
            )
            for i in batch
        ]
        if extensions.pipelining:
            stages = [("MAIL", s.command_timeout_s)]
            stages += [("RCPT", s.command_timeout_s)] * len(rcpts)
            group = [mail, *rcpts]
            if not extensions.chunking:
                stages.append(("DATA", s.data_init_timeout_s))
                group.append(b"DATA\r\n")
            connection.write(b"".join(group))
            replies = []
            for stage, timeout_s in stages:
                replies.append(await connection.read_reply(timeout_s, stage))
                if replies[-1].code == 421:
                    break  # the server is closing: no more replies will come
            return replies

        replies = [await connection.command(mail, s.command_timeout_s, "MAIL")]
        for rcpt in rcpts if replies[0].positive else []:
            replies.append(await connection.command(rcpt, s.command_timeout_s, "RCPT"))
            if replies[-1].code == 421:
                break
        return replies

    async def _send_message(
        self,
        connection: ClientConnection,
        accepted: list[int],
        decided: dict[int, Outcome],
        data_reply: Reply | None,
    ) -> _Verdict:
        """DATA or BDAT, the content and the final reply, into ``decided``."""
        s = self.settings
        label = connection.label
        chunking = connection.extensions.chunking
        handed_over = False
        try:
            if chunking:
                size = self.message.content_size
                connection.write(f"BDAT {size} LAST\r\n".encode())
            else:
                if data_reply is None:
                    data_reply = await connection.command(
                        b"DATA\r\n", s.data_init_timeout_s, "DATA"
                    )
                if data_reply.code == 421 or not (
                    data_reply.code == 354
                    or data_reply.transient
                    or data_reply.permanent
                ):
                    return self._next_host(connection, data_reply)
                if data_reply.code != 354:
                    refused = _outcome(data_reply, label)
                    decided.update({index: refused for index in accepted})
                    await self._reset(connection)
                    return _Verdict.DECIDED
            await self._send_content(connection, dot_stuffed=not chunking)
            handed_over = True
            final = await connection.read_reply(s.data_final_timeout_s, "end of data")
        except ChannelError as exc:
            if not handed_over:
                # Without its end the server cannot have accepted the message.
                self.last_error = Outcome.deferred(exc.enhanced, exc.reason, label)
                return _Verdict.NEXT_HOST
            lost = Outcome.deferred(BAD_CONNECTION, exc.reason, label)
            decided.update({index: lost for index in accepted})
            return _Verdict.DECIDED

        # The reply to the end of data decides for every accepted recipient.
        if final.positive or final.transient or final.permanent:
            result = _outcome(final, label)
            if final.code == 421:
                connection.reusable = False  # the server closes after a 421
        else:
            result = Outcome.deferred(
                "4.5.0", f"unexpected reply from {label} to the end of data", label
            )
            connection.abort()
        decided.update({index: result for index in accepted})
        return _Verdict.DECIDED

    def _next_host(self, connection: ClientConnection, reply: Reply) -> _Verdict:
        self.last_error = _deferral(reply, connection.label)
        if reply.code == 421 or not (reply.transient or reply.permanent):
            connection.reusable = False  # closing (RFC 5321 §3.8), or out of sync
        return _Verdict.NEXT_HOST

    async def _reset(self, connection: ClientConnection) -> None:
        """RSET so that the connection is between transactions again."""
        if not (connection.reusable and connection.is_open):
            return
        try:
            reply = await connection.command(
                b"RSET\r\n", self.settings.command_timeout_s, "RSET"
            )
        except ChannelError:
            return  # the connection is marked unusable already
        if not reply.positive:
            connection.reusable = False

    async def _send_content(
        self, connection: ClientConnection, dot_stuffed: bool
    ) -> None:
        """Write the content block by block; returns once all is handed over."""
        stuffer = DotStuffer() if dot_stuffed else None
        timeout_s = self.settings.data_block_timeout_s
        async with contextlib.aclosing(self.content.blocks()) as blocks:
            async for block in blocks:
                # Each block waits for the previous one to leave our buffer:
                # that is the per-block timeout of RFC 5321 §4.5.3.2.5.
                await connection.drain(timeout_s, "message content")
                octets = stuffer.stuff(block) if stuffer else block
                connection.write(octets, content=True)
        if stuffer is not None:
            await connection.drain(timeout_s, "message content")
            connection.write(stuffer.end())

    # What this server can take, and how to ask for it.

    async def _refusal(self, extensions: Extensions, label: str) -> Outcome | None:
        """FAILED for every recipient when the message can never go to this server."""
        m = self.message
        if extensions.size and m.content_size > extensions.size:
            return Outcome.failed(
                "5.3.4",
                f"message of {m.content_size} octets exceeds the limit of "
                f"{extensions.size} octets at {label}",
                label,
            )
        if (
            m.body.upper() == "8BITMIME"
            and not extensions.eightbitmime
            and not await self.content.is_ascii()
        ):
            # We do not downgrade to 7 bit (RFC 6152 §3): "conversion required
            # but not supported", RFC 3463 X.6.3.
            return Outcome.failed(
                "5.6.3", f"8-bit content, and {label} does not offer 8BITMIME", label
            )
        if m.smtputf8 and not extensions.smtputf8:
            # RFC 6531 §3.2 and RFC 6533 §3: the codes for a non-ASCII
            # address, and for non-ASCII header fields, nobody will take.
            addresses = [m.sender] + [r.address for r in m.recipients]
            if not all(address.isascii() for address in addresses):
                return Outcome.failed(
                    "5.6.7",
                    f"non-ASCII address, and {label} does not offer SMTPUTF8",
                    label,
                )
            if not await self.content.header_is_ascii():
                return Outcome.failed(
                    "5.6.9",
                    f"non-ASCII header, and {label} does not offer SMTPUTF8",
                    label,
                )
        return None

    def _mail_parameters(self, extensions: Extensions) -> list[str]:
        m = self.message
        parameters = []
        if extensions.size is not None:
            parameters.append(f"SIZE={m.content_size}")  # RFC 1870 §6
        if m.body.upper() == "8BITMIME" and extensions.eightbitmime:
            parameters.append("BODY=8BITMIME")  # RFC 6152 §2
        if m.smtputf8 and extensions.smtputf8:
            parameters.append("SMTPUTF8")  # RFC 6531 §3.4
        if extensions.dsn:  # RFC 3461 §4.3, §4.4
            if m.ret:
                parameters.append(f"RET={m.ret}")
            if m.envid:
                parameters.append(f"ENVID={m.envid}")
        return parameters


def _rcpt_parameters(recipient: RelayRecipient, extensions: Extensions) -> list[str]:
    # RFC 3461 §4.1, §4.2: only to a server that offered DSN. Without it the
    # caller sees DELIVERED and sends the "relayed" notice itself (§4.3).
    if not extensions.dsn:
        return []
    parameters = []
    if recipient.notify:
        parameters.append("NOTIFY=" + ",".join(recipient.notify))
    if recipient.orcpt:
        parameters.append(f"ORCPT={recipient.orcpt}")
    return parameters


def _recipient_text(recipient: RelayRecipient) -> str:
    return recipient.address + recipient.orcpt + "".join(recipient.notify)


def _outcome(reply: Reply, remote_host: str) -> Outcome:
    return Outcome.from_reply(reply.code, reply.enhanced, reply.text, remote_host)


def _deferral(reply: Reply, remote_host: str) -> Outcome:
    """A reply that ends the session with this server: never final by itself."""
    outcome = _outcome(reply, remote_host)
    return dataclasses.replace(
        outcome, status=Status.DEFERRED, enhanced="4" + outcome.enhanced[1:]
    )


class ContentError(OSError):
    """The queue file holds less than the message's recorded size."""


class _Content:
    """The message in its queue file, read for the checks and for sending."""

    def __init__(self, message: RelayMessage):
        self.path = message.content_path
        self.offset = message.content_offset
        self.size = message.content_size
        self._octets: bytes | None = None  # the whole content, when small
        self._is_ascii: bool | None = None
        self._header_is_ascii: bool | None = None

    def load_small(self) -> None:
        if self._octets is None and self.size <= SMALL_CONTENT_OCTETS:
            self._octets = b"".join(_read_blocks(self.path, self.offset, self.size))

    async def blocks(self) -> AsyncIterator[bytes]:
        if self._octets is not None:
            if self._octets:
                yield self._octets
            return
        loop = asyncio.get_running_loop()
        fd = await loop.run_in_executor(None, os.open, self.path, _OPEN_FLAGS)
        try:
            position, end = self.offset, self.offset + self.size
            while position < end:
                length = min(BLOCK_OCTETS, end - position)
                block = await loop.run_in_executor(None, os.pread, fd, length, position)
                if not block:
                    raise ContentError(f"{self.path} ends before its recorded size")
                position += len(block)
                yield block
        finally:
            os.close(fd)

    async def is_ascii(self) -> bool:
        if self._is_ascii is None:
            if self._octets is not None:
                self._is_ascii = self._octets.isascii()
            else:
                self._is_ascii = await asyncio.get_running_loop().run_in_executor(
                    None, _file_is_ascii, self.path, self.offset, self.size
                )
        return self._is_ascii

    async def header_is_ascii(self) -> bool:
        if self._header_is_ascii is None:
            if self._octets is not None:
                self._header_is_ascii = _header_section(self._octets).isascii()
            else:
                self._header_is_ascii = (
                    await asyncio.get_running_loop().run_in_executor(
                        None, _file_header_is_ascii, self.path, self.offset, self.size
                    )
                )
        return self._header_is_ascii


def _read_blocks(path: str, offset: int, size: int) -> Iterator[bytes]:
    """Blocks of ``size`` octets from ``offset``; blocking, for the executor."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        position, end = offset, offset + size
        while position < end:
            block = os.pread(fd, min(BLOCK_OCTETS, end - position), position)
            if not block:
                raise ContentError(f"{path} ends before its recorded size")
            position += len(block)
            yield block
    finally:
        os.close(fd)


def _file_is_ascii(path: str, offset: int, size: int) -> bool:
    return all(block.isascii() for block in _read_blocks(path, offset, size))


def _file_header_is_ascii(path: str, offset: int, size: int) -> bool:
    # The header section ends at the first empty line (RFC 5322 §2.1); the
    # last three octets of a block are carried over to find one across blocks.
    blocks = _read_blocks(path, offset, size)
    try:
        carried = None
        for block in blocks:
            if carried is None and block.startswith(b"\r\n"):
                return True  # no header fields at all
            window = (carried or b"") + block
            end = window.find(b"\r\n\r\n")
            if end >= 0:
                return window[:end].isascii()
            if not window.isascii():
                return False
            carried = window[-3:]
        return True
    finally:
        blocks.close()


def _header_section(content: bytes) -> bytes:
    if content.startswith(b"\r\n"):
        return b""
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[:end]
