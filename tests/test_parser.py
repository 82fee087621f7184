"""The wire parser: every test runs on the Cython parser and on its Python twin.

Transcripts come from tests/parser_cases.py and are fed whole, per line, per
byte, split at every CR|LF, around every dot, and at random points; a driver
switches modes the way the session does. Differential tests then hold the two
implementations to the same events on generated input.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailfast import _parser, _pyparser
from mailfast.events import (
    BAD_COMMAND,
    COMMAND,
    CONTENT,
    END_OF_CHUNK,
    END_OF_DATA,
    REASON_NUL,
    REASON_TOO_LONG,
)
from tests.parser_cases import CASES, FINISHED, PATH_CASES, message

IMPLS = [pytest.param(_parser, id="cython"), pytest.param(_pyparser, id="python")]

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class Driver:
    """Feeds a parser and reacts to its events as the session will."""

    def __init__(self, impl, **limits):
        self.parser = impl.Parser(**limits)
        self.events = []
        self.in_bdat = False  # a BDAT transaction is open: the next chunk is not first
        self.last_chunk = False

    def feed(self, piece):
        self.parser.feed(piece)
        while (event := self.parser.next_event()) is not None:
            self.events.append(event)
            self._react(event)

    def _react(self, event):
        kind = event[0]
        if kind == COMMAND and event[1] == b"DATA" and not event[2]:
            self.parser.start_data()
        elif kind == COMMAND and event[1] == b"BDAT":
            words = event[2].split()
            if (
                1 <= len(words) <= 2
                and words[0].isdigit()
                and len(words[0]) <= 6
                and words[1:] in ([], [b"LAST"])
            ):
                self.parser.start_chunk(int(words[0]), not self.in_bdat)
                self.in_bdat = True
                self.last_chunk = len(words) == 2
        elif kind == END_OF_CHUNK and self.last_chunk:
            self.events.append((FINISHED, self.parser.finish_chunks()))
            self.in_bdat = False


def merged(events):
    """Adjacent CONTENT events joined: how they are split is not part of the API."""
    out = []
    for event in events:
        if event[0] == CONTENT and out and out[-1][0] == CONTENT:
            out[-1] = (CONTENT, out[-1][1] + event[1])
        else:
            out.append(event)
    return out


def run(impl, pieces, **limits):
    driver = Driver(impl, **limits)
    for piece in pieces:
        driver.feed(piece)
    return merged(driver.events)


def cut(data, positions):
    """data split at the given offsets."""
    bounds = [0, *sorted({p for p in positions if 0 < p < len(data)}), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def offsets_after(data, octets):
    return [i + 1 for i, octet in enumerate(data) if octet in octets]


SPLITS = {
    "whole": lambda data: [data],
    "per-byte": lambda data: cut(data, range(len(data))),
    "per-line": lambda data: cut(data, offsets_after(data, b"\n")),
    "cr|lf": lambda data: cut(data, offsets_after(data, b"\r")),
    "around-dots": lambda data: cut(
        data, offsets_after(data, b".") + [i - 1 for i in offsets_after(data, b".")]
    ),
}


# -- transcripts --------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.parametrize("impl", IMPLS)
def test_transcript(impl, case, split):
    assert run(impl, split(case.transcript), **case.limits) == case.expected


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.parametrize("impl", IMPLS)
@SETTINGS
@given(data=st.data())
def test_transcript_random_splits(impl, case, data):
    size = len(case.transcript)
    positions = data.draw(st.lists(st.integers(1, max(size - 1, 1)), max_size=12))
    assert run(impl, cut(case.transcript, positions), **case.limits) == case.expected


# -- differential -------------------------------------------------------------

TOKENS = [
    b"\r",
    b"\n",
    b".",
    b"..",
    b"\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\x00",
    b" ",
    b"\t",
    b"a",
    b"xxxxxxx",
    b"DATA\r\n",
    b"data\n",
    b"BDAT 3\r\n",
    b"BDAT 2 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"NOOP\r\n",
]
wire = st.lists(
    st.one_of(st.sampled_from(TOKENS), st.binary(max_size=6)), max_size=50
).map(b"".join)
limits = st.fixed_dictionaries(
    {
        "max_command_octets": st.sampled_from([1, 6, 16, 512]),
        "max_data_line_octets": st.sampled_from([1, 4, 10, 1000]),
    }
)


EVENT_KINDS = {COMMAND, BAD_COMMAND, CONTENT, END_OF_DATA, END_OF_CHUNK, FINISHED}


def trace(impl, pieces, limits):
    """Events per feed, each batch followed by the parser's mode and backlog."""
    driver = Driver(impl, **limits)
    batches = []
    for piece in pieces:
        driver.events = []
        driver.feed(piece)
        batches.append(
            (merged(driver.events), driver.parser.mode, driver.parser.buffered)
        )
    return batches


@settings(max_examples=1500, deadline=None)
@given(
    prefix=st.sampled_from([b"", b"DATA\r\n", b"BDAT 9\r\n"]),
    body=wire,
    limits=limits,
    data=st.data(),
)
def test_differential(prefix, body, limits, data):
    transcript = prefix + body
    positions = data.draw(
        st.lists(st.integers(1, max(len(transcript), 1)), max_size=10)
    )
    pieces = cut(transcript, positions)
    expected = trace(_pyparser, pieces, limits)
    assert trace(_parser, pieces, limits) == expected
    for events, _, _ in expected:
        for event in events:
            assert event[0] in EVENT_KINDS, event
            assert event[0] != CONTENT or event[1]


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=300), data=st.data())
def test_differential_arbitrary_bytes(body, data):
    transcript = b"DATA\r\n" + body
    positions = data.draw(st.lists(st.integers(1, len(transcript)), max_size=10))
    pieces = cut(transcript, positions)
    limits = {"max_command_octets": 512, "max_data_line_octets": 20}
    assert trace(_parser, pieces, limits) == trace(_pyparser, pieces, limits)


content_line = st.one_of(
    st.sampled_from([b"", b".", b"..", b".\r", b"x.", b". "]),
    st.binary(max_size=40).map(lambda line: b"." + line),
    st.binary(max_size=40),
).map(lambda line: line.replace(b"\r", b"").replace(b"\n", b""))


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=150, deadline=None)
@given(lines=st.lists(content_line, max_size=30), data=st.data())
def test_dot_stuffing_round_trip(impl, lines, data):
    content = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join(
        (b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines
    )
    transcript = b"DATA\r\n" + stuffed + b".\r\nNOOP\r\n"
    positions = data.draw(st.lists(st.integers(1, len(transcript) - 1), max_size=10))
    events = run(impl, cut(transcript, positions))
    assert events == message(content) + [(COMMAND, b"NOOP", b"")]


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=100, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=20), min_size=1, max_size=5),
    data=st.data(),
)
def test_chunks_round_trip(impl, chunks, data):
    transcript = b"".join(
        b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if i == len(chunks) - 1 else b"")
        + chunk
        for i, chunk in enumerate(chunks)
    )
    positions = data.draw(st.lists(st.integers(1, len(transcript) - 1), max_size=10))
    events = run(impl, cut(transcript, positions))
    content = b"".join(event[1] for event in events if event[0] == CONTENT)
    assert content == b"".join(chunks)
    assert [e for e in events if e[0] == END_OF_CHUNK][-1][2] == len(content)


# -- buffering ----------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_endless_command_line_keeps_memory_bounded(impl):
    parser = impl.Parser()
    events = []
    read = b"A" * 65536
    for _ in range(10 * 1024 * 1024 // len(read)):
        parser.feed(read)
        while (event := parser.next_event()) is not None:
            events.append(event)
        assert parser.buffered < 512
    parser.feed(b"AAAA\r\nNOOP\r\n")
    events += [parser.next_event(), parser.next_event()]
    assert events == [(BAD_COMMAND, REASON_TOO_LONG), (COMMAND, b"NOOP", b""), None]


@pytest.mark.parametrize("impl", IMPLS)
def test_one_huge_feed_is_released(impl):
    parser = impl.Parser()
    parser.feed(b"B" * (10 * 1024 * 1024))
    assert parser.next_event() == (BAD_COMMAND, REASON_TOO_LONG)
    assert parser.next_event() is None
    assert parser.buffered == 0
    parser.feed(b"\nNOOP\n")
    assert parser.next_event() == (COMMAND, b"NOOP", b"")


@pytest.mark.parametrize("impl", IMPLS)
def test_data_holds_back_only_a_possible_terminator(impl):
    parser = impl.Parser()
    parser.start_data()
    parser.feed(b"abc\r")
    assert parser.next_event() == (CONTENT, b"abc\r")
    assert parser.buffered == 0
    parser.feed(b"\n.")
    assert parser.next_event() == (CONTENT, b"\n")
    assert parser.next_event() is None
    assert parser.buffered == 1
    parser.feed(b"\r")
    assert parser.next_event() is None
    assert parser.buffered == 2
    parser.feed(b"\nNOOP")
    assert parser.next_event() == (END_OF_DATA, 0, 5)
    assert parser.mode == "command"
    assert parser.buffered == 4


@pytest.mark.parametrize("impl", IMPLS)
def test_whole_body_is_one_content_event(impl):
    body = b"".join(b".%073d\r\n" % i for i in range(1400))
    parser = impl.Parser()
    parser.start_data()
    parser.feed(body + b".\r\n")
    content = parser.next_event()
    assert content == (CONTENT, body.replace(b"\r\n.", b"\r\n")[1:])
    assert parser.next_event() == (END_OF_DATA, 0, len(content[1]))


# -- API ----------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_modes(impl):
    parser = impl.Parser()
    assert parser.mode == "command"
    assert parser.next_event() is None
    parser.start_data()
    assert parser.mode == "data"
    with pytest.raises(RuntimeError):
        parser.start_data()
    with pytest.raises(RuntimeError):
        parser.start_chunk(1, True)
    with pytest.raises(RuntimeError):
        parser.finish_chunks()
    parser.feed(b".\r\n")
    assert parser.next_event() == (END_OF_DATA, 0, 0)
    assert parser.mode == "command"
    parser.start_chunk(0, True)
    assert parser.mode == "chunk"
    assert parser.next_event() == (END_OF_CHUNK, 0, 0)
    assert parser.mode == "command"
    assert parser.finish_chunks() == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_invalid_arguments(impl):
    with pytest.raises(ValueError):
        impl.Parser(max_command_octets=0)
    with pytest.raises(ValueError):
        impl.Parser(max_data_line_octets=0)
    with pytest.raises(ValueError):
        impl.Parser().start_chunk(-1, True)


@pytest.mark.parametrize("impl", IMPLS)
def test_feed_accepts_buffers(impl):
    parser = impl.Parser()
    read = bytearray(b"xxNOOP\r\nRSET\r\n")
    parser.feed(memoryview(read)[2:8])
    parser.feed(bytearray(b"RSET"))
    parser.feed(b"")
    parser.feed(memoryview(b"\r\n"))
    assert parser.next_event() == (COMMAND, b"NOOP", b"")
    assert parser.next_event() == (COMMAND, b"RSET", b"")
    assert parser.next_event() is None


@pytest.mark.parametrize("impl", IMPLS)
def test_partial_command_line_becomes_content(impl):
    parser = impl.Parser()
    parser.feed(b"DATA\r\nab\r")
    assert parser.next_event() == (COMMAND, b"DATA", b"")
    parser.start_data()
    assert parser.next_event() == (CONTENT, b"ab\r")


# -- parse_path_argument ------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "keyword", "expected"),
    PATH_CASES,
    ids=[repr(argument) for argument, _, _ in PATH_CASES],
)
@pytest.mark.parametrize("impl", IMPLS)
def test_parse_path_argument(impl, argument, keyword, expected):
    assert impl.parse_path_argument(argument, keyword) == expected


@settings(max_examples=1000, deadline=None)
@given(
    argument=st.lists(
        st.sampled_from([b"FROM:", b"to:", b" ", b"<", b">", b'"', b"\\", b"=", b"-"])
        | st.binary(max_size=3),
        max_size=12,
    ).map(b"".join),
    keyword=st.sampled_from([b"FROM:", b"TO:"]),
)
def test_parse_path_argument_differential(argument, keyword):
    expected = _pyparser.parse_path_argument(argument, keyword)
    assert _parser.parse_path_argument(argument, keyword) == expected


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (
            b"dGVzdA==\r\nnoop\r\n",
            [(COMMAND, b"", b"dGVzdA=="), (COMMAND, b"NOOP", b"")],
        ),
        (b"a b C\n", [(COMMAND, b"", b"a b C")]),
        (b"*\r\n", [(COMMAND, b"", b"*")]),
        (
            b"a\x00b\r\nnoop x\r\n",
            [(BAD_COMMAND, REASON_NUL), (COMMAND, b"NOOP", b"x")],
        ),
    ],
    ids=["base64-then-command", "bare-lf-spaces-case", "cancel", "bad-line-clears"],
)
@pytest.mark.parametrize("per_byte", [False, True], ids=["whole", "per-byte"])
def test_raw_line_keeps_case_and_spaces_once(impl, wire, expected, per_byte):
    parser = impl.Parser()
    parser.expect_raw_line()
    for piece in [wire[i : i + 1] for i in range(len(wire))] if per_byte else [wire]:
        parser.feed(piece)
    events = []
    while (event := parser.next_event()) is not None:
        events.append(event)
    assert events == expected
