"""Micro benchmarks of a whole SMTP transaction, parser and session, no I/O.

The driver does what mailfast.protocol does with each read, minus the
transport and the disk: feed the parser, hand every event to
``Session.receive``, switch the parser to DATA on START_DATA, keep STOREd
content in a list, and answer COMMIT with ``committed``. The client is a
PIPELINING one: each group of commands it may send together arrives as one
read (RFC 2920 §3.1), and the content arrives as one read of 4 KiB.
"""

from __future__ import annotations

from mailfast import config as configuration
from mailfast import session as steps
from mailfast._parser import Parser
from mailfast.directory import Directory
from mailfast.session import Session, SessionSettings

CONFIG = configuration.parse('[domains."local.test"]\nmailboxes = ["alice"]\n')
SETTINGS = SessionSettings.build("mailfast.bench.test", CONFIG.limits)
DIRECTORY = Directory(CONFIG)
HEADER = (
    b"From: <sender@client.example>\r\nTo: <alice@local.test>\r\nSubject: bench\r\n\r\n"
)
BODY = HEADER + (b"x" * 74 + b"\r\n") * 53  # 4 KiB, in lines of 76 octets
GREETING = b"EHLO client.example\r\n"
ENVELOPE = (
    b"MAIL FROM:<sender@client.example> SIZE=4096\r\n"
    b"RCPT TO:<alice@local.test>\r\n"
    b"DATA\r\n"
)
CONTENT_READ = BODY + b".\r\n"
QUIT = b"QUIT\r\n"


def drive(parser: Parser, session: Session, data: bytes, stored: list) -> list[bytes]:
    """One read: the replies a connection would write for it."""
    parser.feed(data)
    replies = []
    while (event := parser.next_event()) is not None:
        action, payload = session.receive(event)
        if action == steps.STORE:
            stored.append(payload)
        elif action == steps.REPLY or action == steps.CLOSE:
            replies.append(payload)
        elif action == steps.START_DATA:
            replies.append(payload)
            parser.start_data()
        elif action == steps.COMMIT:
            replies.append(session.committed("BENCH0QUEUE0ID"))
    return replies


def transaction(parser: Parser, session: Session) -> list[bytes]:
    stored: list[bytes] = []
    replies = drive(parser, session, ENVELOPE, stored)
    replies += drive(parser, session, CONTENT_READ, stored)
    return replies


def bench_transaction_in_open_session(benchmark) -> None:
    """MAIL, RCPT, DATA, 4 KiB, final dot: one message of a -d style session."""
    parser = Parser()
    session = Session(SETTINGS, DIRECTORY, "127.0.0.1")
    drive(parser, session, GREETING, [])
    replies = benchmark(transaction, parser, session)
    assert [reply[:3] for reply in replies] == [b"250", b"250", b"354", b"250"], replies
    benchmark.extra_info.update(octets=len(ENVELOPE) + len(CONTENT_READ), messages=1)


def bench_session_one_message(benchmark) -> None:
    """A new session per message: greeting, EHLO, one transaction, QUIT."""

    def whole_session() -> list[bytes]:
        parser = Parser()
        session = Session(SETTINGS, DIRECTORY, "127.0.0.1")
        replies = [session.greeting()]
        stored: list[bytes] = []
        replies += drive(parser, session, GREETING, stored)
        replies += transaction(parser, session)
        replies += drive(parser, session, QUIT, stored)
        return replies

    replies = benchmark(whole_session)
    assert [reply[:3] for reply in replies] == [
        b"220", b"250", b"250", b"250", b"354", b"250", b"221"
    ], replies  # fmt: skip
    benchmark.extra_info.update(
        octets=len(GREETING) + len(ENVELOPE) + len(CONTENT_READ) + len(QUIT), messages=1
    )
