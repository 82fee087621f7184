"""Micro benchmarks of the compiled parser (pytest-benchmark).

Not collected by ``make test``: ``bench/run.py`` runs this file with its own
configuration (bench/pytest.ini). Each benchmark records in ``extra_info``
the octets one round reads, so run.py can report MB/s.

DATA is fed the way a connection reads it, in 64 KiB pieces, and the events
are drained after each piece; the parser is reused between rounds, as it is
between the messages of one session.
"""

from __future__ import annotations

import pytest

from mailfast._parser import Parser
from mailfast.events import COMMAND, END_OF_DATA

READ_OCTETS = 65_536  # what one read of the transport delivers, at most
LINE = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopq\r\n"
DATA_SIZES = {"4KiB": 4 * 1024, "100KiB": 100 * 1024, "10MiB": 10 * 1024 * 1024}

COMMAND_LINES = {
    "MAIL": b"MAIL FROM:<sender@client.example> SIZE=4096 BODY=8BITMIME\r\n",
    "RCPT": b"RCPT TO:<alice@local.test>\r\n",
    "EHLO": b"EHLO client.example\r\n",
}
PIPELINED_BATCH = (
    b"MAIL FROM:<sender@client.example> SIZE=4096\r\n"
    + b"".join(b"RCPT TO:<user%d@local.test>\r\n" % i for i in range(10))
    + b"DATA\r\n"
)


def message_body(size: int, stuffed: bool) -> tuple[bytes, int]:
    """About ``size`` octets of CRLF lines as sent, ending with the terminator,
    and the content octets the parser must deliver for them.

    Stuffed: every line starts with a dot the sender doubled, the worst case
    for unstuffing (RFC 5321 §4.5.2).
    """
    line = b".." + LINE[1:] if stuffed else LINE  # content line ".he quick..."
    lines = max(1, size // len(line))
    return line * lines + b".\r\n", len(LINE) * lines


def pieces(data: bytes) -> list[memoryview]:
    view = memoryview(data)
    return [view[i : i + READ_OCTETS] for i in range(0, len(data), READ_OCTETS)]


def read_message(parser: Parser, reads: list[memoryview]) -> int:
    """Parse one DATA stream; the content octets delivered."""
    parser.start_data()
    for piece in reads:
        parser.feed(piece)
        while (event := parser.next_event()) is not None:
            if event[0] == END_OF_DATA:
                return event[2]
    raise AssertionError("no end of data")


@pytest.mark.parametrize("verb", list(COMMAND_LINES))
def bench_command_line(benchmark, verb: str) -> None:
    parser = Parser()
    line = COMMAND_LINES[verb]

    def one() -> tuple:
        parser.feed(line)
        return parser.next_event()

    event = benchmark(one)
    assert event[0] == COMMAND and event[1] == verb.encode()
    benchmark.extra_info.update(octets=len(line), commands=1)


def bench_pipelined_batch(benchmark) -> None:
    parser = Parser()

    def batch() -> int:
        parser.feed(PIPELINED_BATCH)
        count = 0
        while parser.next_event() is not None:
            count += 1
        return count

    assert benchmark(batch) == 12
    benchmark.extra_info.update(octets=len(PIPELINED_BATCH), commands=12)


@pytest.mark.parametrize("stuffing", ["plain", "dot-stuffed"])
@pytest.mark.parametrize("size", list(DATA_SIZES))
def bench_data(benchmark, size: str, stuffing: str) -> None:
    stuffed = stuffing == "dot-stuffed"
    data, expected = message_body(DATA_SIZES[size], stuffed)
    reads = pieces(data)
    parser = Parser()

    if size == "10MiB":
        delivered = benchmark.pedantic(
            read_message, args=(parser, reads), rounds=15, warmup_rounds=1
        )
    else:
        delivered = benchmark(read_message, parser, reads)
    assert delivered == expected, (delivered, expected)
    benchmark.extra_info.update(octets=len(data))
