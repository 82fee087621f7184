"""Pure-Python twin of mailfast._parser, the reference the tests compare it with.

Production never imports this module. It is written to be obviously correct, not
fast: content is examined one octet at a time with every rule spelled out, so a
disagreement with the compiled parser points at the compiled parser first. The
API and the event sequence are identical (CONTENT events may be split
differently; merged, they are equal).
"""

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

CR = 0x0D
LF = 0x0A
DOT = 0x2E
TERMINATOR = b".\r\n"  # at a line start, after the CRLF that ends the last line


class Parser:
    def __init__(self, max_command_octets=512, max_data_line_octets=1000):
        if max_command_octets < 1 or max_data_line_octets < 1:
            raise ValueError("line limits must be at least 1 octet")
        self._max_command = max_command_octets
        self._max_line = max_data_line_octets
        self._buffer = bytearray()
        self._mode = "command"
        self._discarding = False  # dropping the rest of a too-long command line
        self._raw_line = False  # the next line verbatim (AUTH responses)
        self._end_pending = False
        self._chunk_left = 0
        self._reset_message()

    def _reset_message(self):
        self._flags = 0
        self._size = 0
        self._line_octets = 0  # current content line as transmitted, so far
        self._line_start = True  # the last content octets were CRLF (or none yet)
        self._prev_cr = False  # the last content octet was a CR

    @property
    def mode(self):
        return self._mode

    @property
    def buffered(self):
        return len(self._buffer)

    def feed(self, data):
        self._buffer += memoryview(data).cast("B")

    def expect_raw_line(self):
        self._raw_line = True

    def start_data(self):
        self._enter_content("data")
        self._reset_message()
        self._end_pending = False

    def start_chunk(self, size, first):
        if size < 0:
            raise ValueError("chunk size must not be negative")
        self._enter_content("chunk")
        if first:
            self._reset_message()
        self._chunk_left = size

    def finish_chunks(self):
        if self._mode != "command":
            raise RuntimeError("finish_chunks() before the chunk was read")
        if self._prev_cr:
            self._flags |= CONTENT_BARE_CR
        if self._size and not self._line_start:
            self._flags |= CONTENT_NO_FINAL_CRLF
        return self._flags

    def _enter_content(self, mode):
        if self._mode != "command":
            raise RuntimeError(
                f"content can only start in command mode, not in {self._mode} mode"
            )
        self._discarding = False
        self._mode = mode

    def next_event(self):
        if self._mode == "command":
            return self._next_command()
        if self._mode == "data":
            return self._next_data()
        return self._next_chunk()

    def _consume(self, count):
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    # Command mode.

    def _next_command(self):
        while True:
            lf = self._buffer.find(b"\n")
            if self._discarding:
                if lf < 0:
                    self._buffer.clear()
                    return None
                self._consume(lf + 1)
                self._discarding = False
                continue

            if lf < 0:
                # The limit counts the line ending, which is still to come.
                if len(self._buffer) >= self._max_command:
                    self._consume(self._max_command)
                    self._discarding = True
                    self._raw_line = False
                    return (BAD_COMMAND, REASON_TOO_LONG)
                return None
            line = self._consume(lf + 1)
            if len(line) > self._max_command:
                self._raw_line = False
                return (BAD_COMMAND, REASON_TOO_LONG)

            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            for octet in line:  # the first defect names the reason
                if octet in (CR, 0):
                    self._raw_line = False
                    return (BAD_COMMAND, REASON_BARE_CR if octet == CR else REASON_NUL)
            line = line.rstrip(b" \t")
            if self._raw_line:
                self._raw_line = False
                return (COMMAND, b"", line)
            verb, _, argument = line.partition(b" ")
            return (COMMAND, verb.upper(), argument.lstrip(b" "))

    # Content, one octet at a time.

    def _account(self, octet):
        """Update the per-message flags for one content octet."""
        self._line_octets += 1
        if self._prev_cr and octet != LF:
            self._flags |= CONTENT_BARE_CR
        if octet == LF and not self._prev_cr:
            self._flags |= CONTENT_BARE_LF
        if self._line_octets > self._max_line:
            self._flags |= CONTENT_LINE_TOO_LONG
        self._line_start = octet == LF and self._prev_cr
        if self._line_start:
            self._line_octets = 0
        self._prev_cr = octet == CR

    def _next_data(self):
        if self._end_pending:
            self._end_pending = False
            self._mode = "command"
            return (END_OF_DATA, self._flags, self._size)

        content = bytearray()
        while self._buffer:
            if self._line_start:
                head = bytes(self._buffer[:3])
                if head == TERMINATOR:
                    self._consume(3)
                    self._end_pending = True
                    break
                if TERMINATOR.startswith(head):
                    break  # "." or ".\r": too early to tell
                if head.startswith(b"."):
                    self._consume(1)  # dot-unstuffing, RFC 5321 §4.5.2
                    self._line_octets += 1
                    self._line_start = False
                    continue
            octet = self._buffer[0]
            self._consume(1)
            self._account(octet)
            content.append(octet)

        if content:
            self._size += len(content)
            return (CONTENT, bytes(content))
        if self._end_pending:
            return self._next_data()
        return None

    def _next_chunk(self):
        if self._chunk_left == 0:
            self._mode = "command"
            return (END_OF_CHUNK, self._flags, self._size)
        content = self._consume(min(self._chunk_left, len(self._buffer)))
        if not content:
            return None
        for octet in content:
            self._account(octet)
        self._chunk_left -= len(content)
        self._size += len(content)
        return (CONTENT, content)


def parse_path_argument(argument, keyword):
    argument = bytes(argument)
    keyword = bytes(keyword)
    if argument[: len(keyword)].upper() != keyword.upper():
        return None
    rest = argument[len(keyword) :].lstrip(b" ")

    if rest.startswith(b"<"):
        path = _bracketed_path(rest)
        if path is None:
            return None
        rest = rest[len(path) + 2 :]
        if rest and not rest.startswith(b" "):
            return None
    else:
        path, _, rest = rest.partition(b" ")
        if not path:
            return None

    params = []
    for token in rest.split(b" "):
        if not token:
            continue
        param = _parameter(token)
        if param is None:
            return None
        params.append(param)
    return (path, params)


def _bracketed_path(text):
    """The text between text[0] == "<" and its ">", or None if unterminated."""
    quoted = False
    escaped = False
    for index in range(1, len(text)):
        char = text[index : index + 1]
        if escaped:
            escaped = False
        elif quoted and char == b"\\":
            escaped = True
        elif char == b'"':
            quoted = not quoted
        elif char == b">" and not quoted:
            return text[1:index]
    return None


# RFC 5321 §4.1.2 esmtp-keyword and esmtp-value; RFC 6531 adds UTF-8 to the value.
KEY_OCTETS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
)
VALUE_OCTETS = (frozenset(range(33, 127)) - {ord("=")}) | frozenset(range(128, 256))


def _parameter(token):
    key, equals, value = token.partition(b"=")
    if not key or key[0] == ord("-") or not set(key) <= KEY_OCTETS:
        return None
    if not equals:
        return (key.upper(), None)
    if not value or not set(value) <= VALUE_OCTETS:
        return None
    return (key.upper(), value)
