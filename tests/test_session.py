"""The SMTP session driven by the real compiled parser, wired as protocol.py wires them.

A ``Conversation`` is the connection without the socket: client octets go to
``Parser.feed``, events to ``Session.receive``, and the session's steps are
followed the way ``SMTPConnection._process`` follows them. Every conversation
runs twice, with the client's octets fed whole and one octet per feed, so a
rule that only holds when a command arrives in one piece fails here.

Every reply any test produces is checked as it is produced for an RFC 2034
enhanced status code: all 2xx, 4xx and 5xx replies carry one, except the
greeting and the answers to EHLO and HELO.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from mailfast import config, replies
from mailfast._parser import Parser
from mailfast.directory import Directory, LocalTarget
from mailfast.envelope import Envelope
from mailfast.events import END_OF_CHUNK
from mailfast.session import (
    CLOSE,
    COMMIT,
    DISCARD,
    REPLY,
    START_CHUNK,
    START_DATA,
    STORE,
    Session,
    SessionSettings,
)

HOSTNAME = "mx.test"
CLIENT_IP = "192.0.2.7"
QUEUE_ID = "QID"
LIMITS = config.LimitsConfig(
    max_message_octets=4096, max_recipients=3, max_bad_commands=5
)
DIRECTORY = Directory(
    config.parse(
        """
        [domains.localhost]
        mailboxes = ["alice", "bob", "jörg"]
        aliases = { postmaster = "alice" }

        [domains."example.net"]
        mailboxes = ["carol"]
        """
    )
)

MAIL = "MAIL FROM:<sender@example.org>"

# RFC 2034 §3: "250 2.1.5 text"; every line of a multi-line reply carries it.
ENHANCED_REPLY_LINE = re.compile(rb"([245])\d\d[ -]([245])\.\d{1,3}\.\d{1,3} ")
STATUS = re.compile(rb"(\d{3})[ -](?:([245]\.\d{1,3}\.\d{1,3})(?: |$))?")


def status(reply: bytes) -> str:
    """``"550 5.1.1"``: the code and, when there is one, the enhanced status code."""
    last_line = reply.removesuffix(b"\r\n").rsplit(b"\r\n", 1)[-1]
    match = STATUS.match(last_line)
    assert match, reply
    return " ".join(group.decode("ascii") for group in match.groups() if group)


def lines(*commands: str) -> bytes:
    return "".join(f"{command}\r\n" for command in commands).encode("utf-8")


def content_of(octets: int) -> bytes:
    """CRLF-ended lines of 100 octets (the last one shorter), ``octets`` in all."""
    full, rest = divmod(octets, 100)
    assert rest != 1, "a line needs room for its CRLF"
    return (b"x" * 98 + b"\r\n") * full + (b"y" * (rest - 2) + b"\r\n" if rest else b"")


@dataclass
class Committed:
    envelope: Envelope
    content: bytes


class Conversation:
    """One client connection held in memory: real Parser, real Session."""

    def __init__(
        self,
        split: Callable[[bytes], list[bytes]],
        limits: config.LimitsConfig = LIMITS,
        relay_permitted: bool = False,
    ):
        self.settings = SessionSettings.build(HOSTNAME, limits)
        self.parser = Parser(limits.max_command_octets, limits.max_data_line_octets)
        self.session = Session(self.settings, DIRECTORY, CLIENT_IP, relay_permitted)
        self.split = split
        self.replies: list[bytes] = []
        self.committed: list[Committed] = []
        self.closed = False
        self.fail_commits = False  # answer COMMIT the way a full disk would
        self._content = bytearray()
        self._reply(self.session.greeting())

    def send(self, octets: bytes) -> list[str]:
        """Feed what the client sends; the status of each reply it gets, in order."""
        assert not self.closed, "the server has closed the connection"
        first = len(self.replies)
        for piece in self.split(octets):
            self.parser.feed(piece)
            self._process()
        return [status(reply) for reply in self.replies[first:]]

    def _process(self) -> None:
        session = self.session
        parser = self.parser
        while not self.closed:
            event = parser.next_event()
            if event is None:
                return
            if event[0] == END_OF_CHUNK and session.chunk_is_last:
                event = (END_OF_CHUNK, parser.finish_chunks(), event[2])
            action, payload = session.receive(event)
            if action == STORE:
                self._content += payload
            elif action == REPLY:
                self._reply(payload)
            elif action == START_DATA:
                self._reply(payload)
                self._content = bytearray()
                parser.start_data()
            elif action == START_CHUNK:
                size, first = payload
                if first:
                    self._content = bytearray()
                parser.start_chunk(size, first)
            elif action == COMMIT:
                if self.fail_commits:
                    self._reply(session.commit_failed(replies.LOCAL_ERROR))
                    continue
                self.committed.append(Committed(session.envelope, bytes(self._content)))
                self._reply(session.committed(QUEUE_ID))
            elif action == CLOSE:
                self._reply(payload)
                self.closed = True
            else:
                assert action == DISCARD, (action, payload)

    def _reply(self, reply: bytes) -> None:
        assert reply.endswith(b"\r\n"), reply
        settings = self.settings
        ehlo = settings.ehlo(starttls=False, auth=False)
        exempt = (settings.greeting, ehlo, settings.helo_reply)
        if reply not in exempt and not reply.startswith(b"3"):
            for line in reply.removesuffix(b"\r\n").split(b"\r\n"):
                match = ENHANCED_REPLY_LINE.match(line)
                assert match, f"no enhanced status code in {line!r}"
                assert match[1] == match[2], f"class differs from the code: {line!r}"
        self.replies.append(reply)


def whole(octets: bytes) -> list[bytes]:
    return [octets]


def per_byte(octets: bytes) -> list[bytes]:
    return [octets[i : i + 1] for i in range(len(octets))]


@pytest.fixture(params=[whole, per_byte], ids=["whole", "per byte"])
def new_conversation(request) -> Callable[..., Conversation]:
    """Start a conversation, not yet greeted; keywords as for Conversation."""
    return lambda **options: Conversation(request.param, **options)


@pytest.fixture
def smtp(new_conversation: Callable[..., Conversation]) -> Conversation:
    """A conversation after ``EHLO client.test``."""
    conversation = new_conversation()
    assert conversation.send(lines("EHLO client.test")) == ["250"]
    return conversation


# Greeting, EHLO, HELO.


def test_greeting_names_the_host(new_conversation) -> None:
    assert new_conversation().replies == [b"220 mx.test ESMTP mailfast\r\n"]


def test_ehlo_lists_the_extensions(smtp: Conversation) -> None:
    first, *extensions, last = smtp.replies[-1].removesuffix(b"\r\n").split(b"\r\n")
    assert first == b"250-mx.test"
    assert all(line.startswith(b"250-") for line in extensions)
    assert last.startswith(b"250 ")
    advertised = [line[4:] for line in [*extensions, last]]
    for extension in (
        b"PIPELINING",
        b"SIZE 4096",
        b"8BITMIME",
        b"SMTPUTF8",
        b"ENHANCEDSTATUSCODES",
        b"CHUNKING",
    ):
        assert extension in advertised


def test_helo_answers_in_one_line_and_mail_flows(new_conversation) -> None:
    smtp = new_conversation()
    transcript = lines("HELO client.test", MAIL, "RCPT TO:<bob@localhost>", "DATA")
    assert smtp.send(transcript) == ["250", "250 2.1.0", "250 2.1.5", "354"]
    assert smtp.replies[1] == b"250 mx.test\r\n"
    assert smtp.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n") == ["250 2.0.0"]
    assert smtp.committed[0].envelope.protocol == "SMTP"
    assert smtp.committed[0].envelope.helo == "client.test"


# Single replies: each transcript follows EHLO, unless it is in BEFORE_EHLO.

AFTER_EHLO = {
    # Sequencing, RFC 5321 §4.1.4.
    "RCPT before MAIL": (["RCPT TO:<alice@localhost>"], ["503 5.5.1"]),
    "DATA before MAIL": (["DATA"], ["503 5.5.1"]),
    "nested MAIL": ([MAIL, MAIL], ["250 2.1.0", "503 5.5.1"]),
    # Syntax.
    "unknown command": (["XYZZY plugh"], ["500 5.5.2"]),
    "EHLO without argument": (["EHLO"], ["501 5.5.4"]),
    "HELO without argument": (["HELO"], ["501 5.5.4"]),
    "MAIL without FROM:": (["MAIL <sender@example.org>"], ["501 5.5.4"]),
    "MAIL FROM: without a path": (["MAIL FROM:"], ["501 5.5.4"]),
    "MAIL path not closed": (["MAIL FROM:<sender@example.org"], ["501 5.5.4"]),
    "RCPT without TO:": ([MAIL, "RCPT <alice@localhost>"], ["250 2.1.0", "501 5.5.4"]),
    "RCPT null path": ([MAIL, "RCPT TO:<>"], ["250 2.1.0", "501 5.5.4"]),
    "DATA with an argument": (["DATA now"], ["501 5.5.4"]),
    "RSET with an argument": (["RSET now"], ["501 5.5.4"]),
    # A BDAT without a usable size cannot be skipped: what follows is commands.
    "BDAT without size": (["BDAT", "NOOP"], ["501 5.5.4", "250 2.0.0"]),
    "BDAT size in words": (["BDAT ten LAST", "NOOP"], ["501 5.5.4", "250 2.0.0"]),
    "BDAT negative size": (["BDAT -1 LAST", "NOOP"], ["501 5.5.4", "250 2.0.0"]),
    "BDAT unknown flag": (["BDAT 4 FIRST", "NOOP"], ["501 5.5.4", "250 2.0.0"]),
    # Leniency towards untidy clients.
    "lower-case verbs, space after the colon": (
        ["mail from: <sender@example.org>", "rcpt to: <alice@localhost>"],
        ["250 2.1.0", "250 2.1.5"],
    ),
    "mixed-case verbs and keywords": (
        ["Mail From:<sender@example.org>", "Rcpt tO:<alice@localhost>"],
        ["250 2.1.0", "250 2.1.5"],
    ),
    "path without brackets": (["MAIL FROM:sender@example.org"], ["250 2.1.0"]),
    "null reverse path": (["MAIL FROM:<>"], ["250 2.1.0"]),
    # Recipients.
    "postmaster without domain": (
        [MAIL, "RCPT TO:<postmaster>"],
        ["250 2.1.0", "250 2.1.5"],
    ),
    "PostMaster without domain": (
        [MAIL, "RCPT TO:<PostMaster>"],
        ["250 2.1.0", "250 2.1.5"],
    ),
    "postmaster of a local domain": (
        [MAIL, "RCPT TO:<postmaster@localhost>"],
        ["250 2.1.0", "250 2.1.5"],
    ),
    "recipient in another local domain": (
        [MAIL, "RCPT TO:<carol@example.net>"],
        ["250 2.1.0", "250 2.1.5"],
    ),
    "unknown user": ([MAIL, "RCPT TO:<nobody@localhost>"], ["250 2.1.0", "550 5.1.1"]),
    "source route": (
        [MAIL, "RCPT TO:<@a.example,@b.example:alice@localhost>"],
        ["250 2.1.0", "250 2.1.5"],
    ),
    "bad recipient syntax": (
        [MAIL, "RCPT TO:<alice@@localhost>"],
        ["250 2.1.0", "553 5.1.3"],
    ),
    "unknown RCPT parameter": (
        [MAIL, "RCPT TO:<alice@localhost> FOO=bar"],
        ["250 2.1.0", "555 5.5.4"],
    ),
    "DSN parameters of RCPT": (
        [MAIL, "RCPT TO:<alice@localhost> NOTIFY=FAILURE ORCPT=rfc822;alice@localhost"],
        ["250 2.1.0", "250 2.1.5"],
    ),
    # Found by the fuzzer: a non-ASCII address type once escaped as an exception.
    "ORCPT with a non-ASCII address type": (
        [MAIL, "RCPT TO:<alice@localhost> ORCPT=rfcé822;alice@localhost"],
        ["250 2.1.0", "501 5.5.4"],
    ),
    "ORCPT encoding a non-ASCII octet": (
        [MAIL, "RCPT TO:<alice@localhost> ORCPT=rfc822;a+C2+85@localhost"],
        ["250 2.1.0", "501 5.5.4"],
    ),
    "ENVID encoding a line end": ([MAIL + " ENVID=a+0D+0Ab"], ["501 5.5.4"]),
    "ENVID encoding a space": ([MAIL + " ENVID=a+20b"], ["250 2.1.0"]),
    "ORCPT without an address type": (
        [MAIL, "RCPT TO:<alice@localhost> ORCPT=;alice@localhost"],
        ["250 2.1.0", "501 5.5.4"],
    ),
    # MAIL and its parameters.
    "bad sender syntax": (["MAIL FROM:<sender@@example.org>"], ["553 5.1.7"]),
    "SIZE at the limit": ([MAIL + " SIZE=4096"], ["250 2.1.0"]),
    "SIZE over the limit": ([MAIL + " SIZE=4097"], ["552 5.3.4"]),
    "SIZE in words": ([MAIL + " SIZE=big"], ["501 5.5.4"]),
    "SIZE without value": ([MAIL + " SIZE"], ["501 5.5.4"]),
    "BODY=8BITMIME": ([MAIL + " BODY=8BITMIME"], ["250 2.1.0"]),
    "BODY=7BIT": ([MAIL + " BODY=7BIT"], ["250 2.1.0"]),
    "BODY=BINARYMIME": ([MAIL + " BODY=BINARYMIME"], ["555 5.5.4"]),
    "unknown MAIL parameter": ([MAIL + " FOO=bar"], ["555 5.5.4"]),
    "SIZE twice": ([MAIL + " SIZE=10 SIZE=20"], ["501 5.5.4"]),
    "RET twice": ([MAIL + " RET=FULL RET=HDRS"], ["501 5.5.4"]),
    "NOTIFY twice": (
        [MAIL, "RCPT TO:<alice@localhost> NOTIFY=NEVER NOTIFY=FAILURE"],
        ["250 2.1.0", "501 5.5.4"],
    ),
    # SMTPUTF8, RFC 6531.
    "non-ASCII sender with SMTPUTF8": (
        ["MAIL FROM:<jörg@bücher.example> SMTPUTF8"],
        ["250 2.1.0"],
    ),
    "non-ASCII recipient with SMTPUTF8": (
        [MAIL + " SMTPUTF8", "RCPT TO:<jörg@localhost>"],
        ["250 2.1.0", "250 2.1.5"],
    ),
    "non-ASCII sender without SMTPUTF8": (
        ["MAIL FROM:<jörg@bücher.example>"],
        ["553 5.6.7"],
    ),
    "non-ASCII recipient without SMTPUTF8": (
        [MAIL, "RCPT TO:<jörg@localhost>"],
        ["250 2.1.0", "553 5.6.7"],
    ),
    # DATA without anyone to deliver to.
    "DATA with no valid recipients": (
        [MAIL, "RCPT TO:<nobody@localhost>", "DATA"],
        ["250 2.1.0", "550 5.1.1", "554 5.5.1"],
    ),
    # Commands without a transaction.
    "NOOP": (["NOOP"], ["250 2.0.0"]),
    "NOOP with an argument": (["NOOP anything"], ["250 2.0.0"]),
    "HELP": (["HELP"], ["214 2.0.0"]),
    "VRFY": (["VRFY alice"], ["252 2.5.2"]),
    "VRFY without argument": (["VRFY"], ["501 5.5.4"]),
    "EXPN is not offered": (["EXPN staff"], ["502 5.5.1"]),
    "ETRN is not offered": (["ETRN example.com"], ["502 5.5.1"]),
    "made-up command": (["FROB"], ["500 5.5.2"]),
    "RSET": (["RSET"], ["250 2.0.0"]),
}

BEFORE_EHLO = {
    "MAIL before EHLO": ([MAIL], ["503 5.5.1"]),
    "RCPT before EHLO": (["RCPT TO:<alice@localhost>"], ["503 5.5.1"]),
    "DATA before EHLO": (["DATA"], ["503 5.5.1"]),
    "NOOP before EHLO": (["NOOP"], ["250 2.0.0"]),
    "RSET before EHLO": (["RSET", MAIL], ["250 2.0.0", "503 5.5.1"]),
}


@pytest.mark.parametrize(
    ("commands", "expected"), AFTER_EHLO.values(), ids=AFTER_EHLO.keys()
)
def test_after_ehlo(
    smtp: Conversation, commands: list[str], expected: list[str]
) -> None:
    assert smtp.send(lines(*commands)) == expected
    assert not smtp.closed


@pytest.mark.parametrize(
    ("commands", "expected"), BEFORE_EHLO.values(), ids=BEFORE_EHLO.keys()
)
def test_before_ehlo(
    new_conversation, commands: list[str], expected: list[str]
) -> None:
    smtp = new_conversation()
    assert smtp.send(lines(*commands)) == expected
    assert smtp.send(lines("EHLO client.test", MAIL)) == ["250", "250 2.1.0"]


def test_data_before_any_rcpt_is_out_of_sequence(smtp: Conversation) -> None:
    # RFC 5321 §3.3 allows 503 or 554 here. mailfast keeps 554 "No valid
    # recipients" for a transaction whose RCPTs were all refused, and answers a
    # DATA that no RCPT preceded as the sequence error it is: 503 5.5.1.
    assert smtp.send(lines(MAIL, "DATA")) == ["250 2.1.0", "503 5.5.1"]


# The envelope the transaction builds.


def test_message_is_committed_with_its_envelope_and_exact_content(
    smtp: Conversation,
) -> None:
    transcript = lines(
        "MAIL FROM:<sender@example.org> SIZE=60 BODY=8BITMIME",
        "RCPT TO:<alice@localhost>",
        "RCPT TO:<postmaster>",
        "RCPT TO:<carol@example.net>",
        "DATA",
    )
    assert smtp.send(transcript) == [
        "250 2.1.0",
        "250 2.1.5",
        "250 2.1.5",
        "250 2.1.5",
        "354",
    ]
    # The client doubles a leading dot (RFC 5321 §4.5.2); the content has one.
    sent = b"Subject: dots\r\n\r\n..leading dot\r\n.\r\n"
    assert smtp.send(sent) == ["250 2.0.0"]
    assert smtp.replies[-1] == b"250 2.0.0 Ok: queued as QID\r\n"

    (message,) = smtp.committed
    assert message.content == b"Subject: dots\r\n\r\n.leading dot\r\n"
    envelope = message.envelope
    assert envelope.sender == "sender@example.org"
    assert envelope.client_ip == CLIENT_IP
    assert envelope.helo == "client.test"
    assert envelope.protocol == "ESMTP"
    assert envelope.declared_size == 60
    assert envelope.body == "8BITMIME"
    assert [str(recipient.mailbox) for recipient in envelope.recipients] == [
        "alice@localhost",
        "postmaster",
        "carol@example.net",
    ]
    # <postmaster> alone is the first domain's postmaster, an alias of alice.
    assert envelope.local_targets() == [
        LocalTarget("localhost", "alice"),
        LocalTarget("example.net", "carol"),
    ]
    assert smtp.session.messages_accepted == 1


def test_null_reverse_path_is_the_empty_sender(smtp: Conversation) -> None:
    transcript = lines("MAIL FROM:<>", "RCPT TO:<bob@localhost>", "DATA")
    assert smtp.send(transcript + b"bounce\r\n.\r\n") == [
        "250 2.1.0",
        "250 2.1.5",
        "354",
        "250 2.0.0",
    ]
    envelope = smtp.committed[0].envelope
    assert envelope.reverse_path is None
    assert envelope.sender == ""


def test_source_route_is_accepted_and_ignored(smtp: Conversation) -> None:
    transcript = lines(
        "MAIL FROM:<@relay.example:sender@example.org>",
        "RCPT TO:<@a.example,@b.example:alice@localhost>",
        "DATA",
    )
    assert smtp.send(transcript + b"routed\r\n.\r\n")[-1] == "250 2.0.0"
    envelope = smtp.committed[0].envelope
    assert envelope.sender == "sender@example.org"
    assert str(envelope.recipients[0].mailbox) == "alice@localhost"


# A domain mailfast does not serve; the same domain as an absolute name with
# its trailing dot, which is not our own name; an address literal.
NOT_OURS = ["someone@example.org", "alice@localhost.", "alice@[192.0.2.1]"]


@pytest.mark.parametrize("address", NOT_OURS)
def test_recipient_elsewhere_is_refused_as_relaying(
    smtp: Conversation, address: str
) -> None:
    mail, refusal = smtp.send(lines(MAIL, f"RCPT TO:<{address}>"))
    assert mail == "250 2.1.0"
    # 550 and 554 are both used for relaying denied; 5.7.1 says why (RFC 3463).
    assert refusal in ("550 5.7.1", "554 5.7.1")


def test_trusted_client_may_relay_to_a_remote_domain(new_conversation) -> None:
    smtp = new_conversation(relay_permitted=True)
    transcript = lines(
        "EHLO client.test",
        MAIL,
        "RCPT TO:<someone@example.org>",
        "RCPT TO:<nobody@localhost>",
        "RCPT TO:<alice@localhost>",
        "DATA",
    )
    assert smtp.send(transcript + b"relayed\r\n.\r\n") == [
        "250",
        "250 2.1.0",
        "250 2.1.5",
        "550 5.1.1",
        "250 2.1.5",
        "354",
        "250 2.0.0",
    ]
    remote, local = smtp.committed[0].envelope.recipients
    assert remote.is_remote and not local.is_remote


def test_smtputf8_transaction_is_marked_utf8smtp(smtp: Conversation) -> None:
    transcript = lines(
        "MAIL FROM:<jörg@bücher.example> SMTPUTF8", "RCPT TO:<jörg@localhost>", "DATA"
    )
    assert smtp.send(transcript + "Grüße\r\n.\r\n".encode())[-1] == "250 2.0.0"
    (message,) = smtp.committed
    assert message.envelope.protocol == "UTF8SMTP"
    assert message.envelope.sender == "jörg@bücher.example"
    assert message.content == "Grüße\r\n".encode()


def test_too_many_recipients_452_does_not_count_as_an_error(
    smtp: Conversation,
) -> None:
    assert LIMITS.max_recipients == 3
    accepted = [
        "RCPT TO:<alice@localhost>",
        "RCPT TO:<bob@localhost>",
        "RCPT TO:<carol@example.net>",
    ]
    # More refusals than the bad-command budget: none of them uses it up.
    excess = ["RCPT TO:<alice@localhost>"] * (LIMITS.max_bad_commands + 2)
    assert smtp.send(lines(MAIL, *accepted, *excess)) == (
        ["250 2.1.0"] + ["250 2.1.5"] * 3 + ["452 4.5.3"] * len(excess)
    )
    assert not smtp.closed
    assert smtp.send(lines("DATA") + b"three of them\r\n.\r\n") == ["354", "250 2.0.0"]
    assert len(smtp.committed[0].envelope.recipients) == 3


# Transactions ending early.


def test_rset_clears_the_transaction(smtp: Conversation) -> None:
    transcript = lines(MAIL, "RCPT TO:<alice@localhost>", "RSET", "DATA")
    assert smtp.send(transcript) == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "503 5.5.1"]
    assert smtp.session.envelope is None
    # A new transaction starts from nothing: the old recipient is gone.
    transcript = lines("MAIL FROM:<other@example.org>", "RCPT TO:<bob@localhost>")
    assert smtp.send(transcript + lines("DATA") + b"x\r\n.\r\n")[-1] == "250 2.0.0"
    envelope = smtp.committed[0].envelope
    assert envelope.sender == "other@example.org"
    assert [str(r.mailbox) for r in envelope.recipients] == ["bob@localhost"]


def test_ehlo_in_a_transaction_resets_it(smtp: Conversation) -> None:
    # RFC 5321 §4.1.4: EHLO in the middle of a transaction is like RSET.
    transcript = lines(MAIL, "RCPT TO:<alice@localhost>", "EHLO again.test", "DATA")
    assert smtp.send(transcript) == ["250 2.1.0", "250 2.1.5", "250", "503 5.5.1"]
    assert smtp.send(lines(MAIL)) == ["250 2.1.0"]
    assert smtp.session.helo == "again.test"


# Content refused after the end of data: the client is not reading replies
# while it sends content, so the refusal waits for the terminator.


def start_data(smtp: Conversation) -> None:
    assert smtp.send(lines(MAIL, "RCPT TO:<alice@localhost>", "DATA")) == [
        "250 2.1.0",
        "250 2.1.5",
        "354",
    ]


def test_content_at_the_size_limit_is_accepted(smtp: Conversation) -> None:
    start_data(smtp)
    content = content_of(LIMITS.max_message_octets)
    assert smtp.send(content + b".\r\n") == ["250 2.0.0"]
    assert smtp.committed[0].content == content


def test_content_over_the_size_limit_is_refused_after_the_dot(
    smtp: Conversation,
) -> None:
    start_data(smtp)
    content = content_of(LIMITS.max_message_octets + 1)
    assert smtp.send(content) == []
    assert smtp.send(b".\r\n") == ["552 5.3.4"]
    assert smtp.committed == []
    assert smtp.send(lines(MAIL)) == ["250 2.1.0"]


BAD_CONTENT = {
    "bare LF": (b"Subject: x\r\n\r\nbare\nLF\r\n", "550 5.6.0"),
    "bare CR": (b"Subject: x\r\n\r\nbare\rCR\r\n", "550 5.6.0"),
    "bare LF before a dot": (b"Subject: x\r\n\r\nfalse end\n.\nrest\r\n", "550 5.6.0"),
    # RFC 5321 §4.5.3.1.6: 1000 octets with the CRLF; this line has 1001.
    "line too long": (b"x" * 999 + b"\r\n", "550 5.6.0"),
}


@pytest.mark.parametrize(
    ("content", "refusal"), BAD_CONTENT.values(), ids=BAD_CONTENT.keys()
)
def test_bad_content_is_refused_after_the_terminator(
    smtp: Conversation, content: bytes, refusal: str
) -> None:
    start_data(smtp)
    assert smtp.send(content) == []
    assert smtp.send(b".\r\n") == [refusal]
    assert smtp.committed == []
    # The transaction is over and the session in step with the client.
    assert smtp.send(lines("DATA", MAIL)) == ["503 5.5.1", "250 2.1.0"]


def test_line_at_the_length_limit_is_accepted(smtp: Conversation) -> None:
    start_data(smtp)
    assert smtp.send(b"x" * 998 + b"\r\n.\r\n") == ["250 2.0.0"]
    assert smtp.committed[0].content == b"x" * 998 + b"\r\n"


def test_commit_failure_asks_the_client_to_retry(smtp: Conversation) -> None:
    smtp.fail_commits = True
    start_data(smtp)
    assert smtp.send(b"x\r\n.\r\n") == ["451 4.3.0"]
    assert smtp.session.envelope is None
    assert smtp.send(lines(MAIL)) == ["250 2.1.0"]


# BDAT, RFC 3030.


def test_bdat_chunks_make_one_message(smtp: Conversation) -> None:
    first = b"Subject: chunks\r"  # ends between CR and LF
    last = b"\n\r\nbody\r\n"
    transcript = (
        lines(MAIL, "RCPT TO:<alice@localhost>")
        + lines(f"BDAT {len(first)}")
        + first
        + lines(f"BDAT {len(last)} LAST")
        + last
    )
    assert smtp.send(transcript) == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0"]
    assert smtp.replies[-1] == b"250 2.0.0 Ok: queued as QID\r\n"
    assert [message.content for message in smtp.committed] == [first + last]
    assert smtp.send(lines(MAIL)) == ["250 2.1.0"]


def test_bdat_0_last_ends_the_message(smtp: Conversation) -> None:
    body = b"Subject: x\r\n\r\nbody\r\n"
    transcript = lines(MAIL, "RCPT TO:<bob@localhost>", f"BDAT {len(body)}")
    assert smtp.send(transcript + body + lines("BDAT 0 LAST")) == [
        "250 2.1.0",
        "250 2.1.5",
        "250 2.0.0",
        "250 2.0.0",
    ]
    assert [message.content for message in smtp.committed] == [body]


def test_bdat_0_last_alone_is_an_empty_message(smtp: Conversation) -> None:
    transcript = lines(MAIL, "RCPT TO:<bob@localhost>", "BDAT 0 LAST")
    assert smtp.send(transcript) == ["250 2.1.0", "250 2.1.5", "250 2.0.0"]
    assert [message.content for message in smtp.committed] == [b""]


def test_bdat_without_mail_reads_the_chunk_then_refuses_it(smtp: Conversation) -> None:
    # The chunk holds what would be commands; none of them may run.
    chunk = lines("QUIT", MAIL)
    transcript = lines(f"BDAT {len(chunk)} LAST") + chunk + lines("NOOP", MAIL)
    assert smtp.send(transcript) == ["503 5.5.1", "250 2.0.0", "250 2.1.0"]
    assert not smtp.closed
    assert smtp.committed == []


def test_bdat_with_no_valid_recipients_reads_the_chunk_then_refuses_it(
    smtp: Conversation,
) -> None:
    chunk = lines("RCPT TO:<alice@localhost>")
    transcript = lines(MAIL, "RCPT TO:<nobody@localhost>", f"BDAT {len(chunk)}")
    assert smtp.send(transcript + chunk + lines("NOOP")) == [
        "250 2.1.0",
        "550 5.1.1",
        "554 5.5.1",
        "250 2.0.0",
    ]
    # A refused chunk ends the transaction (RFC 3030 §2).
    assert smtp.send(lines("RCPT TO:<alice@localhost>")) == ["503 5.5.1"]


def test_data_after_bdat_is_out_of_sequence(smtp: Conversation) -> None:
    transcript = lines(MAIL, "RCPT TO:<alice@localhost>", "BDAT 3") + b"abc"
    assert smtp.send(transcript + lines("DATA")) == [
        "250 2.1.0",
        "250 2.1.5",
        "250 2.0.0",
        "503 5.5.1",
    ]
    # The chunked message can still be finished.
    assert smtp.send(lines("BDAT 2 LAST") + b"\r\n") == ["250 2.0.0"]
    assert smtp.committed[0].content == b"abc\r\n"


def test_bdat_content_with_bare_lf_is_refused_after_the_chunk(
    smtp: Conversation,
) -> None:
    chunk = b"bare\nLF\r\n"
    transcript = lines(MAIL, "RCPT TO:<alice@localhost>", f"BDAT {len(chunk)} LAST")
    assert smtp.send(transcript + chunk + lines("NOOP")) == [
        "250 2.1.0",
        "250 2.1.5",
        "550 5.6.0",
        "250 2.0.0",
    ]
    assert smtp.committed == []


def test_bdat_content_over_the_size_limit_is_refused(smtp: Conversation) -> None:
    chunk = content_of(LIMITS.max_message_octets + 1)
    transcript = lines(MAIL, "RCPT TO:<alice@localhost>", f"BDAT {len(chunk)} LAST")
    assert smtp.send(transcript + chunk + lines("NOOP")) == [
        "250 2.1.0",
        "250 2.1.5",
        "552 5.3.4",
        "250 2.0.0",
    ]
    assert smtp.committed == []


def test_bdat_size_no_message_could_have_is_a_syntax_error(smtp: Conversation) -> None:
    # Twenty digits overflow the parser's signed 64-bit chunk counter: the
    # client must get a reply, not an exception that drops the connection.
    transcript = lines(MAIL, "RCPT TO:<alice@localhost>", "BDAT 99999999999999999999")
    assert smtp.send(transcript + lines("NOOP")) == [
        "250 2.1.0",
        "250 2.1.5",
        "501 5.5.4",
        "250 2.0.0",
    ]


# Ending the session.


def test_quit_says_goodbye_and_closes(smtp: Conversation) -> None:
    assert smtp.send(lines("QUIT", "NOOP")) == ["221 2.0.0"]
    assert smtp.replies[-1] == b"221 2.0.0 mx.test closing connection\r\n"
    assert smtp.closed


def test_bad_commands_use_up_the_budget_then_421_and_close(smtp: Conversation) -> None:
    budget = LIMITS.max_bad_commands
    transcript = lines(*["XYZZY"] * (budget + 1), "NOOP")
    assert smtp.send(transcript) == ["500 5.5.2"] * budget + ["421 4.7.0"]
    assert smtp.closed


def test_refusals_of_every_kind_share_the_budget(smtp: Conversation) -> None:
    transcript = lines(
        "XYZZY",  # 500
        "RCPT TO:<alice@localhost>",  # 503
        "MAIL FROM:<sender@@example.org>",  # 553
        MAIL,
        "RCPT TO:<nobody@localhost>",  # 550
        "RCPT TO:<someone@example.org>",  # 550
        "VRFY",  # 501: the sixth error
    )
    assert smtp.send(transcript)[-1] == "421 4.7.0"
    assert smtp.closed


def test_command_line_too_long_is_refused_and_the_next_one_read(
    smtp: Conversation,
) -> None:
    # RFC 5321 §4.5.3.1.4: 512 octets with the CRLF.
    too_long = "NOOP " + "x" * 506
    assert smtp.send(lines(too_long, "NOOP")) == ["500 5.5.2", "250 2.0.0"]


def test_pipelined_transaction_is_answered_in_order(smtp: Conversation) -> None:
    # RFC 2920: the client sends the whole batch before it reads a reply.
    batch = lines(
        MAIL,
        "RCPT TO:<alice@localhost>",
        "RCPT TO:<nobody@localhost>",
        "RCPT TO:<bob@localhost>",
        "DATA",
    )
    batch += b"Subject: pipelined\r\n\r\nbody\r\n.\r\n" + lines("NOOP", "QUIT")
    assert smtp.send(batch) == [
        "250 2.1.0",
        "250 2.1.5",
        "550 5.1.1",
        "250 2.1.5",
        "354",
        "250 2.0.0",
        "250 2.0.0",
        "221 2.0.0",
    ]
    (message,) = smtp.committed
    assert message.content == b"Subject: pipelined\r\n\r\nbody\r\n"
    assert [str(r.mailbox) for r in message.envelope.recipients] == [
        "alice@localhost",
        "bob@localhost",
    ]
