"""Fuzzing the parser and the session: arbitrary octets get replies, nothing else.

The rules every input is held to are in tests/fuzz/harness.py. Three layers:
the seed transcripts, fed every way; a few hundred generated SMTP-like
inputs (hypothesis, quick to shrink and to reproduce); and 100,000 inputs of
coverage-guided fuzzing by atheris in a subprocess, with a fixed seed. Two
fuzzing runs still part ways after a few thousand inputs (libFuzzer's
choices are not all made by its random generator), so a failure reports the
input itself; it goes into FOUND below to be replayed on every run.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import (
    AROUND_CRLF_DOT,
    EVERY_OCTET,
    PER_LINE,
    RANDOM_CUTS,
    Client,
    InvariantError,
    Message,
    check_fuzz_input,
    check_input,
    data_content,
    run_session,
    splits_for,
)
from tests.fuzz.seeds import CORPUS_DIR, SEEDS, write_corpus

REPO_ROOT = Path(__file__).resolve().parents[2]
FUZZ_RUNS = 100_000
# Measured on the 2-core development machine, idle: about 30 s of CPU for the
# 100,000 runs. The bound only stops a fuzzer that hangs outright.
FUZZ_TIMEOUT_S = 600
DONE_LINE = re.compile(r"^Done (\d+) runs in (\d+) second", re.MULTILINE)

# Inputs the fuzzer found that broke a rule, as check_fuzz_input takes them.
FOUND = {
    # session._rcpt_parameters decodes an ORCPT value as ASCII after checking
    # only the part after ";": UnicodeDecodeError escaped from the session.
    "orcpt-non-ascii-type": b"\x00EHLO c\r\nMAIL FROM:<>\r\n"
    b"RCPT TO:<alice@localhost> ORCPT=rfc\xff822;alice@localhost\r\n",
}


def client_of(seed: bytes) -> Client:
    return Client(relay_permitted=bool(seed[0] & 1), auth_offered=bool(seed[0] & 2))


# The seeds.


def test_corpus_files_are_the_seeds(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    expected = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    actual = {path.name: path.read_bytes() for path in CORPUS_DIR.iterdir()}
    assert actual == expected, (
        "tests/fuzz/corpus/ must hold exactly the seeds of tests/fuzz/seeds.py:"
        " delete it and run .venv/bin/python -m tests.fuzz.seeds"
    )


@pytest.mark.parametrize(
    "pattern", [EVERY_OCTET, AROUND_CRLF_DOT, PER_LINE, RANDOM_CUTS]
)
@pytest.mark.parametrize("name", SEEDS)
def test_seed_holds_every_rule(name: str, pattern: int) -> None:
    seed = SEEDS[name]
    data = seed[1:]
    check_input(data, splits_for(data, pattern), client_of(seed), python=True)


def test_a_plain_message_is_committed_once_as_sent() -> None:
    transcript = check_fuzz_input(SEEDS["data"])
    assert transcript.messages == [
        Message(
            "sender@example.org", ("alice@localhost",), b"Subject: hi\r\n\r\nhello\r\n"
        )
    ]
    assert transcript.closed


@pytest.mark.parametrize("name", [name for name in SEEDS if name.startswith("smuggle")])
def test_no_smuggled_message_is_committed(name: str) -> None:
    transcript = check_fuzz_input(SEEDS[name])
    assert all(
        message.reverse_path != "evil@example.org" for message in transcript.messages
    )


def test_dot_stuffing_is_undone() -> None:
    [message] = check_fuzz_input(SEEDS["dot-stuffing"]).messages
    assert message.content == b".\r\nleading\r\n..\r\nmid.dle\r\n \r\n"


# The harness's own reference for DATA content.


@pytest.mark.parametrize(
    "sent, expected",
    [
        (b".\r\nNOOP", (b"", 3)),
        (b"a\r\n.\r\n", (b"a\r\n", 6)),
        (b"\r\n.\r\n", (b"\r\n", 5)),
        (b"..\r\n.\r\n", (b".\r\n", 7)),
        (b"a\r\n..b\r\n.\r\n", (b"a\r\n.b\r\n", 11)),
        (b"a\n.\nb\r\n.\r\n", (b"a\n.\nb\r\n", 10)),
        (b"a\r.\rb\r\n.\r\n", (b"a\r.\rb\r\n", 10)),
        (b"a\r\n.\nb\r\n.\r\n", (b"a\r\n\nb\r\n", 11)),
        (b"a\r\n.", None),
        (b"a\n.\n", None),
    ],
)
def test_reference_data_content(
    sent: bytes, expected: tuple[bytes, int] | None
) -> None:
    assert data_content(sent, 0) == expected


def test_the_harness_notices_a_parser_that_ends_data_at_lf_dot_lf() -> None:
    class Lenient:
        """The compiled parser, but LF "." LF ends DATA too: SMTP smuggling."""

        def __init__(self, *limits: int) -> None:
            from mailfast._parser import Parser

            self._parser = Parser(*limits)

        def feed(self, octets: bytes) -> None:
            self._parser.feed(octets.replace(b"\n.\n", b"\r\n.\r\n"))

        def __getattr__(self, name: str):
            return getattr(self._parser, name)

    with pytest.raises(InvariantError):
        run_session(SEEDS["smuggle-lf-dot-lf"][1:], [], Client(), parser_class=Lenient)


# Inputs the fuzzer found.


@pytest.mark.parametrize("name", FOUND)
def test_found_input_holds_every_rule(name: str) -> None:
    check_fuzz_input(FOUND[name])


# Generated SMTP-like input.

_WORDS = [
    b"EHLO c",
    b"HELO c",
    b"MAIL FROM:<a@b.example>",
    b"MAIL FROM:<>",
    b"MAIL FROM:<alice@localhost> SIZE=10",
    b"RCPT TO:<alice@localhost>",
    b"RCPT TO:<postmaster>",
    b"RCPT TO:<x@example.net> NOTIFY=NEVER",
    b"RCPT TO:<alice@localhost> ORCPT=rfc822;a@b NOTIFY=",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"VRFY x",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret"),
    base64.b64encode(b"alice"),
    base64.b64encode(b"secret"),
    b"*",
    b".",
    b"..",
    b"x",
    b" ",
    b"\0",
    b"\r\n",
    b"\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n.\r\n",
    b"\n.\n",
]
_BDAT = st.builds(
    lambda size, last: b"BDAT %d%s\r\n" % (size, b" LAST" if last else b""),
    st.integers(0, 40),
    st.booleans(),
)
_TRANSCRIPTS = st.lists(
    st.one_of(st.sampled_from(_WORDS), _BDAT, st.binary(max_size=6)), max_size=40
).map(b"".join)


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=_TRANSCRIPTS,
    splits=st.lists(st.integers(0, 300), max_size=30),
    client=st.builds(Client, st.booleans(), st.booleans()),
)
@example(data=SEEDS["smuggle-cr-dot-cr"][1:], splits=[], client=Client())
def test_generated_input_holds_every_rule(
    data: bytes, splits: list[int], client: Client
) -> None:
    check_input(data, splits, client, python=True)


# Coverage-guided fuzzing.


def test_atheris_finds_nothing_in_100k_inputs(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    artifacts = tmp_path / "artifacts"
    shutil.copytree(CORPUS_DIR, corpus)  # libFuzzer adds what it finds to it
    artifacts.mkdir()
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.fuzz_session",
        str(corpus),
        f"-runs={FUZZ_RUNS}",
        "-max_len=4096",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-seed=1",
        f"-artifact_prefix={artifacts}/",
    ]
    result = subprocess.run(
        command,
        check=False,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # atheris's traceback in order with libFuzzer's
        timeout=FUZZ_TIMEOUT_S,
    )
    output = result.stdout.decode("utf-8", "replace")
    found = {path.name: path.read_bytes() for path in artifacts.iterdir()}
    assert result.returncode == 0 and not found, (
        f"the fuzzer failed (exit status {result.returncode}); inputs: {found!r}\n"
        + _failure_report(output)
    )
    done = DONE_LINE.search(output)
    assert done, output[-2000:]
    assert int(done[1]) >= FUZZ_RUNS


def _failure_report(output: str) -> str:
    """libFuzzer's output from the Python traceback on, or its last lines."""
    start = output.find("=== Uncaught Python exception")
    return output[start:] if start >= 0 else output[-4000:]
