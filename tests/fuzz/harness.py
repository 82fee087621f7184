"""The parser and the session driven as mailfast.protocol drives them, under watch.

``run_session`` is one connection without the socket: the client's octets are
fed to a real ``Parser`` in the pieces given, every event goes to a real
``Session``, and the session's steps are followed the way
``SMTPConnection._process`` follows them. A COMMIT is made durable at once
with a made-up queue id, so replies come back in the order the server sends
them. The result is a ``Transcript``: the replies, the messages committed and
whether the server closed the connection.

While it runs, every step is held to the rules below; a broken one raises
``InvariantError`` naming it. Any other exception escaped from the server.

  * Replies: CRLF-ended lines ``ddd-text`` ... ``ddd text`` with one code of
    class 2 to 5; every 2xx, 4xx and 5xx reply but the greeting and the
    answers to EHLO and HELO carries an RFC 2034 enhanced status code of the
    same class.
  * No silent drop: each COMMAND, BAD_COMMAND, END_OF_DATA and END_OF_CHUNK
    gets exactly one reply, except a BDAT command, which is answered when its
    chunk ends. CONTENT never gets one.
  * The parser and the session agree on whether content is being read.
  * Content is what the client sent: a DATA message is the dot-unstuffed text
    between its DATA command and the first CRLF "." CRLF (computed here from
    the raw octets, not by either parser), a BDAT chunk is the announced
    octets verbatim, and sizes count exactly those octets.
  * A committed message has recipients, holds no bare CR or LF, no line
    longer than the data line limit and no more octets than the size limit.
    Every ``FAILED_COMMIT_EVERY``-th commit fails instead, as on a full disk.
  * When the pure-Python twin parser is used, the compiled
    parse_path_argument agrees with the twin's on every MAIL and RCPT.
  * Bounded work: at most ``MAX_STEPS_PER_OCTET`` parser calls per input octet.

``check_input`` adds the property that needs two runs: the same octets fed
whole and fed in pieces give the same replies and the same messages, so a
message can never be cut in two, or merged with the next, by where reads end.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from mailfast import _pyparser, config, replies
from mailfast._parser import Parser, parse_path_argument
from mailfast.directory import Directory
from mailfast.events import COMMAND, CONTENT, END_OF_CHUNK, END_OF_DATA
from mailfast.session import (
    AUTHENTICATE,
    CLOSE,
    COMMIT,
    DISCARD,
    EXPECT_LINE,
    REPLY,
    START_CHUNK,
    START_DATA,
    START_TLS,
    STORE,
    ListenerPolicy,
    Session,
    SessionSettings,
)

HOSTNAME = "mx.fuzz.test"
CLIENT_IP = "192.0.2.7"
# The defaults, except limits that a fuzz input of 1-2 KiB can exceed.
CONFIG = config.parse(
    """
    [limits]
    max_message_octets = 1024
    max_recipients = 3

    [domains.localhost]
    mailboxes = ["alice"]
    aliases = { postmaster = "alice" }
    """
)
LIMITS = CONFIG.limits
SETTINGS = SessionSettings.build(HOSTNAME, LIMITS)
DIRECTORY = Directory(CONFIG)
# AUTH without TLS, so that a fuzzer without a handshake reaches it.
AUTH_LISTENER = ListenerPolicy(auth_offered=True)
PASSWORDS = {"alice": "secret"}
FAILED_COMMIT_EVERY = 3  # the 3rd, 6th, ... commit fails, as on a full disk

# Per octet fed, a feed and a CONTENT or a command event at most; 10 leaves
# room and still catches a parser that makes no progress.
MAX_STEPS_PER_OCTET = 10
MAX_STEPS_BASE = 100

PYTHON_PARSER = _pyparser.Parser

# How splits_for cuts the input: the low two bits of its pattern.
EVERY_OCTET = 0
AROUND_CRLF_DOT = 1
PER_LINE = 2
RANDOM_CUTS = 3

_REPLY_LINE = re.compile(rb"([2-5])(\d\d)([ -])([^\r\n]*)\Z")
_ENHANCED = re.compile(rb"([245])\.\d{1,3}\.\d{1,3}(?: |\Z)")
_EHLO_START = f"250-{HOSTNAME}\r\n".encode("ascii")
_REPLYING = (REPLY, CLOSE, START_DATA, COMMIT, EXPECT_LINE, AUTHENTICATE)
_GOOD_REPLIES: set[bytes] = set()  # checked already: most replies are constants
_PATH_KEYWORDS = {b"MAIL": b"FROM:", b"RCPT": b"TO:"}


class InvariantError(Exception):
    """The server broke one of the rules of this module."""


@dataclass(frozen=True, slots=True)
class Message:
    reverse_path: str
    recipients: tuple[str, ...]
    content: bytes


@dataclass(slots=True)
class Transcript:
    replies: list[bytes] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    closed: bool = False
    steps: int = 0  # next_event() calls


@dataclass(frozen=True, slots=True)
class Client:
    """What the server knows of the client before it sends anything."""

    relay_permitted: bool = False  # from a trusted network
    auth_offered: bool = False  # AUTH PLAIN/LOGIN offered without TLS; alice/secret


def run_session(
    data: bytes,
    splits: list[int],
    client: Client = Client(),
    parser_class: type = Parser,
) -> Transcript:
    """Feed ``data`` cut at the offsets ``splits``; raise InvariantError on a bug.

    Offsets outside 1..len(data)-1 and repeats are ignored.
    """
    connection = _Connection(data, client, parser_class)
    cuts = sorted({cut for cut in splits if 0 < cut < len(data)})
    start = 0
    for end in [*cuts, len(data)]:
        if connection.transcript.closed:
            break
        connection.receive(data[start:end])
        start = end
    connection.finish()
    return connection.transcript


def check_input(
    data: bytes, splits: list[int], client: Client = Client(), python: bool = False
) -> Transcript:
    """Run ``data`` whole and cut at ``splits``: the transcripts must be equal.

    With ``python``, the pure-Python twin parser must also give the same
    transcript (fed whole).
    """
    whole = run_session(data, [], client)
    _same(whole, run_session(data, splits, client), f"fed in pieces {splits}")
    if python:
        _same(whole, run_session(data, [], client, PYTHON_PARSER), "Python parser")
    return whole


def splits_for(data: bytes, pattern: int) -> list[int]:
    """Where to cut ``data`` into feeds; ``pattern`` (0-63) picks how.

    The low two bits choose: every octet, before and after every CR, LF and
    dot (where the terminator and the stuffing are decided), after every LF
    (one line per read), or random cuts seeded by the remaining bits.
    """
    kind = pattern & 3
    if kind == EVERY_OCTET:
        return list(range(1, len(data)))
    if kind == AROUND_CRLF_DOT:
        return [
            i + d for i, octet in enumerate(data) if octet in b"\r\n." for d in (0, 1)
        ]
    if kind == PER_LINE:
        return [i + 1 for i, octet in enumerate(data) if octet == 0x0A]
    chooser = random.Random(pattern)
    return [chooser.randrange(len(data) + 1) for _ in range(len(data) // 8 + 1)]


def check_fuzz_input(fuzz_input: bytes) -> Transcript:
    """One fuzz input: an options octet, then the client's octets.

    Bit 0 of the options permits relaying, bit 1 offers AUTH; bits 2-7 are
    the split pattern of ``splits_for``. The inputs fed one line per read,
    the cheapest split, also go through the pure-Python twin parser, which
    is slow: running it on all inputs would cost the fuzzer half its speed.
    """
    if not fuzz_input:
        return Transcript()
    options, data = fuzz_input[0], fuzz_input[1:]
    client = Client(relay_permitted=bool(options & 1), auth_offered=bool(options & 2))
    pattern = options >> 2
    python = pattern & 3 == PER_LINE
    return check_input(data, splits_for(data, pattern), client, python)


def data_content(data: bytes, start: int) -> tuple[bytes, int] | None:
    """The DATA content that starts at ``data[start]`` and where its terminator ends.

    RFC 5321 §4.1.1.4 and §4.5.2 read plainly: lines end at CRLF only; the
    message ends at the first line "." (the very first line included); a
    leading dot of any other line is removed. None when no terminator has
    been sent.
    """
    if data.startswith(b".\r\n", start):
        return b"", start + 3
    end = data.find(b"\r\n.\r\n", start)
    if end < 0:
        return None
    lines = data[start:end].split(b"\r\n")
    content = b"".join(line.removeprefix(b".") + b"\r\n" for line in lines)
    return content, end + 5


class _Connection:
    """SMTPConnection without transport, spool or event loop."""

    def __init__(self, data: bytes, client: Client, parser_class: type):
        self.data = data
        self.parser = parser_class(
            LIMITS.max_command_octets, LIMITS.max_data_line_octets
        )
        if client.auth_offered:
            self.session = Session(
                SETTINGS,
                DIRECTORY,
                CLIENT_IP,
                client.relay_permitted,
                listener=AUTH_LISTENER,
                plaintext_auth_allowed=True,
                sender_allowed=_owns,
            )
        else:
            self.session = Session(
                SETTINGS, DIRECTORY, CLIENT_IP, client.relay_permitted
            )
        self.transcript = Transcript()
        self.fed = 0
        self.message: bytearray | None = None  # what the server would spool
        self.received = bytearray()  # every CONTENT octet of the current message
        self.content_start = 0  # offset in data of the DATA content
        self.chunk_start = 0  # offset in data of the chunk being read
        self.chunk_size = 0
        self.chunk_received = 0
        self.unanswered_chunks = 0
        self.commits = 0
        self.twin = parser_class is PYTHON_PARSER
        self._reply(self.session.greeting())

    @property
    def position(self) -> int:
        """Offset in ``data`` of the next octet the parser will read."""
        return self.fed - self.parser.buffered

    def receive(self, octets: bytes) -> None:
        self.parser.feed(octets)
        self.fed += len(octets)
        while not self.transcript.closed:
            self.transcript.steps += 1
            event = self.parser.next_event()
            if event is None:
                return
            self._handle(event)
            if self.session.in_content != (self.parser.mode != "command"):
                raise InvariantError(
                    f"after {event!r} the session is {self.session.state.value}"
                    f" but the parser is in {self.parser.mode} mode"
                )

    def finish(self) -> None:
        limit = MAX_STEPS_PER_OCTET * len(self.data) + MAX_STEPS_BASE
        if self.transcript.steps > limit:
            raise InvariantError(
                f"{self.transcript.steps} parser calls for {len(self.data)} octets"
            )
        if self.transcript.closed:
            return
        mode = self.parser.mode
        if mode == "command" and self.unanswered_chunks:
            raise InvariantError("a BDAT command was never answered")
        if mode == "data":
            self._check_open_data()
        if mode == "chunk":
            sent = min(self.chunk_size, self.fed - self.chunk_start)
            if self.chunk_received != sent:
                raise InvariantError(
                    f"{sent} octets of a chunk sent, {self.chunk_received} delivered"
                )

    def _check_open_data(self) -> None:
        """DATA content still open at the end: no terminator, nothing invented."""
        if data_content(self.data, self.content_start) is not None:
            raise InvariantError("the DATA terminator was sent but not recognised")
        lines = self.data[self.content_start :].split(b"\r\n")
        sent = b"\r\n".join(line.removeprefix(b".") for line in lines)
        if not sent.startswith(self.received):
            raise InvariantError(
                f"DATA content {bytes(self.received)!r} is not a prefix of {sent!r}"
            )

    def _handle(self, event: tuple) -> None:
        session = self.session
        kind = event[0]

        # Check the event against the octets it claims to stand for.
        if self.twin and kind == COMMAND and event[1] in _PATH_KEYWORDS:
            _check_path_argument(event[2], _PATH_KEYWORDS[event[1]])
        elif kind == CONTENT:
            self._check_content(event[1])
        elif kind == END_OF_DATA:
            self._check_end_of_data(event)
        elif kind == END_OF_CHUNK:
            self._check_end_of_chunk(event)
            if session.chunk_is_last:
                event = (END_OF_CHUNK, self.parser.finish_chunks(), event[2])

        # Follow the step as SMTPConnection._process does.
        action, payload = session.receive(event)
        self._check_action(event, action)
        if action == STORE:
            if self.message is None:
                raise InvariantError(f"STORE of {event!r} without a message")
            self.message += payload
        elif action == REPLY:
            self._reply(payload)
        elif action == START_DATA:
            self._reply(payload)
            self.message = bytearray()
            self.parser.start_data()
            self.received = bytearray()
            self.content_start = self.position
        elif action == START_CHUNK:
            size, first = payload
            if first:
                self.message = bytearray()
                self.received = bytearray()
            self.parser.start_chunk(size, first)
            self.unanswered_chunks += 1
            self.chunk_start = self.position
            self.chunk_size = size
            self.chunk_received = 0
        elif action == COMMIT:
            self._commit()
        elif action == CLOSE:
            self._reply(payload)
            self.transcript.closed = True
        elif action == EXPECT_LINE:
            self._reply(payload)
            self.parser.expect_raw_line()
        elif action == AUTHENTICATE:
            login, password = payload
            user = login if PASSWORDS.get(login) == password else None
            action, reply = session.authenticated(user)
            self._reply(reply)
            self.transcript.closed = action == CLOSE
        elif action == START_TLS:
            raise InvariantError(f"{event!r} started TLS on a listener without it")
        elif action != DISCARD:
            raise InvariantError(f"unknown step {action!r} for {event!r}")

    def _check_action(self, event: tuple, action: int) -> None:
        kind = event[0]
        if kind == CONTENT:
            if action not in (STORE, DISCARD):
                raise InvariantError(f"content answered with step {action}")
            return
        if action == START_CHUNK:
            if kind != COMMAND or event[1] != b"BDAT":
                raise InvariantError(f"{event!r} started a chunk")
        elif action not in _REPLYING:
            raise InvariantError(f"{event!r} got no reply (step {action})")
        elif action == START_DATA and (kind != COMMAND or event[1] != b"DATA"):
            raise InvariantError(f"{event!r} started DATA")
        elif action == COMMIT and kind not in (END_OF_DATA, END_OF_CHUNK):
            raise InvariantError(f"{event!r} committed a message")
        if kind == END_OF_CHUNK:
            self.unanswered_chunks -= 1

    def _check_content(self, octets: bytes) -> None:
        if not octets:
            raise InvariantError("an empty CONTENT event")
        if self.parser.mode == "chunk":
            start = self.chunk_start + self.chunk_received
            if octets != self.data[start : start + len(octets)]:
                raise InvariantError(
                    f"chunk content {octets!r} is not the octets sent at {start}"
                )
            self.chunk_received += len(octets)
        self.received += octets

    def _check_end_of_data(self, event: tuple) -> None:
        expected = data_content(self.data, self.content_start)
        if expected is None:
            raise InvariantError(f"{event!r} but no terminator was sent")
        content, end = expected
        if bytes(self.received) != content:
            raise InvariantError(
                f"DATA content {bytes(self.received)!r}, sent {content!r}"
            )
        if self.position != end:
            raise InvariantError(f"DATA ended at {self.position}, sent to {end}")
        if event[2] != len(content):
            raise InvariantError(f"{event!r} but {len(content)} octets were sent")

    def _check_end_of_chunk(self, event: tuple) -> None:
        if self.chunk_received != self.chunk_size:
            raise InvariantError(
                f"{event!r} after {self.chunk_received} of {self.chunk_size} octets"
            )
        if self.position != self.chunk_start + self.chunk_size:
            raise InvariantError(f"{event!r} at {self.position}, chunk not at its end")
        if event[2] != len(self.received):
            raise InvariantError(f"{event!r} but {len(self.received)} octets came")

    def _commit(self) -> None:
        envelope = self.session.envelope
        if envelope is None or not envelope.recipients:
            raise InvariantError("a message committed without recipients")
        content = bytes(self.message if self.message is not None else b"")
        if content != self.received:
            raise InvariantError("the message committed is not the content received")
        _check_message_content(content)
        self.message = None
        self.commits += 1
        if self.commits % FAILED_COMMIT_EVERY == 0:
            self._reply(self.session.commit_failed(replies.LOCAL_ERROR))
            return
        self.transcript.messages.append(
            Message(
                envelope.sender,
                tuple(str(recipient.mailbox) for recipient in envelope.recipients),
                content,
            )
        )
        queue_id = f"Q{len(self.transcript.messages)}"
        self._reply(self.session.committed(queue_id))

    def _reply(self, reply: bytes) -> None:
        _check_reply(reply)
        self.transcript.replies.append(reply)


def _check_reply(reply: bytes) -> None:
    if reply in _GOOD_REPLIES:
        return
    if not reply.endswith(b"\r\n"):
        raise InvariantError(f"reply {reply!r} does not end with CRLF")
    lines = reply[:-2].split(b"\r\n")
    code = None
    for number, line in enumerate(lines, 1):
        match = _REPLY_LINE.match(line)
        if match is None:
            raise InvariantError(f"malformed reply line {line!r}")
        last = number == len(lines)
        if (match[3] == b" ") != last:
            raise InvariantError(f"continuation marks wrong in {reply!r}")
        if code is not None and match[1] + match[2] != code:
            raise InvariantError(f"codes differ within {reply!r}")
        code = match[1] + match[2]
        if match[1] == b"3" or _is_greeting(reply):
            continue
        enhanced = _ENHANCED.match(match[4])
        if enhanced is None or enhanced[1] != match[1]:
            raise InvariantError(f"no matching enhanced status code in {line!r}")
    if len(_GOOD_REPLIES) < 10_000:
        _GOOD_REPLIES.add(reply)


def _check_path_argument(argument: bytes, keyword: bytes) -> None:
    """The compiled MAIL/RCPT argument parser must agree with its Python twin."""
    compiled = parse_path_argument(argument, keyword)
    python = _pyparser.parse_path_argument(argument, keyword)
    if compiled != python:
        raise InvariantError(
            f"{keyword!r} {argument!r}: compiled {compiled!r}, Python {python!r}"
        )


def _is_greeting(reply: bytes) -> bool:
    """The banner and the answers to EHLO and HELO, which carry no enhanced code."""
    return (
        reply == SETTINGS.greeting
        or reply == SETTINGS.helo_reply
        or reply.startswith(_EHLO_START)
    )


def _owns(user: str, address: str) -> bool:
    """An authenticated user sends as its own local address only."""
    return address.lower() == f"{user}@localhost"


def _check_message_content(content: bytes) -> None:
    if len(content) > LIMITS.max_message_octets:
        raise InvariantError(f"a message of {len(content)} octets committed")
    *lines, tail = content.split(b"\r\n")  # tail: b"" unless BDAT left it open
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise InvariantError(f"bare CR or LF committed in {line!r}")
        if len(line) + 2 > LIMITS.max_data_line_octets:
            raise InvariantError(f"a line of {len(line) + 2} octets committed")
    if b"\r" in tail or b"\n" in tail:
        raise InvariantError(f"bare CR or LF committed in {tail!r}")
    if len(tail) > LIMITS.max_data_line_octets:
        raise InvariantError(f"a line of {len(tail)} octets committed")


def _same(expected: Transcript, actual: Transcript, how: str) -> None:
    if actual.replies != expected.replies:
        index = next(
            (
                i
                for i, (a, b) in enumerate(zip(actual.replies, expected.replies))
                if a != b
            ),
            min(len(actual.replies), len(expected.replies)),
        )
        raise InvariantError(
            f"{how}: reply {index} differs: "
            f"{actual.replies[index : index + 1]!r} instead of "
            f"{expected.replies[index : index + 1]!r}"
        )
    if actual.messages != expected.messages:
        raise InvariantError(
            f"{how}: messages {actual.messages!r} instead of {expected.messages!r}"
        )
    if actual.closed != expected.closed:
        raise InvariantError(f"{how}: closed {actual.closed}, whole {expected.closed}")
