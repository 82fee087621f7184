"""Every reply mailfast sends, with its RFC 5321 code and RFC 3463 enhanced code.

Replies are pre-encoded bytes so that the hot path only writes them. Texts
never carry exception messages or other data a client controls, except where
a function below builds them from values the server chose (queue ids, sizes).
"""


def _reply(code: int, enhanced: str, text: str) -> bytes:
    return f"{code} {enhanced} {text}\r\n".encode("ascii")


def multiline(code: int, lines: list[str]) -> bytes:
    """A multi-line reply (RFC 5321 §4.2.1): ``250-a``, ``250-b``, ``250 c``."""
    last = len(lines) - 1
    return b"".join(
        f"{code}{' ' if i == last else '-'}{line}\r\n".encode("ascii")
        for i, line in enumerate(lines)
    )


def greeting(hostname: str) -> bytes:
    return f"220 {hostname} ESMTP mailfast\r\n".encode("ascii")


def helo(hostname: str) -> bytes:
    return f"250 {hostname}\r\n".encode("ascii")


def queued(queue_id: str) -> bytes:
    return _reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def message_too_big(limit: int) -> bytes:
    return _reply(552, "5.3.4", f"Message size exceeds fixed limit of {limit} octets")


def closing(hostname: str) -> bytes:
    return f"221 2.0.0 {hostname} closing connection\r\n".encode("ascii")


OK = _reply(250, "2.0.0", "Ok")
SENDER_OK = _reply(250, "2.1.0", "Sender ok")
RECIPIENT_OK = _reply(250, "2.1.5", "Recipient ok")
RESET_OK = _reply(250, "2.0.0", "Reset ok")
START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
CANNOT_VRFY = _reply(252, "2.5.2", "Cannot VRFY user, but will accept message")
HELP = _reply(
    214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"
)

# 4xx: try again later.
SHUTTING_DOWN = _reply(421, "4.3.2", "Service shutting down, try again later")
TIMEOUT = _reply(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_ERRORS = _reply(421, "4.7.0", "Too many errors, closing connection")
LOCAL_ERROR = _reply(451, "4.3.0", "Local error in processing, try again later")
NO_STORAGE = _reply(452, "4.3.1", "Insufficient system storage, try again later")
MAILBOX_UNAVAILABLE = _reply(450, "4.2.0", "Mailbox unavailable, try again later")
TOO_MANY_RECIPIENTS = _reply(452, "4.5.3", "Too many recipients")

# 5xx: syntax and sequence.
UNRECOGNIZED = _reply(500, "5.5.2", "Command unrecognized")
LINE_TOO_LONG = _reply(500, "5.5.2", "Line too long")
BARE_CR_IN_COMMAND = _reply(500, "5.5.2", "Bare CR in command")
NUL_IN_COMMAND = _reply(500, "5.5.2", "NUL octet in command")
NOT_IMPLEMENTED = _reply(502, "5.5.1", "Command not implemented")
HELO_SYNTAX = _reply(501, "5.5.4", "Syntax: EHLO hostname")
MAIL_SYNTAX = _reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
RCPT_SYNTAX = _reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
NO_ARGUMENTS = _reply(501, "5.5.4", "This command takes no arguments")
VRFY_SYNTAX = _reply(501, "5.5.4", "Syntax: VRFY <address>")
BDAT_SYNTAX = _reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]")
BAD_SENDER_ADDRESS = _reply(553, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_ADDRESS = _reply(553, "5.1.3", "Bad recipient address syntax")
UNSUPPORTED_PARAMETER = _reply(555, "5.5.4", "Unsupported parameter")
BAD_PARAMETER = _reply(501, "5.5.4", "Bad parameter value")
UTF8_NOT_DECLARED = _reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
NEED_HELO = _reply(503, "5.5.1", "Send EHLO or HELO first")
NESTED_MAIL = _reply(503, "5.5.1", "Sender already given")
NEED_MAIL = _reply(503, "5.5.1", "Send MAIL first")
NEED_RCPT = _reply(503, "5.5.1", "Send RCPT first")
DATA_AFTER_BDAT = _reply(503, "5.5.1", "DATA cannot follow BDAT")
NO_VALID_RECIPIENTS = _reply(554, "5.5.1", "No valid recipients")

# 5xx: policy and content.
UNKNOWN_USER = _reply(550, "5.1.1", "Mailbox unknown")
RELAY_DENIED = _reply(554, "5.7.1", "Relay access denied")
MESSAGE_BARE_NEWLINE = _reply(
    550, "5.6.0", "Message contains bare CR or LF (RFC 5321 section 2.3.8)"
)
MESSAGE_LINE_TOO_LONG = _reply(
    550, "5.6.0", "Message has a line longer than the limit (RFC 5321 4.5.3.1.6)"
)

# TLS (RFC 3207) and authentication (RFC 4954).
TLS_READY = _reply(220, "2.0.0", "Ready to start TLS")
TLS_NOT_AVAILABLE = _reply(502, "5.5.1", "STARTTLS not available")
TLS_ALREADY_ACTIVE = _reply(554, "5.5.1", "TLS already active")
AUTH_OK = _reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = _reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_CANCELLED = _reply(501, "5.7.0", "Authentication cancelled")
AUTH_BAD_RESPONSE = _reply(501, "5.5.2", "Cannot decode response")
AUTH_UNKNOWN_MECHANISM = _reply(504, "5.5.4", "Unrecognized authentication mechanism")
AUTH_ALREADY = _reply(503, "5.5.1", "Already authenticated")
AUTH_NOT_AVAILABLE = _reply(503, "5.5.1", "Authentication not enabled")
AUTH_IN_TRANSACTION = _reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
AUTH_NEEDS_TLS = _reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
AUTH_REQUIRED = _reply(530, "5.7.0", "Authentication required")
AUTH_TOO_MANY_FAILURES = _reply(
    421, "4.7.0", "Too many failed authentication attempts, try again later"
)
AUTH_UNAVAILABLE = _reply(454, "4.7.0", "Temporary authentication failure")
SENDER_NOT_OWNED = _reply(
    553, "5.7.1", "Sender address not owned by the authenticated user"
)
AUTH_PROMPT_EMPTY = b"334 \r\n"
AUTH_PROMPT_USERNAME = b"334 VXNlcm5hbWU6\r\n"  # "Username:"
AUTH_PROMPT_PASSWORD = b"334 UGFzc3dvcmQ6\r\n"  # "Password:"

# Connection limits.
TOO_MANY_CONNECTIONS = _reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_ADDRESS = _reply(
    421, "4.7.0", "Too many connections from your address, try again later"
)
CONNECTION_RATE = _reply(
    421, "4.7.0", "Connection rate from your address too high, try again later"
)
