"""Type stubs and documentation for the compiled SMTP wire parser.

The parser is sans-I/O: the connection feeds it the octets it reads and pulls
events (tuples, see mailfast.events) one at a time. mailfast._pyparser is a
pure-Python twin with the same API, used by the tests as a reference.
"""

from typing import Literal

from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

Event = (
    tuple[int, bytes, bytes]  # (COMMAND, verb, argument)
    | tuple[int, int]  # (BAD_COMMAND, reason)
    | tuple[int, bytes]  # (CONTENT, octets)
    | tuple[int, int, int]  # (END_OF_DATA | END_OF_CHUNK, flags, size)
)

class Parser:
    """Turns the octets of one SMTP connection into events.

    The parser starts in command mode. The caller must handle each event
    before asking for the next one: after a COMMAND for DATA or BDAT that it
    accepts, it calls start_data() or start_chunk(), and the octets already
    buffered are then read as message content.

    Args:
        max_command_octets: longest command line accepted, counting its line
            ending (RFC 5321 §4.5.3.1.4). A longer line yields
            (BAD_COMMAND, REASON_TOO_LONG) once and is discarded up to the
            next LF without being buffered.
        max_data_line_octets: longest content line, as transmitted, counting
            the CRLF and any stuffing dot (RFC 5321 §4.5.3.1.6). A longer line
            sets CONTENT_LINE_TOO_LONG; its octets are still delivered.

    Raises:
        ValueError: a limit is below 1.
    """

    def __init__(
        self, max_command_octets: int = 512, max_data_line_octets: int = 1000
    ) -> None: ...
    def feed(self, data: Buffer) -> None:
        """Append octets read from the connection; parses nothing.

        Args:
            data: bytes, bytearray, memoryview or any contiguous buffer. It is
                copied, so the caller may reuse its read buffer at once.
        """

    def next_event(self) -> Event | None:
        """Parse on from where the last call stopped.

        Returns:
            The next event, or None when more input is needed.

        In command mode, a line ends at LF (a CR right before it is part of
        the ending; a bare LF is accepted). A line yields
        (COMMAND, verb, argument): the verb is the octets up to the first
        space, ASCII upper-cased; the argument follows the run of spaces
        after it. Trailing spaces and tabs are dropped first, so an empty or
        blank line gives (COMMAND, b"", b""). A line holding a CR that is not
        part of its ending, or a NUL, yields (BAD_COMMAND, REASON_BARE_CR or
        REASON_NUL): one event per line, named after the first defect. A
        line over the limit yields (BAD_COMMAND, REASON_TOO_LONG) instead.

        In data mode, content runs up to CRLF "." CRLF and is dot-unstuffed
        (RFC 5321 §4.5.2). Only a line start after CRLF (or the first octet of
        the content) counts for the terminator and for unstuffing, so
        LF.LF, CRLF.LF, CR.CR and similar sequences stay inside the message.
        CONTENT carries everything that is certain so far: only a line-start
        "." or ".\\r" at the end of the buffer is held back. The CRLF ending
        the last line is content. Then (END_OF_DATA, flags, size) ends the
        message, and the parser is back in command mode.

        In chunk mode, the announced number of octets is CONTENT, verbatim,
        followed by (END_OF_CHUNK, flags, size) with the flags and size so far
        for the message; then the parser is back in command mode.

        flags is a set of CONTENT_* bits; size counts the content octets
        delivered for the whole message.
        """

    def expect_raw_line(self) -> None:
        """Return the next command line whole, case kept: ``(COMMAND, b"", line)``.

        For AUTH responses (RFC 4954 §4), which are base64: never upper-cased
        or split at spaces. A bad line is still reported as BAD_COMMAND.
        """
    def start_data(self) -> None:
        """Read what follows as DATA content (the caller has sent 354).

        Raises:
            RuntimeError: not in command mode.
        """

    def start_chunk(self, size: int, first: bool) -> None:
        """Read the next `size` octets as one BDAT chunk (RFC 3030).

        Args:
            size: the chunk size from the BDAT command. With 0, the next
                next_event() returns END_OF_CHUNK at once.
            first: True for the first chunk of a message, which resets the
                message's flags and size; False continues them, so a CRLF or a
                long line split across chunks is judged as a whole.

        Raises:
            ValueError: size is negative.
            RuntimeError: not in command mode.
        """

    def finish_chunks(self) -> int:
        """Settle the flags of a BDAT message after its LAST chunk.

        Returns:
            The message's final flags: those reported with END_OF_CHUNK, plus
            CONTENT_BARE_CR if the content ended in a lone CR and
            CONTENT_NO_FINAL_CRLF if it did not end in CRLF. An empty message
            gets neither.

        Raises:
            RuntimeError: a chunk is still being read.
        """

    @property
    def mode(self) -> Literal["command", "data", "chunk"]:
        """How the next octets are read. It changes back to "command" when
        END_OF_DATA or END_OF_CHUNK is returned."""

    @property
    def buffered(self) -> int:
        """Octets fed but not yet consumed by next_event()."""

def parse_path_argument(
    argument: bytes, keyword: bytes
) -> tuple[bytes, list[tuple[bytes, bytes | None]]] | None:
    """Split a MAIL or RCPT argument into its path and ESMTP parameters.

    The keyword is matched case-insensitively at the start, then any spaces
    (leniently: RFC 5321 allows none). The path is either "<...>", returned
    without the brackets (a quoted string inside may hold ">"; "<>" gives
    b""), or, leniently, a bare word up to the first space. Parameters follow,
    separated by runs of spaces: KEY or KEY=VALUE, with KEY upper-cased and
    VALUE verbatim (RFC 5321 §4.1.2 esmtp-param; VALUE may hold UTF-8 octets,
    RFC 6531). The mailbox inside the path is not checked.

    Args:
        argument: the COMMAND argument, e.g. b"FROM:<a@example.com> SIZE=10".
        keyword: b"FROM:" or b"TO:".

    Returns:
        (path, [(KEY, VALUE or None), ...]), or None on a syntax error: the
        keyword missing, no path, an unterminated "<" or quoted string,
        something other than a space right after ">", an empty or malformed
        KEY, an empty or malformed VALUE.
    """
