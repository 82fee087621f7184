"""Realistic client transcripts: the seed corpus of the fuzzer.

A seed is what ``harness.check_fuzz_input`` takes: an options octet (bit 0:
relaying permitted, bit 1: AUTH offered, bits 2-7: the split pattern of
``harness.splits_for``), then what a client sends. ``python -m
tests.fuzz.seeds`` writes them to tests/fuzz/corpus/, one file per seed;
tests/fuzz/test_fuzz.py checks that the files are up to date.

libFuzzer starts its length limit at the longest seed, so seeds stay short
(about 1 KiB at most) and the fuzzer fast; the limits in the harness's
configuration are small enough to be crossed all the same.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

from tests.fuzz import harness

CORPUS_DIR = Path(__file__).parent / "corpus"

RELAY = 1
AUTH = 2
EVERY_OCTET = harness.EVERY_OCTET << 2
AROUND_CRLF_DOT = harness.AROUND_CRLF_DOT << 2
PER_LINE = harness.PER_LINE << 2

MAIL = b"MAIL FROM:<sender@example.org>\r\n"
RCPT = b"RCPT TO:<alice@localhost>\r\n"
GREETED = b"EHLO client.test\r\n" + MAIL + RCPT  # ready for DATA or BDAT


def random_cuts(seed: int) -> int:
    """The options octet for random cuts, one of 16 seeds."""
    return (harness.RANDOM_CUTS | seed << 2) << 2


def seed(options: int, *parts: bytes) -> bytes:
    return bytes([options]) + b"".join(parts)


def lines(*commands: bytes) -> bytes:
    return b"".join(command + b"\r\n" for command in commands)


def smuggling(options: int, fake_end: bytes) -> bytes:
    """A message with a fake end of data, a second transaction hidden behind it."""
    return seed(
        options,
        GREETED,
        b"DATA\r\nSubject: first\r\n\r\nbody",
        fake_end,
        lines(b"MAIL FROM:<evil@example.org>", b"RCPT TO:<alice@localhost>", b"DATA"),
        b"Subject: second\r\n\r\nhidden\r\n.\r\nQUIT\r\n",
    )


def content_lines(octet: bytes, count: int) -> bytes:
    """``count`` lines of 100 octets, CRLF included."""
    return (octet * 98 + b"\r\n") * count


SEEDS: dict[str, bytes] = {
    "data": seed(
        EVERY_OCTET, GREETED, b"DATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n"
    ),
    "helo-three-messages": seed(
        PER_LINE,
        b"HELO client.test\r\n",
        (MAIL + RCPT + b"DATA\r\nx\r\n.\r\n") * 3,
        b"QUIT\r\n",
    ),
    "pipelined": seed(
        random_cuts(1),
        GREETED,
        lines(b"RCPT TO:<postmaster>", b"RCPT TO:<bob@localhost>", b"DATA"),
        b"a\r\n.\r\nRSET\r\nNOOP\r\n",
        MAIL + RCPT,
        b"DATA\r\nb\r\n.\r\nQUIT\r\n",
    ),
    "dot-stuffing": seed(
        AROUND_CRLF_DOT,
        GREETED,
        b"DATA\r\n..\r\n.leading\r\n...\r\nmid.dle\r\n. \r\n.\r\n",
    ),
    "empty-data": seed(AROUND_CRLF_DOT, GREETED, b"DATA\r\n.\r\n"),
    "smuggle-lf-dot-lf": smuggling(AROUND_CRLF_DOT, b"\n.\n"),
    "smuggle-lf-dot-crlf": smuggling(AROUND_CRLF_DOT, b"\n.\r\n"),
    "smuggle-crlf-dot-lf": smuggling(AROUND_CRLF_DOT, b"\r\n.\n"),
    "smuggle-cr-dot-cr": smuggling(AROUND_CRLF_DOT, b"\r.\r"),
    "smuggle-cr-dot-crlf": smuggling(EVERY_OCTET, b"\r.\r\n"),
    "smuggle-per-line": smuggling(PER_LINE, b"\n.\n"),
    "bdat": seed(
        EVERY_OCTET,
        GREETED,
        b"BDAT 7\r\nhello\r\nBDAT 9 LAST\r\nworld\r\n\r\nQUIT\r\n",
    ),
    "bdat-pipelined": seed(
        random_cuts(2),
        b"EHLO c\r\n",
        MAIL + RCPT,
        b"BDAT 5\r\nMAIL BDAT 0 LAST\r\n",
        MAIL + RCPT,
        b"BDAT 3 LAST\r\n.\r\n",
    ),
    "bdat-refused": seed(
        PER_LINE, b"EHLO c\r\nBDAT 4\r\nQUIT", MAIL, b"BDAT 3 LAST\r\nab\rRSET\r\n"
    ),
    "bdat-bare-cr-tail": seed(
        EVERY_OCTET, GREETED, b"BDAT 4\r\nab\r\rBDAT 1 LAST\r\n\r"
    ),
    "bdat-no-final-crlf": seed(AROUND_CRLF_DOT, GREETED, b"BDAT 3 LAST\r\nabcNOOP\r\n"),
    "data-after-bdat": seed(
        random_cuts(3), GREETED, b"BDAT 2\r\nabDATA\r\nBDAT 2 LAST\r\n\r\n"
    ),
    "relay": seed(
        RELAY | PER_LINE,
        lines(
            b"EHLO relay.test",
            b"MAIL FROM:<> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=abc+2B",
            b"RCPT TO:<carol@example.net> NOTIFY=SUCCESS,DELAY"
            b" ORCPT=rfc822;carol@example.net",
            b"RCPT TO:<dave@[192.0.2.1]>",
            b"RCPT TO:<alice@localhost>",
            b"DATA",
            b"Subject: relayed",
            b"",
            b"text",
            b".",
            b"QUIT",
        ),
    ),
    "relay-denied": seed(
        PER_LINE,
        lines(b"EHLO c", b"MAIL FROM:<>", b"RCPT TO:<x@example.net>", b"DATA"),
    ),
    "smtputf8": seed(
        EVERY_OCTET,
        lines(
            b"EHLO c",
            "MAIL FROM:<jörg@exämple.org> SMTPUTF8".encode(),
            b"RCPT TO:<alice@localhost>",
            b"RCPT TO:<\xff@localhost>",
            b"DATA",
            "Grüße".encode(),
            b".",
        ),
    ),
    "sequence-errors": seed(
        PER_LINE,
        lines(
            b"MAIL FROM:<a@b.example>",
            b"RCPT TO:<alice@localhost>",
            b"DATA",
            b"EHLO",
            b"EHLO two words",
            b"HELO ok",
            b"RCPT TO:<alice@localhost>",
            b"MAIL FROM:<a@b.example> SIZE=99999999",
            b"MAIL FROM:<a@b.example> FOO=BAR",
            b"MAIL FROM:<a@b.example>",
            b"MAIL FROM:<a@b.example>",
            b"DATA",
            b"RCPT TO:<nobody@localhost>",
            b"DATA",
            b"DATA x",
            b"RSET x",
            b"VRFY",
            b"VRFY alice",
            b"HELP",
            b"NOOP",
            b"FOO",
            b"",
        ),
    ),
    "bad-lines": seed(
        EVERY_OCTET,
        b"EHLO c\r\nNO\x00OP\r\nNO\rOP\r\n",
        b"X" * 600,
        b"\r\nNOOP\nNOOP\r\r\nQUIT\r\n",
    ),
    "too-many-recipients": seed(
        random_cuts(4), GREETED, RCPT * 4, b"DATA\r\nx\r\n.\r\n"
    ),
    # RFC 5321 §4.5.3.1.6 allows 1,000 octets: this line has 1,001 as sent.
    "long-line-refused": seed(
        AROUND_CRLF_DOT, GREETED, b"DATA\r\n.", b"z" * 998, b"\r\n.\r\nNOOP\r\n"
    ),
    "long-line-accepted": seed(
        random_cuts(6), GREETED, b"DATA\r\n.", b"y" * 997, b"\r\n.\r\nNOOP\r\n"
    ),
    "too-big-data": seed(
        random_cuts(5), GREETED, b"DATA\r\n", content_lines(b"x", 11), b".\r\nNOOP\r\n"
    ),
    "too-big-bdat": seed(
        AROUND_CRLF_DOT,
        GREETED,
        b"BDAT 500\r\n",
        content_lines(b"y", 5),
        b"BDAT 600 LAST\r\n",
        content_lines(b"z", 6),
        b"NOOP\r\n",
    ),
    "bare-newlines-in-data": seed(
        AROUND_CRLF_DOT,
        GREETED,
        b"DATA\r\na\nb\rc\r\n.\r\n",
        MAIL + RCPT,
        b"DATA\r\nok\r\n.\r\n",
    ),
    "too-many-errors": seed(PER_LINE, b"FOO\r\n" * 12),
    "auth-plain": seed(
        AUTH | EVERY_OCTET,
        lines(
            b"EHLO c",
            b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret"),
            b"MAIL FROM:<alice@localhost>",
            b"RCPT TO:<carol@example.net>",
            b"DATA",
            b"sent",
            b".",
            b"AUTH PLAIN",
        ),
    ),
    "auth-login": seed(
        AUTH | PER_LINE,
        lines(
            b"EHLO c",
            b"MAIL FROM:<a@b.example>",
            b"AUTH LOGIN",
            b"RSET",
            b"AUTH LOGIN",
            base64.b64encode(b"alice"),
            base64.b64encode(b"wrong"),
            b"AUTH PLAIN",
            b"*",
            b"AUTH PLAIN =",
            b"AUTH LOGIN " + base64.b64encode(b"alice"),
            base64.b64encode(b"secret"),
            b"MAIL FROM:<bob@localhost>",
            b"MAIL FROM:<alice@localhost>",
        ),
    ),
    "auth-garbage": seed(
        AUTH | RELAY | AROUND_CRLF_DOT,
        lines(
            b"EHLO c",
            b"AUTH PLAIN",
            b"not base64!",
            b"AUTH CRAM-MD5",
            b"AUTH LOGIN",
            b"\x00",
            b"AUTH LOGIN",
            b"x" * 600,
            b"STARTTLS",
            b"QUIT",
        ),
    ),
}


def write_corpus(directory: Path = CORPUS_DIR) -> None:
    directory.mkdir(exist_ok=True)
    for name, octets in SEEDS.items():
        (directory / name).write_bytes(octets)


if __name__ == "__main__":
    write_corpus(Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS_DIR)
