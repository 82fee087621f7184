"""What the parsers emit, shared by the Cython parser and its pure-Python twin.

Events are plain tuples whose first item is one of the kinds below; tuples are
the cheapest object the compiled parser can hand to Python, and two parsers'
outputs compare with ``==`` in differential tests.

    (COMMAND, verb, argument)       verb: upper-cased bytes; argument: bytes after
                                    the verb's separating spaces, trailing spaces,
                                    tabs and the line ending removed
    (BAD_COMMAND, reason)           a command line that cannot be a command;
                                    reason is one of the REASON_* values
    (CONTENT, octets)               message content, dot-unstuffed for DATA,
                                    verbatim for BDAT
    (END_OF_DATA, flags, size)      the CRLF.CRLF terminator was seen; size counts
                                    the content octets emitted for this message
    (END_OF_CHUNK, flags, size)     the announced BDAT chunk is complete; size is
                                    the running total for the message

flags is a bit set of the CONTENT_* values, accumulated over the whole message.
"""

COMMAND = 1
BAD_COMMAND = 2
CONTENT = 3
END_OF_DATA = 4
END_OF_CHUNK = 5

# Why a command line was refused.
REASON_TOO_LONG = 1  # longer than the command line limit (RFC 5321 §4.5.3.1.4)
REASON_BARE_CR = 2  # a CR not followed by LF inside the line
REASON_NUL = 3  # a NUL octet

# What was seen in message content.
CONTENT_BARE_CR = 1  # a CR not followed by LF (RFC 5321 §2.3.8 forbids it)
CONTENT_BARE_LF = 2  # an LF not preceded by CR
CONTENT_LINE_TOO_LONG = 4  # a line longer than the data line limit
CONTENT_NO_FINAL_CRLF = 8  # BDAT content that does not end with CRLF
