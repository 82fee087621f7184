"""The outbound SMTP client against a real SMTP server on loopback.

Each delivery test runs on uvloop and on the standard asyncio loop: the peer
(tests/scriptedpeer.py) listens on 127.0.0.1, 127.0.0.2 or ::1 and answers as
scripted, and the tests look at both sides: the outcomes the client returns,
and what the peer received, octet for octet. The sans-I/O pieces (reply
parser, EHLO keywords, dot-stuffing) are tested first, without a loop, with
every way of splitting their input.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl

import pytest
import trustme
import uvloop

from mailfast.outcome import Status
from mailfast.relayclient import RelayClient, RelaySettings
from mailfast.relaymodel import MXHost, RelayMessage, RelayRecipient
from mailfast.smtpclient import (
    DotStuffer,
    ReplyFormatError,
    ReplyParser,
    parse_ehlo,
)
from tests.scriptedpeer import HANGUP, SILENT, ScriptedPeer

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)
SENDER = "alice@example.org"
DESTINATION = "example.test"
QUEUE_FILE_PREFIX = b"queue-file-header\n"  # the message starts at an offset


# The sans-I/O layer.


def test_reply_parser_multiline_reply_in_every_split():
    wire = (
        b"250-mx.test greets you\r\n250-PIPELINING\r\n250 SIZE 1000\r\n220 2.0.0 Go\r\n"
    )
    for size in range(1, len(wire) + 1):
        parser = ReplyParser()
        replies = []
        for start in range(0, len(wire), size):
            replies += parser.feed(wire[start : start + size])
        assert [r.code for r in replies] == [250, 220], size
        assert replies[0].lines == ("mx.test greets you", "PIPELINING", "SIZE 1000")
        assert replies[1].enhanced == "2.0.0" and replies[1].text == "Go"
        assert not parser.pending


def test_reply_parser_enhanced_code_must_match_the_reply_class():
    (reply,) = ReplyParser().feed(b"550 4.2.2 mailbox full\r\n")
    assert reply.enhanced == "" and reply.text == "mailbox full"
    (reply,) = ReplyParser().feed(b"550-5.1.1 no such\n550 5.1.1 user\n")  # bare LF
    assert (reply.code, reply.enhanced, reply.text) == (550, "5.1.1", "no such user")
    (reply,) = ReplyParser().feed(b"250\r\n")
    assert reply.code == 250 and reply.text == ""


def test_reply_parser_turns_control_characters_into_spaces():
    # A hostile MX's reply ends up in bounces, which are stored and relayed:
    # a bare CR there could end a line, or a DATA, for the next reader.
    (reply,) = ReplyParser().feed(
        b"550 5.1.1 no such\ruser\r.\rX-Injected: yes\x00\x7f\xc2\x85\r\n"
    )
    assert reply.text == "no such user . X-Injected: yes   "


@pytest.mark.parametrize(
    "wire",
    [b"hello\r\n", b"25\r\n", b"250x\r\n", b"600 nope\r\n", b"250-a\r\n251 b\r\n"],
)
def test_reply_parser_rejects_what_is_not_a_reply(wire):
    with pytest.raises(ReplyFormatError):
        ReplyParser().feed(wire)


def test_reply_parser_bounds_line_length():
    with pytest.raises(ReplyFormatError):
        ReplyParser().feed(b"250 " + b"x" * 5000)


def test_parse_ehlo_keywords():
    (reply,) = ReplyParser().feed(
        b"250-mx.test\r\n250-pipelining\r\n250-SIZE 2048\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250-DSN\r\n250-CHUNKING\r\n250 STARTTLS\r\n"
    )
    extensions = parse_ehlo(reply)
    assert extensions.pipelining and extensions.size == 2048
    assert extensions.eightbitmime and extensions.smtputf8 and extensions.dsn
    assert extensions.chunking and extensions.starttls
    (reply,) = ReplyParser().feed(b"250-mx.test\r\n250 SIZE\r\n")
    assert parse_ehlo(reply).size == 0 and not parse_ehlo(reply).pipelining
    (reply,) = ReplyParser().feed(b"250 mx.test\r\n")
    assert parse_ehlo(reply).size is None


def _unstuff(wire: bytes) -> bytes:
    """What a server keeps of DATA content (RFC 5321 §4.5.2), terminator checked."""
    mark = (b"\r\n" + wire).find(b"\r\n.\r\n")
    assert mark + 5 == len(wire) + 2, "the end-of-data mark must come only at the end"
    lines = wire[:mark].split(b"\r\n")[:-1]
    return b"".join(
        (line[1:] if line[:1] == b"." else line) + b"\r\n" for line in lines
    )


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b".\r\n",
        b"a\r\n.\r\n..\r\n.b\r\n",
        b".start\r\nmiddle\r\n.",
        b"no final line break",
        b"\r\n\r\n.\r\n",
    ],
)
def test_dot_stuffer_in_every_split(content):
    expected = content
    if content and not content.endswith(b"\r\n"):
        expected += b"\r\n"
    for cut_a, cut_b in itertools.combinations_with_replacement(
        range(len(content) + 1), 2
    ):
        stuffer = DotStuffer()
        pieces = [content[:cut_a], content[cut_a:cut_b], content[cut_b:]]
        wire = b"".join(stuffer.stuff(piece) for piece in pieces) + stuffer.end()
        assert _unstuff(wire) == expected, (cut_a, cut_b)


# Fixtures and helpers for the tests over sockets.


@pytest.fixture(
    params=[
        pytest.param(uvloop.new_event_loop, id="uvloop"),
        pytest.param(asyncio.new_event_loop, id="asyncio"),
    ]
)
def run(request):
    with asyncio.Runner(loop_factory=request.param) as runner:
        yield runner.run


@pytest.fixture
def make_message(tmp_path):
    """Write a queue file and describe the message in it."""
    counter = itertools.count(1)

    def make(content=MESSAGE, recipients=("bob@example.test",), **fields):
        path = tmp_path / f"queued{next(counter)}"
        path.write_bytes(QUEUE_FILE_PREFIX + content + b"trailing queue data")
        return RelayMessage(
            queue_id=f"Q{next(counter)}",
            sender=fields.pop("sender", SENDER),
            recipients=[
                r if isinstance(r, RelayRecipient) else RelayRecipient(r)
                for r in recipients
            ],
            content_path=str(path),
            content_offset=len(QUEUE_FILE_PREFIX),
            content_size=len(content),
            **fields,
        )

    return make


def settings_for(port: int, **overrides) -> RelaySettings:
    values = dict(
        helo_name="relay.example.org",
        port=port,
        connect_timeout_s=2.0,
        greeting_timeout_s=2.0,
        command_timeout_s=2.0,
        data_init_timeout_s=2.0,
        data_block_timeout_s=2.0,
        data_final_timeout_s=2.0,
    )
    values.update(overrides)
    return RelaySettings(**values)


def mx(*addresses: str, name: str = "mx.example.test") -> MXHost:
    return MXHost(name, 10, tuple(addresses))


async def deliver(peer, message, hosts=None, tls_required=False, **overrides):
    """Deliver once with a fresh client, closed afterwards."""
    client = RelayClient(settings_for(peer.port, **overrides))
    try:
        hosts = hosts or [mx(peer.host)]
        outcomes = await client.deliver(message, hosts, DESTINATION, tls_required)
    finally:
        await client.close()
    assert peer.errors == []
    return outcomes


def unused_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def verbs(peer, connection=0):
    return [
        line.split(" ")[0].split(":")[0]
        for line in peer.connections[connection].commands
    ]


@pytest.fixture(scope="module")
def tls_contexts():
    """A server context with a certificate from a test CA, and a client context
    that does not verify, as opportunistic TLS does."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.example.test").configure_cert(server)
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


# Delivery.


@pytest.mark.parametrize(
    "extensions",
    [
        pytest.param(("PIPELINING", "SIZE 0", "8BITMIME"), id="pipelining"),
        pytest.param(("8BITMIME",), id="one-at-a-time"),
        pytest.param(("PIPELINING", "CHUNKING"), id="chunking"),
        pytest.param(("CHUNKING",), id="chunking-one-at-a-time"),
    ],
)
def test_delivered(run, make_message, extensions):
    message = make_message(recipients=["bob@example.test", "carol@example.test"])

    async def scenario():
        async with ScriptedPeer(extensions=extensions) as peer:
            return peer, await deliver(peer, message)

    peer, outcomes = run(scenario())
    label = f"mx.example.test[127.0.0.1]:{peer.port}"
    for outcome in outcomes:
        assert outcome.status is Status.DELIVERED
        assert outcome.enhanced == "2.0.0"
        assert outcome.remote_host == label
        assert outcome.remote_reply == "250 2.0.0 Ok: queued as 1"
    (transaction,) = peer.transactions
    assert transaction.mail_from == SENDER
    assert transaction.rcpt_to == ["bob@example.test", "carol@example.test"]
    assert transaction.helo == "relay.example.org"
    assert transaction.data == MESSAGE
    assert transaction.method == ("BDAT" if "CHUNKING" in extensions else "DATA")
    assert (f"SIZE={len(MESSAGE)}" in transaction.mail_params) == (
        "SIZE 0" in extensions
    )
    assert peer.pipelining_violations == []
    assert verbs(peer)[-1] == "QUIT"  # close() ends the pooled session politely


CONTENTS = {
    "dots": b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmid.dle\r\n. \r\n",
    "no-final-crlf": b"Subject: x\r\n\r\nlast line without CRLF",
    "ends-with-dot": b"Subject: x\r\n\r\nends with\r\n.",
    "empty": b"",
    "bare-cr": b"Subject: x\r\n\r\na\rb\r\n",
}


@pytest.mark.parametrize("name", CONTENTS)
@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_content_arrives_byte_exact(run, make_message, name, chunking):
    content = CONTENTS[name]
    extensions = ("PIPELINING", "CHUNKING") if chunking else ("PIPELINING",)

    async def scenario():
        async with ScriptedPeer(extensions=extensions) as peer:
            return peer, await deliver(peer, make_message(content))

    peer, outcomes = run(scenario())
    assert outcomes[0].status is Status.DELIVERED
    expected = content
    if not chunking and content and not content.endswith(b"\r\n"):
        expected += b"\r\n"  # DATA needs the line ended before its final dot
    assert peer.transactions[0].data == expected


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_big_content_streams_in_blocks(run, make_message, chunking):
    # Over the 1 MiB read-at-once limit, with dotted lines on block edges.
    line = b"x" * 78 + b"\r\n"
    body = bytearray(b"Subject: big\r\n\r\n")
    while len(body) < 2_500_000:
        body += line
    for edge in (65_536, 131_072, 196_608 - 1, 262_144 - 2):
        body[edge : edge + 4] = b".\r\n."
    content = bytes(body) + b"."
    extensions = ("PIPELINING", "CHUNKING") if chunking else ("PIPELINING",)

    async def scenario():
        async with ScriptedPeer(extensions=extensions) as peer:
            return peer, await deliver(peer, make_message(content))

    peer, outcomes = run(scenario())
    assert outcomes[0].status is Status.DELIVERED
    assert peer.transactions[0].data == content + (b"" if chunking else b"\r\n")


def test_first_host_refuses_second_delivers(run, make_message):
    async def scenario():
        async with ScriptedPeer(host="127.0.0.2") as peer:
            hosts = [mx("127.0.0.1", name="mx1.test"), mx("127.0.0.2", name="mx2.test")]
            return peer, await deliver(peer, make_message(), hosts)

    peer, (outcome,) = run(scenario())
    assert outcome.status is Status.DELIVERED
    assert outcome.remote_host == f"mx2.test[127.0.0.2]:{peer.port}"


def test_ipv6_address(run, make_message):
    async def scenario():
        async with ScriptedPeer(host="::1") as peer:
            return peer, await deliver(peer, make_message(), [mx("::1")])

    peer, (outcome,) = run(scenario())
    assert outcome.status is Status.DELIVERED
    assert outcome.remote_host == f"mx.example.test[::1]:{peer.port}"


def test_all_hosts_down_defers_with_4_4_1(run, make_message):
    message = make_message(recipients=["bob@example.test", "carol@example.test"])
    port = unused_port()
    client = RelayClient(settings_for(port))

    async def scenario():
        try:
            hosts = [mx("127.0.0.1"), mx("127.0.0.2", "::1")]
            return await client.deliver(message, hosts, DESTINATION)
        finally:
            await client.close()

    for outcome in run(scenario()):
        assert outcome.status is Status.DEFERRED
        assert outcome.enhanced == "4.4.1"
        assert outcome.remote_host == ""


def test_no_hosts_at_all_defers(run, make_message):
    async def scenario():
        client = RelayClient(settings_for(25))
        try:
            return await client.deliver(make_message(), [], DESTINATION)
        finally:
            await client.close()

    (outcome,) = run(scenario())
    assert outcome.status is Status.DEFERRED and outcome.enhanced.startswith("4.")


@pytest.mark.parametrize("pipelining", [True, False])
def test_one_recipient_rejected_the_other_delivered(run, make_message, pipelining):
    message = make_message(recipients=["nobody@example.test", "bob@example.test"])
    replies = {"RCPT nobody@example.test": "550 5.1.1 no such user"}
    extensions = ("PIPELINING",) if pipelining else ()

    async def scenario():
        async with ScriptedPeer(replies=replies, extensions=extensions) as peer:
            return peer, await deliver(peer, message)

    peer, (rejected, delivered) = run(scenario())
    assert rejected.status is Status.FAILED
    assert rejected.enhanced == "5.1.1"
    assert rejected.remote_reply == "550 5.1.1 no such user"
    assert delivered.status is Status.DELIVERED
    assert peer.transactions[0].rcpt_to == ["bob@example.test"]


def test_one_recipient_deferred(run, make_message):
    message = make_message(recipients=["bob@example.test", "busy@example.test"])
    replies = {"RCPT busy@example.test": "450 4.2.1 mailbox busy"}

    async def scenario():
        async with ScriptedPeer(replies=replies) as peer:
            return await deliver(peer, message)

    delivered, deferred = run(scenario())
    assert delivered.status is Status.DELIVERED
    assert deferred.status is Status.DEFERRED and deferred.enhanced == "4.2.1"


@pytest.mark.parametrize("pipelining", [True, False])
def test_too_many_recipients_split_into_transactions(run, make_message, pipelining):
    recipients = [f"user{n}@example.test" for n in range(5)]
    extensions = ("PIPELINING",) if pipelining else ()

    async def scenario():
        async with ScriptedPeer(max_recipients=2, extensions=extensions) as peer:
            return peer, await deliver(peer, make_message(recipients=recipients))

    peer, outcomes = run(scenario())
    assert [o.status for o in outcomes] == [Status.DELIVERED] * 5
    assert [t.rcpt_to for t in peer.transactions] == [
        recipients[0:2],
        recipients[2:4],
        recipients[4:5],
    ]
    assert {t.connection for t in peer.transactions} == {1}
    assert [t.data for t in peer.transactions] == [MESSAGE] * 3


def test_too_many_recipients_as_552_5_5_3(run, make_message):
    # RFC 5321 §4.5.3.1.10: an old server may say 552; the enhanced code
    # tells it from "mailbox full", and the rest go in a new transaction.
    recipients = ["a@example.test", "b@example.test", "c@example.test"]
    replies = {"RCPT c@example.test": ["552 5.5.3 Too many recipients"]}

    async def scenario():
        async with ScriptedPeer(replies=replies) as peer:
            return peer, await deliver(peer, make_message(recipients=recipients))

    peer, outcomes = run(scenario())
    assert [o.status for o in outcomes] == [Status.DELIVERED] * 3
    assert [t.rcpt_to for t in peer.transactions] == [recipients[:2], recipients[2:]]


def test_no_recipient_accepted_resets_without_content(run, make_message):
    message = make_message(recipients=["a@example.test", "b@example.test"])
    replies = {"RCPT": "550 5.1.1 no such user"}

    async def scenario():
        async with ScriptedPeer(replies=replies) as peer:
            client = RelayClient(settings_for(peer.port))
            try:
                first = await client.deliver(message, [mx(peer.host)], DESTINATION)
                peer._script["RCPT"] = "250 2.1.5 Ok"
                second = await client.deliver(message, [mx(peer.host)], DESTINATION)
            finally:
                await client.close()
            return peer, first, second

    peer, first, second = run(scenario())
    assert [o.status for o in first] == [Status.FAILED, Status.FAILED]
    assert [o.status for o in second] == [Status.DELIVERED, Status.DELIVERED]
    # The pipelined DATA was refused (554), RSET made the session clean
    # again, and it carried the next message.
    assert verbs(peer) == [
        "EHLO", "MAIL", "RCPT", "RCPT", "DATA", "RSET",
        "MAIL", "RCPT", "RCPT", "DATA", "QUIT",
    ]  # fmt: skip
    assert len(peer.transactions) == 1


@pytest.mark.parametrize(
    "reply, status",
    [
        ("554 5.6.0 content rejected", Status.FAILED),
        ("451 4.3.0 try again later", Status.DEFERRED),
        ("421 4.3.2 shutting down", Status.DEFERRED),
    ],
)
def test_reply_to_the_final_dot_decides(run, make_message, reply, status):
    async def scenario():
        async with ScriptedPeer(replies={"DATA_END": reply}) as peer:
            return await deliver(peer, make_message())

    (outcome,) = run(scenario())
    assert outcome.status is status
    assert outcome.remote_reply == reply


@pytest.mark.parametrize("script", [HANGUP, SILENT], ids=["dropped", "silent"])
@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_no_reply_after_the_final_dot_defers(run, make_message, script, chunking):
    # The server may have the message: another host must not get it too.
    extensions = ("PIPELINING", "CHUNKING") if chunking else ("PIPELINING",)

    async def scenario():
        async with (
            ScriptedPeer(replies={"DATA_END": script}, extensions=extensions) as peer,
            ScriptedPeer(host="127.0.0.2", port=peer.port) as backup,
        ):
            hosts = [mx("127.0.0.1"), mx("127.0.0.2")]
            outcomes = await deliver(
                peer, make_message(), hosts, data_final_timeout_s=0.2
            )
            return peer, backup, outcomes

    peer, backup, (outcome,) = run(scenario())
    assert outcome.status is Status.DEFERRED
    assert outcome.enhanced == "4.4.2"
    assert len(peer.transactions) == 1
    assert backup.connections == []


def test_connection_lost_before_the_final_dot_tries_next_host(run, make_message):
    async def scenario():
        async with (
            ScriptedPeer(replies={"DATA": HANGUP}) as peer,
            ScriptedPeer(host="127.0.0.2", port=peer.port) as backup,
        ):
            hosts = [mx("127.0.0.1"), mx("127.0.0.2", name="backup.test")]
            return backup, await deliver(peer, make_message(), hosts)

    backup, (outcome,) = run(scenario())
    assert outcome.status is Status.DELIVERED
    assert outcome.remote_host.startswith("backup.test[127.0.0.2]")
    assert len(backup.transactions) == 1


def test_mail_from_5xx_fails_every_recipient(run, make_message):
    message = make_message(recipients=["a@example.test", "b@example.test"])

    async def scenario():
        async with ScriptedPeer(replies={"MAIL": "553 5.7.1 sender refused"}) as peer:
            return peer, await deliver(peer, message)

    peer, outcomes = run(scenario())
    for outcome in outcomes:
        assert outcome.status is Status.FAILED
        assert outcome.remote_reply == "553 5.7.1 sender refused"
    assert peer.transactions == []


@pytest.mark.parametrize(
    "replies",
    [
        {"MAIL": "451 4.3.0 try later"},
        {"GREETING": "421 4.3.2 too busy"},
        {"GREETING": "554 5.7.1 go away"},
        {"EHLO": "421 4.3.2 closing", "HELO": "421 4.3.2 closing"},
        {"RCPT": "421 4.3.2 closing"},
        {"RCPT": HANGUP},
    ],
    ids=[
        "mail-4xx",
        "greeting-421",
        "greeting-554",
        "ehlo-421",
        "rcpt-421",
        "rcpt-lost",
    ],
)
def test_refusal_before_content_tries_next_host(run, make_message, replies):
    async def scenario():
        async with (
            ScriptedPeer(replies=replies) as peer,
            ScriptedPeer(host="127.0.0.2", port=peer.port) as backup,
        ):
            hosts = [mx("127.0.0.1"), mx("127.0.0.2", name="backup.test")]
            return backup, await deliver(peer, make_message(), hosts)

    backup, (outcome,) = run(scenario())
    assert outcome.status is Status.DELIVERED
    assert len(backup.transactions) == 1


@pytest.mark.parametrize(
    "replies, enhanced",
    [
        ({"GREETING": "554 5.7.1 go away"}, "4.7.1"),
        ({"MAIL": "452 4.3.1 no space"}, "4.3.1"),
        ({"GREETING": "hello, not SMTP"}, "4.5.0"),
        ({"EHLO": "500 5.5.1 what", "HELO": "501 5.5.4 no"}, "4.5.4"),
    ],
)
def test_refusal_by_the_last_host_defers(run, make_message, replies, enhanced):
    async def scenario():
        async with ScriptedPeer(replies=replies) as peer:
            return await deliver(peer, make_message())

    (outcome,) = run(scenario())
    assert outcome.status is Status.DEFERRED
    assert outcome.enhanced == enhanced


def test_ehlo_refused_falls_back_to_helo_without_extensions(run, make_message):
    message = make_message(ret="HDRS", envid="ID1")

    async def scenario():
        async with ScriptedPeer(replies={"EHLO": "502 5.5.2 no EHLO here"}) as peer:
            return peer, await deliver(peer, message)

    peer, (outcome,) = run(scenario())
    assert outcome.status is Status.DELIVERED
    assert verbs(peer)[:2] == ["EHLO", "HELO"]
    assert peer.transactions[0].mail_params == ()
    assert peer.pipelining_violations == []


# Extensions: what the server must offer for this message.


def test_8bit_content_to_a_server_without_8bitmime_fails(run, make_message):
    message = make_message(MESSAGE + "Grüße\r\n".encode(), body="8BITMIME")

    async def scenario():
        async with ScriptedPeer(extensions=("PIPELINING",)) as peer:
            return peer, await deliver(peer, message)

    peer, (outcome,) = run(scenario())
    assert outcome.status is Status.FAILED and outcome.enhanced == "5.6.3"
    assert "MAIL" not in verbs(peer)


@pytest.mark.parametrize("offered", [True, False])
def test_body_8bitmime_sent_only_when_offered(run, make_message, offered):
    message = make_message(body="8BITMIME")  # declared, but pure ASCII
    extensions = ("PIPELINING", "8BITMIME") if offered else ("PIPELINING",)

    async def scenario():
        async with ScriptedPeer(extensions=extensions) as peer:
            return peer, await deliver(peer, message)

    peer, (outcome,) = run(scenario())
    assert outcome.status is Status.DELIVERED
    assert ("BODY=8BITMIME" in peer.transactions[0].mail_params) == offered


def test_8bit_check_reads_big_files_too(run, make_message):
    content = MESSAGE + b"x" * 1_500_000 + "é\r\n".encode()
    message = make_message(content, body="8BITMIME")

    async def scenario():
        async with ScriptedPeer(extensions=("PIPELINING",)) as peer:
            return await deliver(peer, message)

    (outcome,) = run(scenario())
    assert outcome.enhanced == "5.6.3"


UTF8_HEADER = "Subject: Grüße\r\n\r\nbody\r\n".encode()
UTF8_BODY = "Subject: hello\r\n\r\nGrüße\r\n".encode()


@pytest.mark.parametrize(
    "recipient, content, offered, status, enhanced",
    [
        ("jörg@example.test", MESSAGE, False, Status.FAILED, "5.6.7"),
        ("bob@example.test", UTF8_HEADER, False, Status.FAILED, "5.6.9"),
        ("bob@example.test", UTF8_BODY, False, Status.DELIVERED, "2.0.0"),
        ("jörg@example.test", UTF8_HEADER, True, Status.DELIVERED, "2.0.0"),
    ],
)
def test_smtputf8(run, make_message, recipient, content, offered, status, enhanced):
    message = make_message(content, [recipient], smtputf8=True, body="8BITMIME")
    extensions = ["PIPELINING", "8BITMIME"] + (["SMTPUTF8"] if offered else [])

    async def scenario():
        async with ScriptedPeer(extensions=extensions) as peer:
            return peer, await deliver(peer, message)

    peer, (outcome,) = run(scenario())
    assert (outcome.status, outcome.enhanced) == (status, enhanced)
    if status is Status.DELIVERED:
        (transaction,) = peer.transactions
        assert ("SMTPUTF8" in transaction.mail_params) == offered
        assert transaction.rcpt_to == [recipient]
        assert transaction.data == content


def test_smtputf8_header_check_on_a_big_file(run, make_message):
    content = UTF8_HEADER + b"x" * 1_500_000 + b"\r\n"
    message = make_message(content, smtputf8=True, body="8BITMIME")

    async def scenario():
        async with ScriptedPeer(extensions=("PIPELINING", "8BITMIME")) as peer:
            return await deliver(peer, message)

    (outcome,) = run(scenario())
    assert outcome.enhanced == "5.6.9"


@pytest.mark.parametrize(
    "size, status", [("SIZE 100", Status.FAILED), ("SIZE 0", Status.DELIVERED)]
)
def test_size_limit(run, make_message, size, status):
    message = make_message(MESSAGE + b"x" * 100 + b"\r\n")

    async def scenario():
        async with ScriptedPeer(extensions=("PIPELINING", size)) as peer:
            return peer, await deliver(peer, message)

    peer, (outcome,) = run(scenario())
    assert outcome.status is status
    if status is Status.FAILED:
        assert outcome.enhanced == "5.3.4"
        assert "MAIL" not in verbs(peer)
    else:
        assert f"SIZE={message.content_size}" in peer.transactions[0].mail_params


@pytest.mark.parametrize("offered", [True, False])
def test_dsn_parameters_only_when_offered(run, make_message, offered):
    recipient = RelayRecipient(
        "bob@example.test", ("SUCCESS", "FAILURE"), "rfc822;bob@example.test"
    )
    message = make_message(recipients=[recipient], ret="HDRS", envid="QQ+2B1")
    extensions = ("PIPELINING", "DSN") if offered else ("PIPELINING",)

    async def scenario():
        async with ScriptedPeer(extensions=extensions) as peer:
            return peer, await deliver(peer, message)

    peer, (outcome,) = run(scenario())
    assert outcome.status is Status.DELIVERED
    (transaction,) = peer.transactions
    if offered:
        assert transaction.mail_params == ("RET=HDRS", "ENVID=QQ+2B1")
        assert transaction.rcpt_params["bob@example.test"] == (
            "NOTIFY=SUCCESS,FAILURE",
            "ORCPT=rfc822;bob@example.test",
        )
    else:
        assert transaction.mail_params == ()
        assert transaction.rcpt_params["bob@example.test"] == ()


def test_line_break_in_the_envelope_is_never_sent(run, make_message):
    message = make_message(
        recipients=["bob@example.test\r\nRSET", "carol@example.test"]
    )

    async def scenario():
        async with ScriptedPeer() as peer:
            return peer, await deliver(peer, message)

    peer, (smuggled, fine) = run(scenario())
    assert smuggled.status is Status.FAILED
    assert fine.status is Status.DELIVERED
    assert peer.transactions[0].rcpt_to == ["carol@example.test"]


# Connections: reuse, limits, timeouts.


def test_connection_is_reused(run, make_message):
    async def scenario():
        async with ScriptedPeer() as peer:
            client = RelayClient(settings_for(peer.port))
            try:
                for _ in range(3):
                    (outcome,) = await client.deliver(
                        make_message(), [mx(peer.host)], DESTINATION
                    )
                    assert outcome.status is Status.DELIVERED
            finally:
                await client.close()
            return peer

    peer = run(scenario())
    assert len(peer.connections) == 1
    assert len(peer.transactions) == 3
    assert verbs(peer).count("EHLO") == 1
    assert verbs(peer)[-1] == "QUIT"


def test_idle_connection_is_closed_with_quit(run, make_message):
    async def scenario():
        async with ScriptedPeer() as peer:
            client = RelayClient(settings_for(peer.port, idle_reuse_s=0.05))
            try:
                await client.deliver(make_message(), [mx(peer.host)], DESTINATION)
                await asyncio.sleep(0.3)
                assert peer.connections[0].closed
                await client.deliver(make_message(), [mx(peer.host)], DESTINATION)
            finally:
                await client.close()
            return peer

    peer = run(scenario())
    assert len(peer.connections) == 2
    assert verbs(peer, 0)[-1] == "QUIT"


def test_reused_connection_closed_by_the_server_reconnects(run, make_message):
    async def scenario():
        async with ScriptedPeer() as peer:
            client = RelayClient(settings_for(peer.port))
            try:
                first = await client.deliver(
                    make_message(), [mx(peer.host)], DESTINATION
                )
                await peer.drop_connections()
                second = await client.deliver(
                    make_message(), [mx(peer.host)], DESTINATION
                )
            finally:
                await client.close()
            return peer, first + second

    peer, outcomes = run(scenario())
    assert [o.status for o in outcomes] == [Status.DELIVERED] * 2
    assert len(peer.connections) == 2


@pytest.mark.parametrize("pipelining", [True, False])
def test_reused_connection_failing_its_first_command_reconnects(
    run, make_message, pipelining
):
    # The server hangs up just as the reused session sends MAIL: the race
    # the pool cannot see coming. The message goes out on a new connection.
    replies = {"MAIL": ["250 2.1.0 Ok", HANGUP]}
    extensions = ("PIPELINING",) if pipelining else ()

    async def scenario():
        async with ScriptedPeer(replies=replies, extensions=extensions) as peer:
            client = RelayClient(settings_for(peer.port))
            try:
                outcomes = []
                for _ in range(2):
                    outcomes += await client.deliver(
                        make_message(), [mx(peer.host)], DESTINATION
                    )
            finally:
                await client.close()
            return peer, outcomes

    peer, outcomes = run(scenario())
    assert [o.status for o in outcomes] == [Status.DELIVERED] * 2
    assert [t.connection for t in peer.transactions] == [1, 2]


def test_connections_per_destination_are_limited(run, make_message):
    async def scenario():
        async with ScriptedPeer(delays={"DATA_END": 0.05}) as peer:
            client = RelayClient(settings_for(peer.port, max_per_destination=3))
            try:
                results = await asyncio.gather(
                    *(
                        client.deliver(make_message(), [mx(peer.host)], DESTINATION)
                        for _ in range(10)
                    )
                )
            finally:
                await client.close()
            return peer, [outcome for outcomes in results for outcome in outcomes]

    peer, outcomes = run(scenario())
    assert [o.status for o in outcomes] == [Status.DELIVERED] * 10
    assert peer.max_concurrent == 3
    assert len(peer.connections) == 3  # and the three were reused
    assert len(peer.transactions) == 10


def test_greeting_timeout(run, make_message):
    async def scenario():
        async with ScriptedPeer(replies={"GREETING": SILENT}) as peer:
            return await deliver(peer, make_message(), greeting_timeout_s=0.2)

    (outcome,) = run(scenario())
    assert outcome.status is Status.DEFERRED
    assert outcome.enhanced == "4.4.2"
    assert "greeting" in outcome.text


@pytest.mark.parametrize("pipelining", [True, False])
def test_command_timeout_tries_next_host(run, make_message, pipelining):
    # The peer never answers RCPT. (Pipelined, it still answers the DATA
    # that follows, and the client takes that as the RCPT reply; it is the
    # reply to DATA that never comes.)
    extensions = ("PIPELINING",) if pipelining else ()

    async def scenario():
        async with (
            ScriptedPeer(replies={"RCPT": SILENT}, extensions=extensions) as peer,
            ScriptedPeer(host="127.0.0.2", port=peer.port) as backup,
        ):
            hosts = [mx("127.0.0.1"), mx("127.0.0.2")]
            outcomes = await deliver(
                peer,
                make_message(),
                hosts,
                command_timeout_s=0.2,
                data_init_timeout_s=0.2,
            )
            return backup, outcomes

    backup, (outcome,) = run(scenario())
    assert outcome.status is Status.DELIVERED
    assert len(backup.transactions) == 1


def test_unexpected_error_defers_and_logs(run, make_message, caplog):
    message = make_message()
    message.content_path += ".missing"

    async def scenario():
        async with ScriptedPeer() as peer:
            return await deliver(peer, message)

    with caplog.at_level(logging.ERROR, logger="mailfast.relay"):
        (outcome,) = run(scenario())
    assert outcome.status is Status.DEFERRED and outcome.enhanced == "4.3.0"
    assert any(record.exc_info for record in caplog.records)


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_queue_file_shorter_than_recorded_never_completes_a_message(
    run, make_message, chunking, caplog
):
    # The file ends mid-stream: the connection is dropped without an end of
    # data, so the server cannot take the truncated message for a whole one.
    message = make_message(MESSAGE + b"x" * 1_500_000 + b"\r\n")
    message.content_size += 200_000
    extensions = ("PIPELINING", "CHUNKING") if chunking else ("PIPELINING",)

    async def scenario():
        async with ScriptedPeer(extensions=extensions) as peer:
            return peer, await deliver(peer, message)

    with caplog.at_level(logging.ERROR, logger="mailfast.relay"):
        peer, (outcome,) = run(scenario())
    assert outcome.status is Status.DEFERRED and outcome.enhanced == "4.3.0"
    assert peer.transactions == []


# STARTTLS.


def test_starttls_opportunistic(run, make_message, tls_contexts):
    server_context, client_context = tls_contexts

    async def scenario():
        async with ScriptedPeer(tls_context=server_context) as peer:
            outcomes = await deliver(peer, make_message(), tls_context=client_context)
            return peer, outcomes

    peer, (outcome,) = run(scenario())
    assert outcome.status is Status.DELIVERED
    assert peer.transactions[0].tls
    assert verbs(peer)[:3] == ["EHLO", "STARTTLS", "EHLO"]


def test_starttls_not_tried_without_a_context(run, make_message, tls_contexts):
    async def scenario():
        async with ScriptedPeer(tls_context=tls_contexts[0]) as peer:
            return peer, await deliver(peer, make_message())

    peer, (outcome,) = run(scenario())
    assert outcome.status is Status.DELIVERED
    assert "STARTTLS" not in verbs(peer)


@pytest.mark.parametrize(
    "peer_options",
    [
        pytest.param({"tls_garbage": True}, id="garbage"),
        # Octets after the 220 were not protected by TLS: a man in the middle
        # could have put them there.
        pytest.param(
            {"tls_garbage": True, "replies": {"STARTTLS": "220 go\n250 injected"}},
            id="injected",
        ),
    ],
)
def test_failed_handshake_falls_back_to_plain_text(
    run, make_message, tls_contexts, peer_options
):
    async def scenario():
        async with ScriptedPeer(**peer_options) as peer:
            outcomes = await deliver(peer, make_message(), tls_context=tls_contexts[1])
            return peer, outcomes

    peer, (outcome,) = run(scenario())
    assert outcome.status is Status.DELIVERED
    assert len(peer.connections) == 2
    assert "STARTTLS" not in verbs(peer, 1)
    assert not peer.transactions[0].tls


@pytest.mark.parametrize(
    "peer_options, enhanced",
    [
        pytest.param({}, "4.7.4", id="not-offered"),
        pytest.param({"tls_garbage": True}, "4.7.5", id="handshake-fails"),
        pytest.param(
            {"tls_garbage": True, "replies": {"STARTTLS": "454 4.7.0 not now"}},
            "4.7.0",
            id="refused",
        ),
    ],
)
def test_tls_required(run, make_message, tls_contexts, peer_options, enhanced):
    async def scenario():
        async with ScriptedPeer(**peer_options) as peer:
            outcomes = await deliver(
                peer, make_message(), tls_required=True, tls_context=tls_contexts[1]
            )
            return peer, outcomes

    peer, (outcome,) = run(scenario())
    assert outcome.status is Status.DEFERRED
    assert outcome.enhanced == enhanced
    assert peer.transactions == []
    assert all("MAIL" not in verbs(peer, n) for n in range(len(peer.connections)))


def test_tls_required_and_available(run, make_message, tls_contexts):
    server_context, client_context = tls_contexts

    async def scenario():
        async with ScriptedPeer(tls_context=server_context) as peer:
            client = RelayClient(settings_for(peer.port, tls_context=client_context))
            try:
                outcomes = []
                for tls_required in (False, True):
                    outcomes += await client.deliver(
                        make_message(), [mx(peer.host)], DESTINATION, tls_required
                    )
            finally:
                await client.close()
            return peer, outcomes

    peer, outcomes = run(scenario())
    assert [o.status for o in outcomes] == [Status.DELIVERED] * 2
    assert [t.tls for t in peer.transactions] == [True, True]
    assert len(peer.connections) == 1  # the TLS session was reused


# The peer itself, as the end-to-end tests will use it.


def test_scripted_peer_in_a_thread(make_message):
    with ScriptedPeer(extensions=("CHUNKING",)).in_thread() as peer:

        async def scenario():
            return await deliver(peer, make_message())

        (outcome,) = asyncio.run(scenario())
        (transaction,) = peer.wait_transactions(1, timeout_s=5)
    assert outcome.status is Status.DELIVERED
    assert transaction.data == MESSAGE and transaction.method == "BDAT"
