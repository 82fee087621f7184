# cython: language_level=3
"""The SMTP wire parser: octets in, events out (see _parser.pyi for the API).

Theory of operation
-------------------
One Parser serves one connection. ``feed`` only copies octets into a private
buffer; ``next_event`` parses from where it last stopped and returns one event
or None (more input needed). The caller handles each event before asking for
the next one, because the mode can change between two calls: after a COMMAND
for DATA or BDAT the session calls ``start_data``/``start_chunk`` and the
octets already buffered are then read as content.

Buffer. ``_buf[0:_len]`` holds octets fed so far; ``_buf[0:_pos]`` has been
consumed. Invariant: 0 <= _pos <= _len <= _cap. The consumed prefix is
reclaimed in ``_append`` only when it is at least as long as the unread tail,
so moving the tail costs O(1) amortised per consumed octet.

Command mode. A line ends at LF (a CR just before it belongs to the
terminator). ``_scan`` counts the octets of the current line already
examined and ``_reason`` remembers its first defect, so a line arriving one
octet per feed is still examined once, not once per feed. A lone CR at the
end of the buffer is the only octet looked at again: whether it is bare
depends on the next octet. At most ``_max_command`` octets of a line are
ever buffered; beyond that the line is refused and ``_discarding`` drops
everything up to the next LF.

Content. ``_scan_line`` is shared by DATA and BDAT. It walks one line at a
time with memchr and keeps the state that straddles buffer (and chunk)
boundaries: ``_prev_cr`` (the last content octet was a CR whose fate depends
on the next octet), ``_line_octets`` (length so far of the current line, as
transmitted) and ``_line_start`` (the last octets were CRLF, or nothing yet).

DATA mode (RFC 5321 §4.1.1.4, §4.5.2). At a line start, ".\\r\\n" ends the
message and any other leading "." is removed. Only a line start after CRLF
counts: after a bare LF no dot is removed and no terminator is recognised,
which is what keeps LF.LF and similar smuggling variants inside the message.
The only octets held back are a line-start "." or ".\\r" at the end of the
buffer; everything else is emitted at once. Removing a dot compacts the rest
of the scanned region in place (write cursor ``w`` trails read cursor ``r``),
so each CONTENT event is one bytes allocation from one contiguous slice.

Chunk mode (RFC 3030). ``_chunk_left`` octets are content, verbatim. The
per-message state (flags, size, the _scan_line state) carries over from one
chunk to the next; ``finish_chunks`` settles a trailing lone CR and the
missing final CRLF.

Must stay in sync: the flag and reason numbers with mailfast.events (checked
at import), and the behaviour with the pure-Python twin mailfast._pyparser,
which the tests compare against this module on random input.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcpy, memmove

from mailfast import events as _events


cdef extern from *:
    """
    #ifndef MAILFAST_DEBUG
    #define MAILFAST_DEBUG 0
    #endif
    """
    const int MAILFAST_DEBUG


cdef enum:
    _HT = 9
    _LF = 10
    _CR = 13
    _SP = 32
    _DOT = 46

cdef enum:
    _MODE_COMMAND = 0
    _MODE_DATA = 1
    _MODE_CHUNK = 2

# Mirrors of mailfast.events, as C constants for the hot path.
cdef enum:
    _REASON_TOO_LONG = 1
    _REASON_BARE_CR = 2
    _REASON_NUL = 3

cdef enum:
    _BARE_CR = 1
    _BARE_LF = 2
    _LINE_TOO_LONG = 4
    _NO_FINAL_CRLF = 8

cdef enum:
    # 16 KiB holds any command batch a client pipelines; a 64 KiB read just
    # doubles it twice.
    _INITIAL_CAPACITY = 16384
    # Above this, a buffer that is three quarters empty is given back, so a
    # burst (one huge feed) does not pin memory for the connection's life.
    _SHRINK_ABOVE = 1048576

if (
    (_events.REASON_TOO_LONG, _events.REASON_BARE_CR, _events.REASON_NUL)
    != (_REASON_TOO_LONG, _REASON_BARE_CR, _REASON_NUL)
    or (
        _events.CONTENT_BARE_CR, _events.CONTENT_BARE_LF,
        _events.CONTENT_LINE_TOO_LONG, _events.CONTENT_NO_FINAL_CRLF,
    ) != (_BARE_CR, _BARE_LF, _LINE_TOO_LONG, _NO_FINAL_CRLF)
):
    raise ImportError("mailfast._parser is out of sync with mailfast.events")

cdef object _COMMAND = _events.COMMAND
cdef object _BAD_COMMAND = _events.BAD_COMMAND
cdef object _CONTENT = _events.CONTENT
cdef object _END_OF_DATA = _events.END_OF_DATA
cdef object _END_OF_CHUNK = _events.END_OF_CHUNK

cdef tuple _MODE_NAMES = ("command", "data", "chunk")


cdef inline object _upper_bytes(const unsigned char *s, Py_ssize_t n):
    # ASCII only, like bytes.upper(): verbs are ASCII, and a non-ASCII octet
    # must come out unchanged so the session can refuse the verb as is.
    cdef:
        object         out = PyBytes_FromStringAndSize(NULL, n)
        unsigned char *d = <unsigned char *>PyBytes_AS_STRING(out)
        Py_ssize_t     i
        unsigned char  c

    for i in range(n):
        c = s[i]
        if 97 <= c <= 122:
            c -= 32
        d[i] = c
    return out


@cython.final
@cython.auto_pickle(False)
cdef class Parser:
    cdef:
        # Configuration.
        Py_ssize_t     _max_command
        Py_ssize_t     _max_line

        # Buffer (see the theory of operation).
        unsigned char *_buf
        Py_ssize_t     _cap
        Py_ssize_t     _len
        Py_ssize_t     _pos
        int            _mode

        # Command mode: the line that starts at _pos.
        Py_ssize_t     _scan
        int            _reason
        bint           _discarding
        bint           _raw_line       # next line verbatim (AUTH responses)

        # Content: per message, carried across feeds and BDAT chunks.
        int            _flags
        Py_ssize_t     _size
        Py_ssize_t     _line_octets
        bint           _line_start
        bint           _prev_cr
        Py_ssize_t     _chunk_left
        bint           _end_pending

    def __cinit__(self):
        self._buf = <unsigned char *>malloc(_INITIAL_CAPACITY)
        if self._buf == NULL:
            raise MemoryError()
        self._cap = _INITIAL_CAPACITY

    def __dealloc__(self):
        free(self._buf)
        self._buf = NULL

    def __init__(self, max_command_octets=512, max_data_line_octets=1000):
        if max_command_octets < 1 or max_data_line_octets < 1:
            raise ValueError("line limits must be at least 1 octet")
        self._max_command = max_command_octets
        self._max_line = max_data_line_octets
        self._mode = _MODE_COMMAND

    @property
    def mode(self):
        return _MODE_NAMES[self._mode]

    @property
    def buffered(self):
        return self._len - self._pos

    # -- input ---------------------------------------------------------------

    def feed(self, data):
        cdef Py_buffer view

        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._append(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef int _append(self, const unsigned char *src, Py_ssize_t n) except -1:
        cdef:
            Py_ssize_t     unread = self._len - self._pos
            Py_ssize_t     need
            Py_ssize_t     cap
            unsigned char *moved

        if n == 0:
            return 0

        # Reclaim the consumed prefix when that moves no more octets than
        # were consumed. Usually everything was consumed and nothing moves.
        if self._pos and self._pos >= unread:
            memmove(self._buf, self._buf + self._pos, unread)
            self._len = unread
            self._pos = 0

        need = self._len + n
        cap = self._cap
        if need > cap:
            cap = max(cap * 2, need)
        elif cap > _SHRINK_ABOVE and need <= cap // 4:
            cap = max(need * 2, <Py_ssize_t>_INITIAL_CAPACITY)
        if cap != self._cap:
            moved = <unsigned char *>realloc(self._buf, cap)
            if moved == NULL:
                raise MemoryError()
            self._buf = moved
            self._cap = cap

        memcpy(self._buf + self._len, src, n)
        self._len = need
        if MAILFAST_DEBUG:
            self._check()
        return 0

    cdef int _check(self) except -1:
        if not 0 <= self._pos <= self._len <= self._cap:
            raise RuntimeError("parser buffer invariant broken")
        if self._mode == _MODE_COMMAND and (
                self._scan > self._len - self._pos
                or self._scan >= self._max_command):
            raise RuntimeError("parser scan position out of range")
        return 0

    # -- mode switches --------------------------------------------------------

    cdef int _enter_content(self, int mode) except -1:
        if self._mode != _MODE_COMMAND:
            raise RuntimeError(
                "content can only start in command mode, not in "
                + _MODE_NAMES[self._mode] + " mode")
        # Whatever part of a command line was examined is content now.
        self._scan = 0
        self._reason = 0
        self._discarding = False
        self._mode = mode
        return 0

    cdef inline void _reset_message(self) noexcept:
        self._flags = 0
        self._size = 0
        self._line_octets = 0
        self._line_start = True
        self._prev_cr = False

    def expect_raw_line(self):
        """Return the next command line whole, case kept: (COMMAND, b"", line).

        For the responses of an AUTH exchange (RFC 4954 §4), which are
        base64 and must not be upper-cased or split like a command.
        """
        self._raw_line = True

    def start_data(self):
        self._enter_content(_MODE_DATA)
        self._reset_message()
        self._end_pending = False

    def start_chunk(self, Py_ssize_t size, bint first):
        if size < 0:
            raise ValueError("chunk size must not be negative")
        self._enter_content(_MODE_CHUNK)
        if first:
            self._reset_message()
        self._chunk_left = size

    def finish_chunks(self):
        if self._mode != _MODE_COMMAND:
            raise RuntimeError("finish_chunks() before the chunk was read")
        if self._prev_cr:
            self._flags |= _BARE_CR
        # _line_start is set exactly when the last two octets were CRLF.
        if self._size and not self._line_start:
            self._flags |= _NO_FINAL_CRLF
        return self._flags

    # -- events ---------------------------------------------------------------

    def next_event(self):
        if MAILFAST_DEBUG:
            self._check()
        if self._mode == _MODE_COMMAND:
            return self._next_command()
        if self._mode == _MODE_DATA:
            return self._next_data()
        return self._next_chunk()

    cdef object _next_command(self):
        cdef:
            const unsigned char *p = self._buf
            const unsigned char *hit
            Py_ssize_t           n = self._len
            Py_ssize_t           start
            Py_ssize_t           limit
            Py_ssize_t           i
            Py_ssize_t           end
            Py_ssize_t           verb_end
            int                  reason
            unsigned char        c

        if self._discarding:
            start = self._pos
            hit = <const unsigned char *>memchr(p + start, _LF, n - start)
            if hit == NULL:
                self._pos = n
                return None
            self._pos = hit - p + 1
            self._discarding = False

        # 1. Find the LF, noting the first defect on the way. Never look
        #    past the limit: a longer line is refused, whatever follows.
        start = self._pos
        limit = start + self._max_command
        if limit > n:
            limit = n
        reason = self._reason
        i = start + self._scan
        while i < limit:
            c = p[i]
            if c == _LF:
                break
            if c == _CR:
                if i + 1 == n:
                    break                  # bare or not: the next octet says
                if p[i + 1] != _LF and not reason:
                    reason = _REASON_BARE_CR
            elif c == 0 and not reason:
                reason = _REASON_NUL
            i += 1

        if i == limit or p[i] != _LF:
            # 2a. No LF yet. RFC 5321 §4.5.3.1.4: the limit counts the
            #     CRLF, so a full limit's worth without LF is already over.
            if n - start >= self._max_command:
                self._pos = limit
                self._scan = 0
                self._reason = 0
                self._discarding = True
                self._raw_line = False
                return (_BAD_COMMAND, _REASON_TOO_LONG)
            self._scan = i - start
            self._reason = reason
            return None

        # 2b. A whole line.
        self._pos = i + 1
        self._scan = 0
        self._reason = 0
        if reason:
            self._raw_line = False
            return (_BAD_COMMAND, reason)

        # 3. Split it: verb, spaces, argument; trailing blanks dropped.
        end = i
        if end > start and p[end - 1] == _CR:
            end -= 1
        while end > start and (p[end - 1] == _SP or p[end - 1] == _HT):
            end -= 1
        if self._raw_line:
            self._raw_line = False
            return (
                _COMMAND,
                b"",
                PyBytes_FromStringAndSize(
                    <const char *>p + start, end - start
                ),
            )
        verb_end = start
        while verb_end < end and p[verb_end] != _SP:
            verb_end += 1
        i = verb_end
        while i < end and p[i] == _SP:
            i += 1
        return (
            _COMMAND,
            _upper_bytes(p + start, verb_end - start),
            PyBytes_FromStringAndSize(<const char *>p + i, end - i),
        )

    cdef inline Py_ssize_t _scan_line(
            self, const unsigned char *p, Py_ssize_t r,
            Py_ssize_t n) noexcept:
        # Account for content octets p[r:] up to and including the first LF
        # (or up to n when there is none); return where that stopped.
        # Requires r < n. Octets after n are unknown (not yet fed, or not
        # content), so a CR at n - 1 is left pending in _prev_cr.
        cdef:
            const unsigned char *hit
            Py_ssize_t           e
            bint                 cr_last

        # cr_last: the octet before e is a CR. It pairs with the LF at e, or
        # when e == n it waits for the next octet.
        hit = <const unsigned char *>memchr(p + r, _LF, n - r)
        e = n if hit == NULL else hit - p
        if e > r:
            cr_last = p[e - 1] == _CR
            if self._prev_cr:
                self._flags |= _BARE_CR    # the pending CR met a non-LF
        else:
            cr_last = self._prev_cr
        self._prev_cr = False
        self._line_start = False

        # Every CR before e - 1 is followed by an octet that is not LF.
        # One is enough: once the flag is set, skip the search.
        if (not self._flags & _BARE_CR and e - 1 > r
                and memchr(p + r, _CR, e - 1 - r) != NULL):
            self._flags |= _BARE_CR

        if e == n:
            self._line_octets += n - r
            if self._line_octets > self._max_line:
                self._flags |= _LINE_TOO_LONG
            self._prev_cr = cr_last
            return n

        # RFC 5321 §4.5.3.1.6: the limit counts the CRLF (and a stuffing
        # dot, which the caller already added).
        self._line_octets += e + 1 - r
        if self._line_octets > self._max_line:
            self._flags |= _LINE_TOO_LONG
        if cr_last:
            self._line_octets = 0
            self._line_start = True
        else:
            self._flags |= _BARE_LF
        return e + 1

    cdef object _next_data(self):
        cdef:
            unsigned char *p = self._buf
            Py_ssize_t     n = self._len
            Py_ssize_t     start = self._pos
            Py_ssize_t     r = start       # next octet to read
            Py_ssize_t     w = start       # where it belongs after unstuffing
            Py_ssize_t     e
            bint           ended = False
            object         content

        if self._end_pending:
            self._end_pending = False
            self._mode = _MODE_COMMAND
            return (_END_OF_DATA, self._flags, self._size)

        while r < n:
            if self._line_start and p[r] == _DOT:
                # RFC 5321 §4.5.2: ".\r\n" ends the message, any other
                # leading dot is dropped. Hold back what cannot be told yet.
                if r + 1 == n:
                    break
                if p[r + 1] == _CR:
                    if r + 2 == n:
                        break
                    if p[r + 2] == _LF:
                        ended = True
                        break
                r += 1
                self._line_octets = 1
            e = self._scan_line(p, r, n)
            if w != r:
                memmove(p + w, p + r, e - r)
            w += e - r
            r = e

        if ended:
            self._pos = r + 3
            self._end_pending = True
        else:
            self._pos = r
        if w == start:
            if ended:
                return self._next_data()
            return None
        content = PyBytes_FromStringAndSize(<const char *>p + start, w - start)
        self._size += w - start
        return (_CONTENT, content)

    cdef object _next_chunk(self):
        cdef:
            const unsigned char *p = self._buf
            Py_ssize_t           start = self._pos
            Py_ssize_t           end = self._len
            Py_ssize_t           r = start
            object               chunk

        if self._chunk_left == 0:
            self._mode = _MODE_COMMAND
            return (_END_OF_CHUNK, self._flags, self._size)
        if end - start > self._chunk_left:
            end = start + self._chunk_left
        if end == start:
            return None
        while r < end:
            r = self._scan_line(p, r, end)
        chunk = PyBytes_FromStringAndSize(<const char *>p + start, end - start)
        self._pos = end
        self._chunk_left -= end - start
        self._size += end - start
        return (_CONTENT, chunk)


# -- MAIL FROM / RCPT TO arguments --------------------------------------------

cdef inline bint _is_alnum(unsigned char c) noexcept:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122)


cdef inline bint _is_value_octet(unsigned char c) noexcept:
    # RFC 5321 §4.1.2 esmtp-value: %d33-60 / %d62-126, widened by RFC 6531
    # to UTF-8 (any octet >= 0x80; whether SMTPUTF8 applies is for the
    # session to decide).
    return 33 <= c <= 126 and c != 61 or c >= 128


cdef object _parse_parameter(const unsigned char *s, Py_ssize_t n):
    # One "KEY" or "KEY=VALUE" token (RFC 5321 §4.1.2 esmtp-param).
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t k

    if n == 0 or not _is_alnum(s[0]):
        return None
    while i < n and s[i] != 61:
        if not (_is_alnum(s[i]) or s[i] == 45):
            return None
        i += 1
    if i == n:
        return (_upper_bytes(s, n), None)
    if i + 1 == n:
        return None
    for k in range(i + 1, n):
        if not _is_value_octet(s[k]):
            return None
    return (
        _upper_bytes(s, i),
        PyBytes_FromStringAndSize(<const char *>s + i + 1, n - i - 1),
    )


def parse_path_argument(argument, keyword):
    cdef:
        bytes                arg = bytes(argument)
        bytes                kw = bytes(keyword)
        const unsigned char *s = arg
        Py_ssize_t           n = len(arg)
        Py_ssize_t           i = len(kw)
        Py_ssize_t           j
        bint                 quoted = False
        object               path
        object               param
        list                 params = []

    if n < i or arg[:i].upper() != kw.upper():
        return None
    while i < n and s[i] == _SP:
        i += 1

    # The path: <...> with quoted strings honoured (RFC 5321 §4.1.2
    # Quoted-string may hold ">"), or leniently a bare word.
    if i < n and s[i] == 60:
        j = i + 1
        while j < n:
            if quoted:
                if s[j] == 92:
                    j += 1                 # quoted-pairSMTP: skip one octet
                elif s[j] == 34:
                    quoted = False
            elif s[j] == 34:
                quoted = True
            elif s[j] == 62:
                break
            j += 1
        if j >= n:
            return None
        path = arg[i + 1:j]
        i = j + 1
        if i < n and s[i] != _SP:
            return None
    else:
        j = i
        while j < n and s[j] != _SP:
            j += 1
        if j == i:
            return None
        path = arg[i:j]
        i = j

    # The parameters, separated by runs of spaces.
    while True:
        while i < n and s[i] == _SP:
            i += 1
        if i == n:
            return (path, params)
        j = i
        while j < n and s[j] != _SP:
            j += 1
        param = _parse_parameter(s + i, j - i)
        if param is None:
            return None
        params.append(param)
        i = j
