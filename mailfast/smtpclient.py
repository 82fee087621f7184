"""The wire side of the outbound SMTP client: one connection to one server.

Theory of operation
-------------------
Two layers. The lower one does no I/O: ``ReplyParser`` turns received octets
into ``Reply`` values, ``parse_ehlo`` turns an EHLO reply into ``Extensions``,
``mail_command``/``rcpt_command`` build command lines and ``DotStuffer``
applies the transparency rule to content that arrives in blocks. None of them
touches a socket, a file, a clock or a logger.

The upper one is ``ClientConnection``, an ``asyncio.Protocol``. Received
octets go to the parser and the replies queue up in arrival order; a
coroutine that wants the next reply waits for it with the timeout the RFC
gives that stage (RFC 5321 §4.5.3.2). Replies are matched to commands purely
by order, which is all PIPELINING needs (RFC 2920 §3.1): write a group of
commands at once, then read as many replies.

Two kinds of failure, kept apart on purpose:
  * A reply, whatever its code, is returned and never raised: what a code
    means for the message is the caller's decision.
  * A failure of the channel (refused, reset, timed out, a reply that does
    not parse, a TLS handshake that fails) raises a ``ChannelError``. It
    carries an RFC 3463 code and our own text, and the connection is dead
    afterwards: nothing received on it later can be matched to a command.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from dataclasses import dataclass

from .logconfig import TRACE

log = logging.getLogger("mailfast.relay")

# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; real servers send
# longer ones, so we accept eight times that before calling it a protocol error.
MAX_REPLY_LINE_OCTETS = 4096
# An EHLO reply lists one keyword per line; nothing legitimate comes near this.
MAX_REPLY_LINES = 200
# After a failure, or when closing an idle connection, the QUIT reply is only a
# courtesy (RFC 5321 §4.1.1.10): never wait long for it.
QUIT_TIMEOUT_S = 5.0
# Closing a TLS session waits for the server's close_notify; past this we abort.
CLOSE_TIMEOUT_S = 2.0


# Values without I/O.


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply (RFC 5321 §4.2), possibly of several lines."""

    code: int
    enhanced: str  # RFC 3463 code from the first line, "" when none was sent
    lines: tuple[str, ...]  # text of each line, code and enhanced code removed

    @property
    def text(self) -> str:
        return " ".join(line for line in self.lines if line)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}".replace("  ", " ").strip()


class ReplyFormatError(ValueError):
    """The server sent something that is not an SMTP reply.

    ``replies`` holds the complete replies that came before the bad line:
    they are still valid, and one of them may explain the rest.
    """

    def __init__(self, reason: str, replies: list[Reply] | None = None):
        super().__init__(reason)
        self.replies = replies or []


class ReplyParser:
    """Octets in, ``Reply`` values out; bare LF is accepted as a line end."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._code = 0  # code of the reply being assembled, 0 between replies
        self._lines: list[str] = []

    @property
    def pending(self) -> bool:
        """Whether octets of an incomplete reply are held."""
        return bool(self._buffer) or bool(self._lines)

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies: list[Reply] = []
        start = 0
        try:
            while (end := self._buffer.find(b"\n", start)) >= 0:
                line = bytes(self._buffer[start:end])
                start = end + 1
                reply = self._line(line[:-1] if line.endswith(b"\r") else line)
                if reply is not None:
                    replies.append(reply)
            if len(self._buffer) - start > MAX_REPLY_LINE_OCTETS:
                raise ReplyFormatError("reply line too long")
        except ReplyFormatError as exc:
            raise ReplyFormatError(str(exc), replies) from None
        del self._buffer[:start]
        return replies

    def _line(self, line: bytes) -> Reply | None:
        if len(line) > MAX_REPLY_LINE_OCTETS:
            raise ReplyFormatError("reply line too long")
        # RFC 5321 §4.2: three digits, then a space, a hyphen (more lines
        # follow) or nothing; the first digit is 2 to 5 for an SMTP reply.
        if (
            len(line) < 3
            or not line[:3].isdigit()
            or line[:1] not in b"2345"
            or (len(line) > 3 and line[3:4] not in b" -")
        ):
            raise ReplyFormatError("malformed reply line")
        code = int(line[:3])
        if self._lines and code != self._code:
            # §4.2.1: every line of a multiline reply carries the same code.
            raise ReplyFormatError("reply code changed within a multiline reply")
        if len(self._lines) >= MAX_REPLY_LINES:
            raise ReplyFormatError("too many reply lines")
        self._code = code
        self._lines.append(_printable(line[4:].decode("utf-8", "replace")))
        if line[3:4] == b"-":
            return None
        lines, self._lines, self._code = self._lines, [], 0
        return _reply(code, lines)


# Control characters a remote server put in its reply, a bare CR above all,
# become spaces: the text goes into logs, the queue and bounces, which are
# stored and relayed, and must not carry a line end of its own.
_CONTROLS = {code: " " for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}


def _printable(text: str) -> str:
    return text.translate(_CONTROLS)


def _reply(code: int, lines: list[str]) -> Reply:
    # RFC 2034 §4 puts the enhanced code at the start of every line. It is
    # kept only when its class agrees with the reply code: an outcome is
    # decided by the code, and a "550 4.2.2" must not read as a deferral.
    enhanced = ""
    first, _, _ = lines[0].partition(" ")
    if _is_enhanced(first) and first[0] == str(code)[0]:
        enhanced = first
    texts = []
    for line in lines:
        head, _, rest = line.partition(" ")
        texts.append(rest if _is_enhanced(head) else line)
    return Reply(code, enhanced, tuple(texts))


def _is_enhanced(word: str) -> bool:
    # RFC 3463 §2: class "." subject "." detail; subject and detail 1-3 digits.
    parts = word.split(".")
    return (
        len(parts) == 3
        and parts[0] in ("2", "4", "5")
        and all(part.isdigit() and 1 <= len(part) <= 3 for part in parts[1:])
    )


@dataclass(frozen=True, slots=True)
class Extensions:
    """What a server offered in its EHLO reply (RFC 5321 §4.1.1.1)."""

    pipelining: bool = False  # RFC 2920
    size: int | None = None  # RFC 1870: None when not offered, 0 when no limit
    eightbitmime: bool = False  # RFC 6152
    smtputf8: bool = False  # RFC 6531
    dsn: bool = False  # RFC 3461
    chunking: bool = False  # RFC 3030
    starttls: bool = False  # RFC 3207


def parse_ehlo(reply: Reply) -> Extensions:
    """The extensions named in a positive EHLO reply; unknown ones are ignored."""
    offered: dict[str, str] = {}
    for line in reply.lines[1:]:  # the first line is the server's name
        keyword, _, argument = line.strip().partition(" ")
        offered[keyword.upper()] = argument.strip()
    size: int | None = None
    if "SIZE" in offered:
        # RFC 1870 §4: no number, or zero, means the server states no limit.
        limit = offered["SIZE"].split(" ", 1)[0]
        size = int(limit) if limit.isdigit() else 0
    return Extensions(
        pipelining="PIPELINING" in offered,
        size=size,
        eightbitmime="8BITMIME" in offered,
        smtputf8="SMTPUTF8" in offered,
        dsn="DSN" in offered,
        chunking="CHUNKING" in offered,
        starttls="STARTTLS" in offered,
    )


def mail_command(reverse_path: str, parameters: list[str]) -> bytes:
    """``MAIL FROM:<reverse_path> params`` (RFC 5321 §4.1.1.2), CRLF included."""
    return _path_command("MAIL FROM", reverse_path, parameters)


def rcpt_command(forward_path: str, parameters: list[str]) -> bytes:
    """``RCPT TO:<forward_path> params`` (RFC 5321 §4.1.1.3), CRLF included."""
    return _path_command("RCPT TO", forward_path, parameters)


def _path_command(verb: str, path: str, parameters: list[str]) -> bytes:
    line = f"{verb}:<{path}>" + "".join(f" {p}" for p in parameters)
    # UTF-8 is only ever needed for SMTPUTF8 paths (RFC 6531 §3.3); the caller
    # checks that the server offered it before sending any.
    return line.encode("utf-8") + b"\r\n"


def has_line_break(text: str) -> bool:
    """Whether a value would break out of its command line (command injection)."""
    return "\r" in text or "\n" in text or "\0" in text


class DotStuffer:
    """RFC 5321 §4.5.2 transparency for content that is sent in blocks.

    A dot that starts a line gets a second one. A line starts after every LF,
    not only after CRLF: the content should hold no bare LF, but a server that
    wrongly ends data at ``LF . CRLF`` would otherwise let such a line end the
    message early and run the rest as commands (SMTP smuggling).
    """

    def __init__(self) -> None:
        self._at_line_start = True
        self._tail = b""  # last two octets sent

    def stuff(self, block: bytes) -> bytes:
        if not block:
            return block
        stuffed = block.replace(b"\n.", b"\n..")
        if self._at_line_start and block[:1] == b".":
            stuffed = b"." + stuffed
        self._at_line_start = block.endswith(b"\n")
        self._tail = (self._tail + block[-2:])[-2:]
        return stuffed

    def end(self) -> bytes:
        """The end-of-data mark, with the CRLF the last line may be missing."""
        if self._tail in (b"", b"\r\n"):
            return b".\r\n"
        return b"\r\n.\r\n"


# Channel failures.


class ChannelError(Exception):
    """The connection cannot be used any more; ``enhanced`` classifies why."""

    def __init__(self, enhanced: str, reason: str):
        super().__init__(reason)
        self.enhanced = enhanced  # RFC 3463, always a 4.x.x: the next try may work
        self.reason = reason  # our own words, never text the server sent


class ConnectError(ChannelError):
    """No TCP connection could be made (RFC 3463 X.4.1: no answer from host)."""


class ConnectionLostError(ChannelError):
    """The server went away or went silent mid-session (X.4.2: bad connection)."""


class ProtocolError(ChannelError):
    """The server's octets were not SMTP (X.5.0: other protocol status)."""


class TLSHandshakeError(ChannelError):
    """STARTTLS was accepted but no TLS session came of it (X.7.5)."""


# The connection.


class ClientConnection(asyncio.Protocol):
    """One SMTP client connection; replies are read in command order.

    ``reusable`` is the caller's promise that the session is between
    transactions and in sync: it is cleared whenever that stops being true.
    """

    def __init__(self, host_name: str, address: str, port: int):
        self.host_name = host_name
        self.address = address
        self.port = port
        self.label = f"{host_name}[{address}]:{port}"  # for outcomes and logs
        self.extensions = Extensions()
        self.tls = False
        self.reusable = True
        self.idle_timer: asyncio.TimerHandle | None = None  # owned by the pool
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = ReplyParser()
        self._replies: collections.deque[Reply] = collections.deque()
        self._failure: ChannelError | None = None
        self._reply_waiter: asyncio.Future | None = None
        self._drain_waiter: asyncio.Future | None = None
        self._write_paused = False
        self._closed = self._loop.create_future()
        self._tracing = log.isEnabledFor(TRACE)

    @classmethod
    async def connect(
        cls, host_name: str, address: str, port: int, timeout_s: float
    ) -> ClientConnection:
        """Open the TCP connection; the greeting is left for the caller to read."""
        connection = cls(host_name, address, port)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                await loop.create_connection(lambda: connection, address, port)
        except TimeoutError:
            raise ConnectError(
                "4.4.1", f"connect to {connection.label}: timed out"
            ) from None
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise ConnectError(
                "4.4.1", f"connect to {connection.label}: {why}"
            ) from None
        return connection

    @property
    def is_open(self) -> bool:
        return self._failure is None and not self._closed.done()

    # Protocol callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        try:
            replies = self._parser.feed(data)
        except ReplyFormatError as exc:
            self._received(exc.replies)
            self._fail(ProtocolError("4.5.0", f"{self.label} sent a malformed reply"))
            self._transport.abort()
            return
        self._received(replies)

    def _received(self, replies: list[Reply]) -> None:
        if self._tracing:
            for reply in replies:
                log.log(TRACE, "%s < %s", self.label, reply)
        self._replies.extend(replies)
        self._wake(self._reply_waiter)

    def eof_received(self) -> bool:
        return False  # close our side as well

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLostError("4.4.2", f"lost connection with {self.label}"))
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake(self._drain_waiter)

    def _fail(self, failure: ChannelError) -> None:
        self.reusable = False
        if self._failure is None:
            self._failure = failure
        self._wake(self._reply_waiter)
        self._wake(self._drain_waiter)

    @staticmethod
    def _wake(waiter: asyncio.Future | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Reading and writing.

    def write(self, data: bytes, content: bool = False) -> None:
        """Queue octets for sending; ``content`` ones are never traced."""
        if self._failure is not None:
            raise self._failure
        if self._tracing and not content:
            log.log(TRACE, "%s > %r", self.label, data[:200])
        self._transport.write(data)

    async def drain(self, timeout_s: float, stage: str) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        if self._write_paused and self._failure is None:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._wait(self._drain_waiter, timeout_s, stage)
            finally:
                self._drain_waiter = None
        if self._failure is not None:
            raise self._failure

    async def read_reply(self, timeout_s: float, stage: str) -> Reply:
        """The next reply; raises ``ChannelError`` when none can come."""
        if not self._replies and self._failure is None:
            self._reply_waiter = self._loop.create_future()
            try:
                await self._wait(self._reply_waiter, timeout_s, stage)
            finally:
                self._reply_waiter = None
        # A reply that arrived before the connection closed is still valid:
        # a 421 followed by the close (RFC 5321 §3.8) is the usual case.
        if self._replies:
            return self._replies.popleft()
        raise self._failure  # type: ignore[misc]

    async def _wait(self, waiter: asyncio.Future, timeout_s: float, stage: str) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            self._fail(
                ConnectionLostError(
                    "4.4.2", f"timed out waiting for {self.label} ({stage})"
                )
            )
            self.abort()

    async def command(self, line: bytes, timeout_s: float, stage: str) -> Reply:
        self.write(line)
        return await self.read_reply(timeout_s, stage)

    # Session steps.

    async def hello(self, helo_name: str, timeout_s: float) -> Reply:
        """EHLO, or HELO when EHLO is refused; sets ``extensions``."""
        reply = await self.command(f"EHLO {helo_name}\r\n".encode(), timeout_s, "EHLO")
        self.extensions = parse_ehlo(reply) if reply.positive else Extensions()
        if reply.permanent:
            # RFC 5321 §3.2: a server that rejects EHLO may still know HELO,
            # and then offers no extensions at all.
            reply = await self.command(
                f"HELO {helo_name}\r\n".encode(), timeout_s, "HELO"
            )
        return reply

    async def starttls(self, context: ssl.SSLContext, timeout_s: float) -> Reply:
        """STARTTLS (RFC 3207); on 220 the session continues over TLS.

        Returns the reply to STARTTLS; raises ``TLSHandshakeError`` when the
        server said yes but the handshake failed. After a success the caller
        must send EHLO again: all it knew of the server is void (§4.2).
        """
        reply = await self.command(b"STARTTLS\r\n", timeout_s, "STARTTLS")
        if reply.code != 220:
            return reply
        if self._replies or self._parser.pending or self._failure is not None:
            # Octets that followed the 220 in the clear would be read as if
            # they came over TLS: a man in the middle could inject replies.
            # (Not TLS either, so as far as we care the handshake failed.)
            self.abort()
            raise TLSHandshakeError(
                "4.7.5", f"{self.label} sent octets in the clear after STARTTLS"
            )
        try:
            async with asyncio.timeout(timeout_s):
                transport = await self._loop.start_tls(
                    self._transport,
                    self,
                    context,
                    server_hostname=self.host_name or None,
                    ssl_handshake_timeout=timeout_s,
                )
        except (OSError, TimeoutError, EOFError) as exc:
            # ssl.SSLError is an OSError; the reason is our own classification.
            why = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            self._fail(
                TLSHandshakeError("4.7.5", f"TLS handshake with {self.label}: {why}")
            )
            self.abort()
            raise self._failure from None  # type: ignore[misc]
        self._transport = transport
        self.tls = True
        self.extensions = Extensions()
        return reply

    async def quit(self) -> None:
        """QUIT, a short wait for the 221, and close; never raises."""
        if self.is_open:
            try:
                await self.command(b"QUIT\r\n", QUIT_TIMEOUT_S, "QUIT")
            except ChannelError:
                pass
        await self.close()

    async def close(self) -> None:
        """Close and wait until the transport is gone."""
        self.reusable = False
        if self._transport is None:
            return
        self._transport.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(self._closed)
        except TimeoutError:
            self._transport.abort()

    def abort(self) -> None:
        """Drop the connection at once: no QUIT, no TLS close_notify."""
        self.reusable = False
        if self._transport is not None:
            self._transport.abort()
