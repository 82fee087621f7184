"""Client transcripts and the events both parsers must produce for them.

Each expected list is what tests.test_parser's driver records: events with
adjacent CONTENT merged, plus a (FINISHED, flags) entry after the last BDAT
chunk, where the driver calls finish_chunks() the way the session does.
"""

from typing import NamedTuple

from mailfast.events import (
    BAD_COMMAND,
    COMMAND,
    CONTENT,
    CONTENT_BARE_CR,
    CONTENT_BARE_LF,
    CONTENT_LINE_TOO_LONG,
    CONTENT_NO_FINAL_CRLF,
    END_OF_CHUNK,
    END_OF_DATA,
    REASON_BARE_CR,
    REASON_NUL,
    REASON_TOO_LONG,
)

FINISHED = "finished"  # the driver's record of finish_chunks() and its result


class Case(NamedTuple):
    name: str
    transcript: bytes
    expected: list
    limits: dict = {}


def cmd(verb, argument=b""):
    return (COMMAND, verb, argument)


def bad(reason):
    return (BAD_COMMAND, reason)


def message(content, flags=0):
    """The events of one DATA transaction after the DATA command itself."""
    events = [cmd(b"DATA")]
    if content:
        events.append((CONTENT, content))
    return events + [(END_OF_DATA, flags, len(content))]


TOO_LONG = bad(REASON_TOO_LONG)
BARE_CR = bad(REASON_BARE_CR)
NUL = bad(REASON_NUL)

COMMAND_CASES = [
    Case("ehlo", b"EHLO client.example\r\n", [cmd(b"EHLO", b"client.example")]),
    Case(
        "lower-case verb", b"ehlo Client.Example\r\n", [cmd(b"EHLO", b"Client.Example")]
    ),
    Case("mixed-case verb", b"MaIl FROM:<a@b>\r\n", [cmd(b"MAIL", b"FROM:<a@b>")]),
    Case("bare LF ends a command", b"NOOP\nQUIT\n", [cmd(b"NOOP"), cmd(b"QUIT")]),
    Case("empty line", b"\r\n", [cmd(b"")]),
    Case("empty line, bare LF", b"\n\n", [cmd(b""), cmd(b"")]),
    Case("only spaces", b"   \r\n", [cmd(b"")]),
    Case(
        "spaces around the argument",
        b"MAIL   FROM:<a@b> SIZE=10 \t \r\n",
        [cmd(b"MAIL", b"FROM:<a@b> SIZE=10")],
    ),
    Case("trailing blanks after the verb", b"QUIT \t\r\n", [cmd(b"QUIT")]),
    Case("tab does not separate", b"NOOP\tx\r\n", [cmd(b"NOOP\tX")]),
    Case("non-ASCII verb kept", b"\xe9hlo x\r\n", [cmd(b"\xe9HLO", b"x")]),
    Case(
        "pipelined batch",
        b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nNOOP\r\n",
        [
            cmd(b"MAIL", b"FROM:<a@b>"),
            cmd(b"RCPT", b"TO:<c@d>"),
            cmd(b"RCPT", b"TO:<e@f>"),
            cmd(b"NOOP"),
        ],
    ),
    Case("unfinished line waits", b"NOOP\r\nQUI", [cmd(b"NOOP")]),
    Case("bare CR", b"NO\rOP\r\nNOOP\r\n", [BARE_CR, cmd(b"NOOP")]),
    Case("CR CR LF", b"NOOP\r\r\n", [BARE_CR]),
    Case("CR at the end of the verb", b"NOOP\r x\r\n", [BARE_CR]),
    Case("NUL", b"NO\x00OP\r\nNOOP\r\n", [NUL, cmd(b"NOOP")]),
    Case("first defect wins: NUL", b"A\x00B\rC\r\n", [NUL]),
    Case("first defect wins: CR", b"A\rB\x00C\r\n", [BARE_CR]),
    Case(
        "too long, then the next command",
        b"X" * 600 + b"\r\nNOOP\r\n",
        [TOO_LONG, cmd(b"NOOP")],
    ),
    Case("too long beats NUL", b"\x00" + b"X" * 600 + b"\r\n", [TOO_LONG]),
    Case("too long without end", b"X" * 2000, [TOO_LONG]),
    Case("512 with CRLF fits", b"V" * 510 + b"\r\n", [cmd(b"V" * 510)]),
    Case("513 with CRLF is too long", b"V" * 511 + b"\r\n", [TOO_LONG]),
    Case("512 with bare LF fits", b"V" * 511 + b"\n", [cmd(b"V" * 511)]),
    Case(
        "513 with bare LF is too long",
        b"V" * 512 + b"\nNOOP\n",
        [TOO_LONG, cmd(b"NOOP")],
    ),
    Case(
        "small limit",
        b"NOOP\r\nNOOPS\r\nRSET\nHELO x\r\n",
        [cmd(b"NOOP"), TOO_LONG, cmd(b"RSET"), TOO_LONG],
        {"max_command_octets": 6},
    ),
    Case(
        "limit of one",
        b"\nA\n\n",
        [cmd(b""), TOO_LONG, cmd(b"")],
        {"max_command_octets": 1},
    ),
    Case(
        "DATA with an argument stays in command mode",
        b"DATA x\r\n.\r\n",
        [
            cmd(b"DATA", b"x"),
            cmd(b"."),
        ],
    ),
]

DATA_CASES = [
    Case(
        "simple message",
        b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n",
        message(b"Subject: hi\r\n\r\nbody\r\n") + [cmd(b"QUIT")],
    ),
    Case("empty message", b"DATA\r\n.\r\n", message(b"")),
    Case("lower-case data", b"data\r\n.\r\nquit\r\n", message(b"") + [cmd(b"QUIT")]),
    Case("bare LF after DATA", b"DATA\n.\r\n", message(b"")),
    Case(
        "dot-stuffing removed",
        b"DATA\r\n..hidden\r\n...\r\n.x\r\n..\r\n.\r\n",
        message(b".hidden\r\n..\r\nx\r\n.\r\n"),
    ),
    Case(
        "dot inside a line kept",
        b"DATA\r\na.b\r\n a.\r\n.\r\n",
        message(b"a.b\r\n a.\r\n"),
    ),
    Case("stuffed first line", b"DATA\r\n.a\r\n.\r\n", message(b"a\r\n")),
    Case(
        "pipelined after the terminator",
        b"DATA\r\nx\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
        message(b"x\r\n") + [cmd(b"MAIL", b"FROM:<a@b>"), cmd(b"RCPT", b"TO:<c@d>")],
    ),
    Case(
        "two messages",
        b"DATA\r\none\r\n.\r\nDATA\r\ntwo\r\n.\r\n",
        message(b"one\r\n") + message(b"two\r\n"),
    ),
    Case(
        "message not finished",
        b"DATA\r\nline\r\nmore",
        [cmd(b"DATA"), (CONTENT, b"line\r\nmore")],
    ),
    # Smuggling: none of these end the message (RFC 5321 §4.1.1.4).
    Case(
        "LF.LF",
        b"DATA\r\nhi\n.\nMAIL FROM:<x@y>\r\n.\r\n",
        message(b"hi\n.\nMAIL FROM:<x@y>\r\n", CONTENT_BARE_LF),
    ),
    Case(
        "LF.CRLF",
        b"DATA\r\nhi\n.\r\nRCPT TO:<x@y>\r\n.\r\n",
        message(b"hi\n.\r\nRCPT TO:<x@y>\r\n", CONTENT_BARE_LF),
    ),
    Case(
        "CRLF.LF",
        b"DATA\r\nhi\r\n.\nQUIT\r\n.\r\n",
        message(b"hi\r\n\nQUIT\r\n", CONTENT_BARE_LF),
    ),
    Case(
        "CR.CR",
        b"DATA\r\nhi\r.\rQUIT\r\n.\r\n",
        message(b"hi\r.\rQUIT\r\n", CONTENT_BARE_CR),
    ),
    Case(
        "CR.CRLF",
        b"DATA\r\nhi\r.\r\nQUIT\r\n.\r\n",
        message(b"hi\r.\r\nQUIT\r\n", CONTENT_BARE_CR),
    ),
    Case(
        "CRLF.CR",
        b"DATA\r\nhi\r\n.\rQUIT\r\n.\r\n",
        message(b"hi\r\n\rQUIT\r\n", CONTENT_BARE_CR),
    ),
    Case(
        "CRLF.CRCRLF",
        b"DATA\r\nhi\r\n.\r\r\n.\r\n",
        message(b"hi\r\n\r\r\n", CONTENT_BARE_CR),
    ),
    Case(
        "LF.LF at the start",
        b"DATA\r\n\n.\n.\r\n.\r\n",
        message(b"\n.\n.\r\n", CONTENT_BARE_LF),
    ),
    Case(
        "LF.. is not unstuffed",
        b"DATA\r\na\n..\r\n.\r\n",
        message(b"a\n..\r\n", CONTENT_BARE_LF),
    ),
    Case(
        "dot alone at the start",
        b"DATA\r\n.\n\r\n.\r\n",
        message(b"\n\r\n", CONTENT_BARE_LF),
    ),
    Case(
        "bare CR and bare LF",
        b"DATA\r\na\rb\nc\r\n.\r\n",
        message(b"a\rb\nc\r\n", CONTENT_BARE_CR | CONTENT_BARE_LF),
    ),
    Case("NUL is content", b"DATA\r\na\x00b\r\n.\r\n", message(b"a\x00b\r\n")),
    Case(
        "line at the limit",
        b"DATA\r\n12345678\r\n.\r\n",
        message(b"12345678\r\n"),
        {"max_data_line_octets": 10},
    ),
    Case(
        "line over the limit",
        b"DATA\r\n123456789\r\nok\r\n.\r\n",
        message(b"123456789\r\nok\r\n", CONTENT_LINE_TOO_LONG),
        {"max_data_line_octets": 10},
    ),
    Case(
        "stuffing dot counts towards the limit",
        b"DATA\r\n..2345678\r\n.\r\n",
        message(b".2345678\r\n", CONTENT_LINE_TOO_LONG),
        {"max_data_line_octets": 10},
    ),
    Case(
        "bare LF does not end a line for the limit",
        b"DATA\r\n1234\n5678\r\n.\r\n",
        message(b"1234\n5678\r\n", CONTENT_BARE_LF | CONTENT_LINE_TOO_LONG),
        {"max_data_line_octets": 10},
    ),
    Case(
        "1000 octets fit",
        b"DATA\r\n" + b"x" * 998 + b"\r\n.\r\n",
        message(b"x" * 998 + b"\r\n"),
    ),
    Case(
        "1001 octets do not",
        b"DATA\r\n" + b"x" * 999 + b"\r\n.\r\n",
        message(b"x" * 999 + b"\r\n", CONTENT_LINE_TOO_LONG),
    ),
    Case(
        "long command line limit does not apply to content",
        b"DATA\r\n" + b"y" * 700 + b"\r\n.\r\n",
        message(b"y" * 700 + b"\r\n"),
    ),
]


def chunk(argument, content, flags, size):
    events = [cmd(b"BDAT", argument)]
    if content:
        events.append((CONTENT, content))
    return events + [(END_OF_CHUNK, flags, size)]


BDAT_CASES = [
    Case(
        "one chunk",
        b"BDAT 7 LAST\r\nhello\r\nQUIT\r\n",
        chunk(b"7 LAST", b"hello\r\n", 0, 7) + [(FINISHED, 0), cmd(b"QUIT")],
    ),
    Case(
        "no final CRLF",
        b"BDAT 5 LAST\r\nhello",
        chunk(b"5 LAST", b"hello", 0, 5) + [(FINISHED, CONTENT_NO_FINAL_CRLF)],
    ),
    Case(
        "CRLF split across chunks",
        b"BDAT 3\r\nab\rBDAT 4 LAST\r\n\nc\r\n",
        chunk(b"3", b"ab\r", 0, 3)
        + chunk(b"4 LAST", b"\nc\r\n", 0, 7)
        + [(FINISHED, 0)],
    ),
    Case(
        "lone CR at the end",
        b"BDAT 3 LAST\r\nab\r",
        chunk(b"3 LAST", b"ab\r", 0, 3)
        + [(FINISHED, CONTENT_BARE_CR | CONTENT_NO_FINAL_CRLF)],
    ),
    Case(
        "CR then a new chunk without LF",
        b"BDAT 2\r\na\rBDAT 2 LAST\r\nb\n",
        chunk(b"2", b"a\r", 0, 2)
        + chunk(b"2 LAST", b"b\n", CONTENT_BARE_CR | CONTENT_BARE_LF, 4)
        + [(FINISHED, CONTENT_BARE_CR | CONTENT_BARE_LF | CONTENT_NO_FINAL_CRLF)],
    ),
    Case(
        "empty message",
        b"BDAT 0 LAST\r\n",
        chunk(b"0 LAST", b"", 0, 0) + [(FINISHED, 0)],
    ),
    Case(
        "empty last chunk",
        b"BDAT 2\r\nabBDAT 0 LAST\r\n",
        chunk(b"2", b"ab", 0, 2)
        + chunk(b"0 LAST", b"", 0, 2)
        + [(FINISHED, CONTENT_NO_FINAL_CRLF)],
    ),
    Case(
        "no unstuffing, no terminator",
        b"BDAT 6 LAST\r\n.\r\n.\r\nNOOP\r\n",
        chunk(b"6 LAST", b".\r\n.\r\n", 0, 6) + [(FINISHED, 0), cmd(b"NOOP")],
    ),
    Case(
        "bare LF",
        b"BDAT 4 LAST\r\na\nb\n",
        chunk(b"4 LAST", b"a\nb\n", CONTENT_BARE_LF, 4)
        + [(FINISHED, CONTENT_BARE_LF | CONTENT_NO_FINAL_CRLF)],
    ),
    Case(
        "line too long across chunks",
        b"BDAT 6\r\n123456BDAT 6 LAST\r\n78\r\nab",
        chunk(b"6", b"123456", 0, 6)
        + chunk(b"6 LAST", b"78\r\nab", CONTENT_LINE_TOO_LONG, 12)
        + [(FINISHED, CONTENT_LINE_TOO_LONG | CONTENT_NO_FINAL_CRLF)],
        {"max_data_line_octets": 9},
    ),
    Case(
        "chunk ends mid-line, limit reached only later",
        b"BDAT 8\r\n12345678BDAT 2 LAST\r\n\r\n",
        chunk(b"8", b"12345678", 0, 8)
        + chunk(b"2 LAST", b"\r\n", CONTENT_LINE_TOO_LONG, 10)
        + [(FINISHED, CONTENT_LINE_TOO_LONG)],
        {"max_data_line_octets": 9},
    ),
    Case(
        "chunk then DATA",
        b"BDAT 1 LAST\r\nxDATA\r\n.\r\n",
        chunk(b"1 LAST", b"x", 0, 1)
        + [(FINISHED, CONTENT_NO_FINAL_CRLF)]
        + message(b""),
    ),
    Case(
        "command octets inside a chunk",
        b"BDAT 9 LAST\r\nNO\rOP\x00\r\n\r\n",
        chunk(b"9 LAST", b"NO\rOP\x00\r\n\r", CONTENT_BARE_CR, 9)
        + [(FINISHED, CONTENT_BARE_CR | CONTENT_NO_FINAL_CRLF), cmd(b"")],
    ),
]

CASES = COMMAND_CASES + DATA_CASES + BDAT_CASES

# parse_path_argument(argument, keyword) -> expected
PATH_CASES = [
    (b"FROM:<a@b>", b"FROM:", (b"a@b", [])),
    (b"from:<a@b>", b"FROM:", (b"a@b", [])),
    (b"To:<a@b>", b"TO:", (b"a@b", [])),
    (b"FROM: <a@b>", b"FROM:", (b"a@b", [])),
    (b"FROM:   <a@b>", b"FROM:", (b"a@b", [])),
    (b"FROM:<>", b"FROM:", (b"", [])),
    (b"FROM:<> SIZE=100", b"FROM:", (b"", [(b"SIZE", b"100")])),
    (
        b"FROM:<a@b> size=100 body=8BITMIME smtputf8",
        b"FROM:",
        (b"a@b", [(b"SIZE", b"100"), (b"BODY", b"8BITMIME"), (b"SMTPUTF8", None)]),
    ),
    (
        b"TO:<a@b>  NOTIFY=SUCCESS,FAILURE   ORCPT=rfc822;a@b ",
        b"TO:",
        (b"a@b", [(b"NOTIFY", b"SUCCESS,FAILURE"), (b"ORCPT", b"rfc822;a@b")]),
    ),
    (b'TO:<"a>b"@c>', b"TO:", (b'"a>b"@c', [])),
    (b'TO:<"a\\">b"@c> X', b"TO:", (b'"a\\">b"@c', [(b"X", None)])),
    (b"TO:<a b@c>", b"TO:", (b"a b@c", [])),
    (b"FROM:a@b", b"FROM:", (b"a@b", [])),
    (b"FROM: a@b SIZE=1", b"FROM:", (b"a@b", [(b"SIZE", b"1")])),
    (b"TO:<a@b> X-Foo1=v", b"TO:", (b"a@b", [(b"X-FOO1", b"v")])),
    (b"TO:<a@b> 1x", b"TO:", (b"a@b", [(b"1X", None)])),
    (b"TO:<a@b> K=~!<>", b"TO:", (b"a@b", [(b"K", b"~!<>")])),
    (
        b"TO:<\xc3\xa9@b> ORCPT=utf-8;\xc3\xa9@b",
        b"TO:",
        (b"\xc3\xa9@b", [(b"ORCPT", b"utf-8;\xc3\xa9@b")]),
    ),
    # Syntax errors.
    (b"", b"FROM:", None),
    (b"FROM", b"FROM:", None),
    (b"FROM <a@b>", b"FROM:", None),
    (b"TO:<a@b>", b"FROM:", None),
    (b"FROM:", b"FROM:", None),
    (b"FROM:   ", b"FROM:", None),
    (b"FROM:<a@b", b"FROM:", None),
    (b'FROM:<"a>b@c', b"FROM:", None),
    (b'FROM:<"a\\">', b"FROM:", None),
    (b"FROM:<a@b>SIZE=1", b"FROM:", None),
    (b"FROM:<a@b> =1", b"FROM:", None),
    (b"FROM:<a@b> -X=1", b"FROM:", None),
    (b"FROM:<a@b> SI_ZE=1", b"FROM:", None),
    (b"FROM:<a@b> SIZE=", b"FROM:", None),
    (b"FROM:<a@b> SIZE=a=b", b"FROM:", None),
    (b"FROM:<a@b> SIZE=\x01", b"FROM:", None),
    (b"FROM:<a@b> SIZE=\x7f", b"FROM:", None),
    (b"FROM:<a@b>\tSIZE=1", b"FROM:", None),
    (b"FROM:<a@b> \xc3\xa9=1", b"FROM:", None),
]
