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
import logging
import time
from dataclasses import dataclass

from . import replies, session as steps
from ._parser import Parser
from .delivery import Delivery
from .directory import Directory
from .policy import RelayPolicy
from .events import COMMAND, END_OF_CHUNK, END_OF_DATA
from .ids import new_queue_id
from .logconfig import TRACE
from .session import Session, SessionSettings
from .spool import MessageBuffer

log = logging.getLogger("mailfast.smtp")

MAX_UNPROCESSED_OCTETS = 65_536  # pause reading while a commit holds more than this


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


class SMTPConnection(asyncio.Protocol):
    def __init__(self, context: WorkerContext):
        self.context = context
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.parser = Parser(context.max_command_octets, context.max_data_line_octets)
        self.message: MessageBuffer | None = None
        self.client_ip = ""
        self.busy = False  # a commit is in flight
        self.paused = False
        self._loop = asyncio.get_running_loop()
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._commit_task: asyncio.Task | None = None

    # Transport callbacks.

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "unknown"
        self.session = Session(
            self.context.settings,
            self.context.directory,
            self.client_ip,
            relay_permitted=self.context.relay_policy.permits(self.client_ip),
        )
        self.context.connections.add(self)
        log.debug("connect from [%s]", self.client_ip)
        transport.write(self.session.greeting())
        self._extend_deadline()

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        self._extend_deadline()
        if not self.busy:
            self._process()
        elif self.parser.buffered > MAX_UNPROCESSED_OCTETS and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.context.connections.discard(self)
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
        while not self.transport.is_closing():
            event = parser.next_event()
            if event is None:
                break
            if tracing and event[0] == COMMAND:
                log.log(TRACE, "[%s] > %r %r", self.client_ip, event[1], event[2][:200])
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
            elif action == steps.CLOSE:
                out.append(payload)
                if payload[0] in b"45":
                    self._log_refusal(event, envelope, payload)
                self._write(out)
                self.transport.close()
                return
        self._write(out)
        if self.paused:
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
        self.busy = True
        self._commit_task = self._loop.create_task(self._commit())

    async def _commit(self) -> None:
        session = self.session
        envelope = session.envelope
        message = self.message
        self.message = None
        queue_id = new_queue_id()
        started = time.monotonic()
        try:
            await self.context.delivery.accept(envelope, message, queue_id)
        except Exception as exc:  # any failure: the client keeps the message
            reply = session.commit_failed(replies.LOCAL_ERROR)
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
                "%s: from=<%s> to=%s size=%d client=[%s] result=delivered delay=%.3fs",
                queue_id,
                envelope.sender,
                _recipients(envelope),
                message.size,
                self.client_ip,
                time.monotonic() - started,
            )
        finally:
            message.discard()
            self.busy = False
        if self.transport.is_closing():
            return  # the client left after its final dot; the message stands
        self._extend_deadline()
        self._write([reply])
        self._process()

    # Timeouts and shutdown.

    def _extend_deadline(self) -> None:
        session = self.session
        timeout = (
            self.context.data_timeout_s
            if session is not None and session.in_content
            else self.context.command_timeout_s
        )
        self._deadline = self._loop.time() + timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.busy or self._loop.time() < self._deadline:
            # Re-arming lazily costs one timer per timeout period instead of
            # one cancel and one new timer per read.
            self._timer = self._loop.call_at(
                max(self._deadline, self._loop.time() + 1.0), self._check_deadline
            )
            return
        log.info("timeout from [%s] in state %s", self.client_ip, self.session.state.value)
        self.transport.write(self.session.timed_out())
        self.transport.close()

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
            detail = " " + repr(event[2][:120])[2:-1] if event[2] else ""
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


def _recipients(envelope) -> str:
    return ",".join(f"<{recipient.mailbox}>" for recipient in envelope.recipients)
