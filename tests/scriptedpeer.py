"""A real SMTP server on loopback whose replies a test scripts, for SMTP clients.

The peer listens on a real socket, speaks enough of RFC 5321 for a client to
deliver through it (EHLO/HELO, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT,
STARTTLS), and records everything it received. Every reply has a sensible
default; ``replies`` overrides any of them, keyed by what is being answered:

    "GREETING"              the banner sent on connect
    "EHLO", "HELO"          the reply to either greeting command
    "MAIL", "MAIL <path>"   the reply to MAIL FROM (a path key wins over "MAIL")
    "RCPT", "RCPT <path>"   the reply to RCPT TO, e.g. "RCPT bob@x.test"
    "DATA"                  the reply to DATA (354 by default)
    "DATA_END"              the reply after the final dot or the last BDAT chunk
    "BDAT"                  the reply to a BDAT chunk that is not the last
    "RSET", "NOOP", "QUIT", "STARTTLS"

A value is one of:
  * a reply, sent as given plus CRLF; "\\n" separates the lines of a multiline
    reply ("250-first\\n250 last"). Its code drives the peer's state: a 2xx
    to RCPT accepts the recipient, a 354 to DATA starts reading content.
  * ``SILENT``: never answer (the client's timeouts fire); the peer goes on
    reading, and a command that follows is answered in its turn.
  * ``HANGUP``: close the connection instead of answering. With "DATA_END"
    this is the "drop the connection after the final dot" mode; the
    transaction is still recorded, since the content was received.
  * a list of the above, used one per occurrence; once it is used up the
    default applies again.

``delays`` (same keys, seconds) holds a reply back, so that connections
overlap or timeouts fire. ``extensions`` are the EHLO keywords offered;
STARTTLS is added when ``tls_context`` (a server-side ``ssl.SSLContext``) is
given or ``tls_garbage`` is set, until TLS is on. With ``tls_garbage`` the
peer answers STARTTLS with 220 and then sends octets that are not TLS, as a
broken TLS stack would. ``max_recipients`` answers 452 4.5.3 past that many
recipients in one transaction.

What the peer saw is in ``transactions`` (envelope, data unstuffed and
exactly as the client meant it, TLS or not), ``connections`` (every command
line of every connection), ``max_concurrent`` and ``pipelining_violations``
(commands that arrived before the reply to an earlier one although PIPELINING
was not offered, or that followed a command RFC 2920 §3.1 says ends a group).
``errors`` collects exceptions the peer did not expect: a test may assert
that it stayed empty.

In a test's own event loop::

    async with ScriptedPeer(replies={"RCPT bob@x.test": "550 5.1.1 no"}) as peer:
        ...deliver to peer.host, peer.port...
    peer.transactions[0].data

For a client in another process, in a thread with its own loop::

    with ScriptedPeer(extensions=["PIPELINING"]).in_thread() as peer:
        ...start mailfast pointing at peer.port...
        transactions = peer.wait_transactions(1, timeout_s=10)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

SILENT = "<silent>"
HANGUP = "<hangup>"

DEFAULT_EXTENSIONS = (
    "PIPELINING",
    "SIZE 52428800",
    "8BITMIME",
    "SMTPUTF8",
    "DSN",
    "ENHANCEDSTATUSCODES",
)
# RFC 2920 §3.1: these may only be the last command of a pipelined group.
_ENDS_GROUP = {"EHLO", "HELO", "DATA", "QUIT", "NOOP", "STARTTLS", "VRFY", "EXPN"}
_PATH = re.compile(r"^(?:FROM|TO):\s*<([^>]*)>\s*(.*)$", re.IGNORECASE | re.DOTALL)
_NOT_TLS = b"this is not a TLS record\r\n" * 8


@dataclass
class Transaction:
    """One message the peer received, whatever it answered at the end."""

    connection: int  # PeerConnection.number
    helo: str  # argument of the last EHLO or HELO
    tls: bool  # received over TLS
    mail_from: str  # reverse path without the brackets
    mail_params: tuple[str, ...]  # as sent, e.g. ("SIZE=120", "BODY=8BITMIME")
    rcpt_to: list[str]  # accepted forward paths, in order
    rcpt_params: dict[str, tuple[str, ...]]  # parameters per accepted path
    method: str  # "DATA" or "BDAT"
    data: bytes  # the content: unstuffed, without the end-of-data line
    reply: str  # what the peer answered at the end (or SILENT / HANGUP)


@dataclass
class PeerConnection:
    number: int  # 1 for the first connection accepted
    client: str  # the client's address
    tls: bool = False
    commands: list[str] = field(default_factory=list)  # every line, in order
    closed: bool = False


class _Hangup(Exception):
    pass


class _Wire:
    """Buffered reading that can tell whether more input is already waiting."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()

    async def _fill(self) -> bool:
        data = await self.reader.read(65536)
        self.buffer += data
        return bool(data)

    async def readline(self, end: bytes = b"\n") -> bytes | None:
        """One line with its ending, or None at end of input.

        Commands may end in a bare LF; content lines end only at CRLF, as
        RFC 5321 §2.3.8 has it, so a bare LF never ends the data here.
        """
        while (position := self.buffer.find(end)) < 0:
            if not await self._fill():
                return None
        position += len(end)
        line = bytes(self.buffer[:position])
        del self.buffer[:position]
        return line

    async def readexactly(self, count: int) -> bytes | None:
        while len(self.buffer) < count:
            if not await self._fill():
                return None
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def send(self, reply: str) -> None:
        self.writer.write(reply.replace("\n", "\r\n").encode() + b"\r\n")


class ScriptedPeer:
    """A scripted SMTP server; see the module docstring for the script keys."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "peer.test",
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        replies: Mapping[str, object] | None = None,
        delays: Mapping[str, float] | None = None,
        max_recipients: int = 0,
        tls_context: ssl.SSLContext | None = None,
        tls_garbage: bool = False,
    ):
        self.host = host
        self.port = port
        self.name = name
        self.extensions = tuple(extensions)
        self.delays = dict(delays or {})
        self.max_recipients = max_recipients
        self.tls_context = tls_context
        self.tls_garbage = tls_garbage
        self._script = {
            key: list(value) if isinstance(value, list) else value
            for key, value in (replies or {}).items()
        }
        self.transactions: list[Transaction] = []
        self.connections: list[PeerConnection] = []
        self.current_connections = 0
        self.max_concurrent = 0
        self.pipelining_violations: list[str] = []
        self.errors: list[Exception] = []  # unexpected exceptions in the peer
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[asyncio.Task] = set()
        self._recorded = threading.Condition()
        self._queued = 0

    # Life cycle.

    async def start(self) -> ScriptedPeer:
        self._server = await asyncio.start_server(self._session, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        await self.drop_connections()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def drop_connections(self) -> None:
        """Close every open connection at once, as a server that restarts."""
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def __aenter__(self) -> ScriptedPeer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[ScriptedPeer]:
        """Run the peer in a thread with its own loop while the block runs."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                return
            finally:
                started.set()
            loop.run_forever()

        thread = threading.Thread(target=serve, name="scripted-peer", daemon=True)
        thread.start()
        started.wait()
        try:
            if failure:
                raise failure[0]
            yield self
        finally:
            if not failure:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
                loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    def wait_transactions(
        self, count: int, timeout_s: float = 10.0
    ) -> list[Transaction]:
        """Block until ``count`` transactions were recorded (``in_thread`` only)."""
        with self._recorded:
            if not self._recorded.wait_for(
                lambda: len(self.transactions) >= count, timeout_s
            ):
                raise TimeoutError(
                    f"{len(self.transactions)} of {count} transactions arrived"
                )
            return list(self.transactions)

    # Scripting.

    def _scripted(self, keys: list[str], default: str) -> str:
        for key in keys:
            value = self._script.get(key)
            if isinstance(value, list):
                if value:
                    return value.pop(0)
                continue
            if value is not None:
                return value  # type: ignore[return-value]
        return default

    async def _answer(
        self, wire: _Wire, keys: list[str], default: str, reply: str | None = None
    ) -> int:
        """Send the reply for ``keys``; its code, or 0 when none was sent."""
        if reply is None:
            reply = self._scripted(keys, default)
        delay = next((self.delays[k] for k in keys if k in self.delays), 0.0)
        if delay:
            await asyncio.sleep(delay)
        if reply == HANGUP:
            raise _Hangup
        if reply == SILENT:
            return 0
        wire.send(reply)
        await wire.writer.drain()
        return int(reply[:3]) if reply[:3].isdigit() else 0

    # One connection.

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        self._sessions.add(task)
        peername = writer.get_extra_info("peername")
        record = PeerConnection(len(self.connections) + 1, peername[0])
        self.connections.append(record)
        self.current_connections += 1
        self.max_concurrent = max(self.max_concurrent, self.current_connections)
        wire = _Wire(reader, writer)
        try:
            await self._converse(wire, record)
        except (_Hangup, ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        except Exception as exc:  # a bug in the peer: the test should see it
            self.errors.append(exc)
        finally:
            record.closed = True
            self.current_connections -= 1
            self._sessions.discard(task)
            await _close(wire.writer)

    async def _converse(self, wire: _Wire, record: PeerConnection) -> None:
        state = _SessionState()
        await self._answer(wire, ["GREETING"], f"220 {self.name} ESMTP scripted peer")
        while (raw := await wire.readline()) is not None:
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            record.commands.append(line)
            verb, _, argument = line.partition(" ")
            verb = verb.upper()
            # A BDAT chunk follows its command at once: that is no pipelining.
            if (
                wire.buffer
                and verb != "BDAT"
                and (verb in _ENDS_GROUP or "PIPELINING" not in self._offered(record))
            ):
                self.pipelining_violations.append(line)

            if verb in ("EHLO", "HELO"):
                state = _SessionState(helo=argument)
                if verb == "EHLO":
                    lines = [self.name, *self._offered(record)]
                    default = "\n".join(
                        f"250{'-' if i < len(lines) - 1 else ' '}{text}"
                        for i, text in enumerate(lines)
                    )
                else:
                    default = f"250 {self.name}"
                await self._answer(wire, [verb], default)
            elif verb == "STARTTLS" and "STARTTLS" in self._offered(record):
                if await self._answer(wire, ["STARTTLS"], "220 2.0.0 Go ahead") == 220:
                    await self._start_tls(wire, record)
                    state = _SessionState()
            elif verb == "MAIL":
                await self._mail(wire, state, argument)
            elif verb == "RCPT":
                await self._rcpt(wire, state, argument)
            elif verb == "DATA":
                await self._data(wire, state, record)
            elif verb == "BDAT":
                await self._bdat(wire, state, record, argument)
            elif verb == "RSET":
                state.reset()
                await self._answer(wire, ["RSET"], "250 2.0.0 Reset")
            elif verb == "NOOP":
                await self._answer(wire, ["NOOP"], "250 2.0.0 Ok")
            elif verb == "QUIT":
                await self._answer(wire, ["QUIT"], "221 2.0.0 Bye")
                return
            else:
                await self._answer(wire, [verb], "500 5.5.2 Command unrecognized")

    def _offered(self, record: PeerConnection) -> list[str]:
        offered = list(self.extensions)
        can_tls = self.tls_context is not None or self.tls_garbage
        if can_tls and not record.tls and "STARTTLS" not in offered:
            offered.append("STARTTLS")
        return offered

    async def _start_tls(self, wire: _Wire, record: PeerConnection) -> None:
        if wire.buffer:
            # RFC 3207 §4.2 asks a server to refuse commands pipelined
            # after STARTTLS; a client that sent some is broken.
            self.pipelining_violations.append("data after STARTTLS")
            raise _Hangup
        if self.tls_garbage:
            wire.writer.write(_NOT_TLS)
            await wire.writer.drain()
            raise _Hangup
        await wire.writer.start_tls(self.tls_context)
        record.tls = True

    async def _mail(self, wire: _Wire, state: _SessionState, argument: str) -> None:
        match = _PATH.match(argument)
        if not state.helo or state.mail_from is not None or match is None:
            await self._answer(wire, [], "503 5.5.1 Bad sequence of commands")
            return
        path, parameters = match.group(1), tuple(match.group(2).split())
        code = await self._answer(wire, [f"MAIL {path}", "MAIL"], "250 2.1.0 Ok")
        if 200 <= code < 300:
            state.mail_from, state.mail_params = path, parameters

    async def _rcpt(self, wire: _Wire, state: _SessionState, argument: str) -> None:
        match = _PATH.match(argument)
        if state.mail_from is None or match is None:
            await self._answer(wire, [], "503 5.5.1 Bad sequence of commands")
            return
        path, parameters = match.group(1), tuple(match.group(2).split())
        default = "250 2.1.5 Ok"
        if self.max_recipients and len(state.rcpt_to) >= self.max_recipients:
            default = "452 4.5.3 Too many recipients"
        code = await self._answer(wire, [f"RCPT {path}", "RCPT"], default)
        if 200 <= code < 300:
            state.rcpt_to.append(path)
            state.rcpt_params[path] = parameters

    async def _data(
        self, wire: _Wire, state: _SessionState, record: PeerConnection
    ) -> None:
        if state.mail_from is None:
            await self._answer(wire, [], "503 5.5.1 Bad sequence of commands")
            return
        if not state.rcpt_to:
            await self._answer(wire, [], "554 5.5.1 No valid recipients")
            return
        if (
            await self._answer(wire, ["DATA"], "354 End data with <CR><LF>.<CR><LF>")
            != 354
        ):
            return
        content = bytearray()
        while (line := await wire.readline(b"\r\n")) is not None:
            if line == b".\r\n":
                await self._finish(wire, state, record, "DATA", bytes(content))
                return
            # RFC 5321 §4.5.2: remove the dot the client added.
            content += line[1:] if line.startswith(b".") else line
        raise _Hangup

    async def _bdat(
        self, wire: _Wire, state: _SessionState, record: PeerConnection, argument: str
    ) -> None:
        words = argument.split()
        if not words or not words[0].isdigit():
            await self._answer(wire, [], "501 5.5.4 Syntax: BDAT size [LAST]")
            return
        chunk = await wire.readexactly(int(words[0]))
        if chunk is None:
            raise _Hangup
        if state.mail_from is None or not state.rcpt_to:
            # RFC 3030 §2: the chunk is read whatever the answer.
            await self._answer(wire, [], "503 5.5.1 Bad sequence of commands")
            return
        state.chunks += chunk
        if words[1:] == ["LAST"]:
            await self._finish(wire, state, record, "BDAT", bytes(state.chunks))
        else:
            await self._answer(
                wire, ["BDAT"], f"250 2.0.0 {len(chunk)} octets received"
            )

    async def _finish(
        self,
        wire: _Wire,
        state: _SessionState,
        record: PeerConnection,
        method: str,
        data: bytes,
    ) -> None:
        self._queued += 1
        reply = self._scripted(["DATA_END"], f"250 2.0.0 Ok: queued as {self._queued}")
        transaction = Transaction(
            connection=record.number,
            helo=state.helo,
            tls=record.tls,
            mail_from=state.mail_from or "",
            mail_params=state.mail_params,
            rcpt_to=list(state.rcpt_to),
            rcpt_params=dict(state.rcpt_params),
            method=method,
            data=data,
            reply=reply,
        )
        # Recorded before the reply leaves, so that a client that has its
        # reply finds the transaction here.
        with self._recorded:
            self.transactions.append(transaction)
            self._recorded.notify_all()
        state.reset()
        await self._answer(wire, ["DATA_END"], "", reply)


@dataclass
class _SessionState:
    helo: str = ""
    mail_from: str | None = None
    mail_params: tuple[str, ...] = ()
    rcpt_to: list[str] = field(default_factory=list)
    rcpt_params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    chunks: bytearray = field(default_factory=bytearray)

    def reset(self) -> None:
        self.mail_from = None
        self.mail_params = ()
        self.rcpt_to = []
        self.rcpt_params = {}
        self.chunks = bytearray()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except (TimeoutError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
        writer.transport.abort()
