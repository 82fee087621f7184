"""One SMTP connection: glue between the transport, the parser and the session.

This is one of the few places that touch a socket. It does no SMTP logic of
its own: bytes go to the parser, events to the session, and the session's
steps come back here as writes, parser mode switches, content to buffer, and
commits. Replies produced by one read are written together, which is what
PIPELINING (RFC 2920) asks of a server.

While a message is being committed the connection is "busy": further input
is buffered (reading pauses past a bound) and processed once the commit's
reply has been written, so replies always leave in command order.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
import ssl
from concurrent.futures import Executor
from dataclasses import dataclass, field

from . import replies, session as steps
from ._parser import Parser
from .delivery import Delivery
from .directory import Directory
from .loginfailures import LoginFailures
from .policy import Networks, RelayPolicy
from .events import COMMAND, CONTENT, END_OF_CHUNK, END_OF_DATA
from .ids import new_queue_id
from .logconfig import TRACE
from .session import ListenerPolicy, Session, SessionSettings
from .spool import MessageBuffer

log = logging.getLogger("mailfast.smtp")

MAX_UNPROCESSED_OCTETS = 65_536  # pause reading while a commit holds more than this
# Replies gathered before they are handed to the transport: a client that
# pipelines thousands of commands gets its answers in pieces, so that one
# that does not read them is noticed (pause_writing) before they pile up.
MAX_REPLIES_PER_WRITE = 64
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(slots=True)
class WorkerContext:
    """What all connections of one worker share."""

    settings: SessionSettings
    directory: Directory
    relay_policy: RelayPolicy
    delivery: Delivery
    max_command_octets: int
    max_data_line_octets: int
    command_timeout_s: float
    data_timeout_s: float
    spool_dir: str
    memory_buffer_octets: int
    connections: set
    tls_context: ssl.SSLContext | None = None
    tls_handshake_timeout_s: float = 30.0
    users: object | None = None  # UserDatabase: verify(), may_send_as()
    auth_executor: Executor | None = None  # password hashing, off the loop
    login_failures: LoginFailures | None = None
    plaintext_auth_on_loopback: bool = False
    sender_must_match: bool = True
    limiter: object | None = None  # ConnectionLimiter: admit(), release()
    per_ip_exempt: Networks = Networks(())
    extra: dict = field(default_factory=dict)


class SMTPConnection(asyncio.Protocol):
    def __init__(
        self, context: WorkerContext, listener: ListenerPolicy = ListenerPolicy()
    ):
        self.context = context
        self.listener = listener
        self.admitted = False  # counted by the connection limiter
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.parser = Parser(context.max_command_octets, context.max_data_line_octets)
        self.message: MessageBuffer | None = None
        self.client_ip = ""
        self.busy = False  # a commit, handshake or password check is in flight
        self.paused = False  # reading paused: too much input while busy
        self.output_blocked = False  # the client is not reading our replies
        self.input_ended = False  # the client half-closed: close once answered
        self._loop = asyncio.get_running_loop()
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._background: asyncio.Task | None = None

    # Transport callbacks.

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "unknown"
        context = self.context
        if context.limiter is not None:
            refusal = context.limiter.admit(
                self.client_ip, self.client_ip not in context.per_ip_exempt
            )
            if refusal is not None:
                log.warning(
                    "connection from [%s] refused: %s limit", self.client_ip, refusal
                )
                transport.write(_LIMIT_REPLIES[refusal])
                transport.close()
                return
            self.admitted = True
        loopback = self.client_ip.startswith("127.") or self.client_ip == "::1"
        self.session = Session(
            context.settings,
            context.directory,
            self.client_ip,
            relay_permitted=context.relay_policy.permits(self.client_ip),
            listener=self.listener,
            plaintext_auth_allowed=context.plaintext_auth_on_loopback and loopback,
            sender_allowed=(
                context.users.may_send_as
                if context.users is not None and context.sender_must_match
                else None
            ),
        )
        context.connections.add(self)
        log.debug("connect from [%s]", self.client_ip)
        transport.write(self.session.greeting())
        self._extend_deadline()

    def data_received(self, data: bytes) -> None:
        if self.session is None:
            return  # refused at connect; the transport is closing
        self.parser.feed(data)
        # Deadlines are per record, not per read: a client sending one octet
        # at a time must still finish a command line within the command
        # timeout, and each line of content within the data timeout.
        if self.session.in_content and b"\n" in data:
            self._extend_deadline()
        if not self.busy and not self.output_blocked:
            self._process()
        elif self.parser.buffered > MAX_UNPROCESSED_OCTETS and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        """Our replies pile up unread: read and answer nothing more for now.

        Otherwise a client that pipelines commands and never reads would
        make us hold every reply in memory, without bound.
        """
        self.output_blocked = True
        if not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.output_blocked = False
        if not self.busy and not self.transport.is_closing():
            self._process()
            self._close_if_all_answered()

    def eof_received(self) -> bool:
        """The client will send nothing more; answer what it sent, then close.

        Batch senders write a whole transaction and QUIT, then shut down
        their side. Closing at once would drop the 250 of a commit still
        running, and the client would send the message again.
        """
        self.input_ended = True
        if self.session is None or self.transport.get_extra_info("sslcontext"):
            return False  # refused; or TLS, where a half-close is not kept
        self._close_if_all_answered()
        return True

    def _close_if_all_answered(self) -> None:
        """After a half-close: close once every command read has its reply."""
        if self.input_ended and not self.busy and not self.output_blocked:
            self.transport.close()  # after the replies already written

    def connection_lost(self, exc: Exception | None) -> None:
        self.context.connections.discard(self)
        if self.admitted:
            self.admitted = False
            self.context.limiter.release(self.client_ip)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.message is not None and not self.busy:
            self.message.discard()
            self.message = None
        log.debug("disconnect from [%s]", self.client_ip)

    # Event processing.

    def _process(self) -> None:
        session = self.session
        parser = self.parser
        out: list[bytes] = []
        tracing = log.isEnabledFor(TRACE)
        progressed = False  # a command or the end of a message was handled
        while not self.transport.is_closing() and not self.output_blocked:
            if len(out) >= MAX_REPLIES_PER_WRITE:
                self._write(out)  # may call pause_writing at once
                out = []
                continue
            event = parser.next_event()
            if event is None:
                break
            progressed = progressed or event[0] != CONTENT
            if tracing and event[0] == COMMAND:
                self._trace_command(event)
            envelope = session.envelope
            if event[0] == END_OF_CHUNK and session.chunk_is_last:
                event = (END_OF_CHUNK, parser.finish_chunks(), event[2])
            action, payload = session.receive(event)
            if action == steps.STORE:
                self.message.write(payload)
            elif action == steps.REPLY:
                out.append(payload)
                if payload[0] in b"45":
                    self._log_refusal(event, envelope, payload)
            elif action == steps.START_DATA:
                out.append(payload)
                self.message = self._new_message()
                parser.start_data()
            elif action == steps.START_CHUNK:
                size, first = payload
                if first:
                    self.message = self._new_message()
                parser.start_chunk(size, first)
            elif action == steps.COMMIT:
                self._write(out)
                self._start_commit()
                return
            elif action == steps.EXPECT_LINE:
                out.append(payload)
                parser.expect_raw_line()
            elif action == steps.AUTHENTICATE:
                self._write(out)
                self._start_background(self._authenticate(*payload))
                return
            elif action == steps.START_TLS:
                out.append(payload)
                self._write(out)
                self._start_background(self._start_tls())
                return
            elif action == steps.CLOSE:
                out.append(payload)
                if payload[0] in b"45":
                    self._log_refusal(event, envelope, payload)
                self._write(out)
                self.transport.close()
                return
        self._write(out)
        if progressed:
            self._extend_deadline()
        if self.paused and not self.output_blocked and not self.busy:
            self.paused = False
            self.transport.resume_reading()

    def _write(self, out: list[bytes]) -> None:
        if out:
            if log.isEnabledFor(TRACE):
                log.log(TRACE, "[%s] < %r", self.client_ip, b"".join(out))
            self.transport.write(b"".join(out))

    def _new_message(self) -> MessageBuffer:
        if self.message is not None:
            self.message.discard()
        return MessageBuffer(self.context.spool_dir, self.context.memory_buffer_octets)

    # Commit.

    def _start_commit(self) -> None:
        self._start_background(self._commit())

    def _start_background(self, work) -> None:
        """Run ``work`` with input processing paused until it resumes it."""
        self.busy = True
        self._background = self._loop.create_task(work)

    def _resume(self, reply: bytes | None) -> None:
        """Background work is done: send its reply and go on with the input."""
        self.busy = False
        if self.transport.is_closing():
            return
        self._extend_deadline()
        if reply is not None:
            self._write([reply])
        self._process()
        self._close_if_all_answered()

    # TLS and authentication.

    async def _start_tls(self) -> None:
        # RFC 3207 §4.2, and the STARTTLS command injection class of 2011:
        # whatever the client sent after STARTTLS in plain text is dropped.
        self.parser = Parser(
            self.context.max_command_octets, self.context.max_data_line_octets
        )
        try:
            transport = await self._loop.start_tls(
                self.transport,
                self,
                self.context.tls_context,
                server_side=True,
                ssl_handshake_timeout=self.context.tls_handshake_timeout_s,
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            log.info("TLS handshake failed from [%s]: %s", self.client_ip, exc)
            self.busy = False
            if not self.transport.is_closing():
                self.transport.abort()
            return
        self.transport = transport
        self.session.tls_started()
        log.debug(
            "TLS established from [%s]: %s %s",
            self.client_ip,
            transport.get_extra_info("ssl_object").version(),
            transport.get_extra_info("cipher")[0],
        )
        self._resume(None)

    async def _authenticate(self, login: str, password: str) -> None:
        context = self.context
        failures = context.login_failures
        if failures is not None and failures.blocked(self.client_ip):
            log.warning(
                "AUTH refused from [%s]: too many failed logins", self.client_ip
            )
            self.session.auth_unavailable()
            self.busy = False
            self.transport.write(replies.AUTH_TOO_MANY_FAILURES)
            self.transport.close()
            return
        try:
            if context.users is None:
                raise OSError("no users file")
            user = await self._loop.run_in_executor(
                context.auth_executor, context.users.verify, login, password
            )
        except Exception as exc:  # never the password: not in exc, not in logs
            log.error(
                "AUTH from [%s] could not be checked: %s",
                self.client_ip,
                type(exc).__name__,
            )
            self._resume(self.session.auth_unavailable())
            return
        if user is None:
            if failures is not None:
                failures.record(self.client_ip)
            log.warning("AUTH failed from [%s] login=%r", self.client_ip, login[:64])
        else:
            log.info("AUTH from [%s] user=%s", self.client_ip, user)
        action, reply = self.session.authenticated(user)
        if action == steps.CLOSE:  # the error budget is spent
            self.busy = False
            self.transport.write(reply)
            self.transport.close()
            return
        self._resume(reply)

    def _trace_command(self, event: tuple) -> None:
        log.log(
            TRACE, "[%s] > %r %r", self.client_ip, event[1], _loggable_argument(event)
        )

    async def _commit(self) -> None:
        session = self.session
        envelope = session.envelope
        message = self.message
        self.message = None
        queue_id = new_queue_id()
        started = time.monotonic()
        try:
            if message.error is not None:
                raise OSError(message.error.errno, f"spool: {message.error}")
            await self.context.delivery.accept(envelope, message, queue_id)
        except Exception as exc:  # any failure: the client keeps the message
            full = isinstance(exc, OSError) and exc.errno in _NO_SPACE
            reply = session.commit_failed(
                replies.NO_STORAGE if full else replies.LOCAL_ERROR
            )
            if not isinstance(exc, OSError):
                log.exception("%s: unexpected error while committing", queue_id)
            log.error(
                "%s: from=<%s> to=%s size=%d client=[%s] result=tempfail error=%s",
                queue_id,
                envelope.sender,
                _recipients(envelope),
                message.size,
                self.client_ip,
                exc,
            )
        else:
            reply = session.committed(queue_id)
            log.info(
                "%s: from=<%s> to=%s size=%d client=[%s]%s result=%s delay=%.3fs",
                queue_id,
                envelope.sender,
                _recipients(envelope),
                message.size,
                self.client_ip,
                f" user={envelope.user}" if envelope.user else "",
                _result(envelope),
                time.monotonic() - started,
            )
        finally:
            message.discard()
        # If the client left after its final dot, the message stands anyway.
        self._resume(reply)

    # Timeouts and shutdown.

    def _extend_deadline(self) -> None:
        session = self.session
        timeout = (
            self.context.data_timeout_s
            if session is not None and session.in_content
            else self.context.command_timeout_s
        )
        self._deadline = self._loop.time() + timeout
        if self._timer is not None and self._timer.when() > self._deadline:
            # The deadline moved earlier (a shorter timeout now applies): the
            # lazily re-armed timer would fire too late.
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            # Closed with replies still unsent: a client that never reads
            # must not hold the connection, and its memory, past the timeout.
            if self.transport.get_write_buffer_size():
                if self._loop.time() >= self._deadline:
                    log.info("dropping [%s]: replies left unread", self.client_ip)
                    self.transport.abort()
                else:
                    self._timer = self._loop.call_at(
                        self._deadline, self._check_deadline
                    )
            return
        if self.busy or self._loop.time() < self._deadline:
            # Re-arming lazily costs one timer per timeout period instead of
            # one cancel and one new timer per read.
            self._timer = self._loop.call_at(
                max(self._deadline, self._loop.time() + 1.0), self._check_deadline
            )
            return
        log.info(
            "timeout from [%s] in state %s", self.client_ip, self.session.state.value
        )
        self.transport.write(self.session.timed_out())
        self.transport.close()
        self._extend_deadline()  # to drop it if the 421 cannot be sent either

    def shut_down(self) -> None:
        """End the session with 421 unless a commit is in flight."""
        if self.busy or self.transport.is_closing():
            return
        log.info("closing session from [%s]: shutting down", self.client_ip)
        self.transport.write(self.session.shutting_down())
        self.transport.close()

    def _log_refusal(self, event: tuple, envelope, reply: bytes) -> None:
        what = event[1].decode("ascii", "replace") if event[0] == COMMAND else ""
        detail = ""
        if event[0] == COMMAND:
            argument = _loggable_argument(event)
            detail = " " + repr(argument[:120])[2:-1] if argument else ""
        elif event[0] in (END_OF_DATA, END_OF_CHUNK):
            what = "end of data"
            if envelope is not None:
                detail = f" from=<{envelope.sender}> to={_recipients(envelope)}"
        else:
            what = "bad command"
        log.info(
            "NOQUEUE: reject: %s%s client=[%s] helo=%r: %s",
            what,
            detail,
            self.client_ip,
            self.session.helo,
            reply.decode("ascii", "replace").rstrip(),
        )


def _loggable_argument(event: tuple) -> bytes:
    """A command's argument as logs may show it: AUTH data is a password in
    base64, so only the mechanism of AUTH and nothing of a response line."""
    if event[1] == b"AUTH":
        return event[2].split(b" ", 1)[0] + b" [redacted]"
    if event[1] == b"" and event[2]:
        return b"[redacted]"
    return event[2][:200]


_LIMIT_REPLIES = {
    "total": replies.TOO_MANY_CONNECTIONS,
    "per-ip": replies.TOO_MANY_FROM_ADDRESS,
    "rate": replies.CONNECTION_RATE,
}


def _result(envelope) -> str:
    """What acceptance did: delivered to Maildirs, queued for relay, or both."""
    remote = any(recipient.is_remote for recipient in envelope.recipients)
    local = any(recipient.targets for recipient in envelope.recipients)
    if remote:
        return "delivered,queued" if local else "queued"
    return "delivered"


def _recipients(envelope) -> str:
    return ",".join(f"<{recipient.mailbox}>" for recipient in envelope.recipients)
