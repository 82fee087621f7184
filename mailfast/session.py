"""The SMTP server session of RFC 5321 as a state machine without I/O.

Theory of operation
-------------------
The connection code feeds bytes to the parser and hands each parser event to
``Session.receive``, which returns one step ``(action, payload)``:

    (REPLY, reply)           write the reply
    (CLOSE, reply)           write the reply, then close the connection
    (START_DATA, reply)      write the 354 reply and switch the parser to DATA
    (START_CHUNK, (n, first))  switch the parser to a BDAT chunk of n octets
    (STORE, octets)          append message content to the current message
    (DISCARD, None)          nothing to write and nothing to store
    (COMMIT, None)           the message is complete: make it durable, then
                             call ``committed(queue_id)`` or ``commit_failed(reply)``
    (START_TLS, reply)       write the 220, discard any input already received,
                             run the TLS handshake, then call ``tls_started()``
    (EXPECT_LINE, reply)     write the 334 challenge; the next line is an AUTH
                             response (parser: ``expect_raw_line``)
    (AUTHENTICATE, (login, password))  check the credentials off the loop, then
                             call ``authenticated(user or None)`` for the reply

The session never touches a socket, a file, a clock or a logger, so every
rule below is tested without an event loop.

States::

    CONNECTED --EHLO/HELO--> READY --MAIL--> MAIL --RCPT--> MAIL (more RCPT)
    READY --STARTTLS--> (handshake) --> CONNECTED, EHLO required again
    READY --AUTH--> AUTH (334 challenges) --> AUTHENTICATING --> READY
    MAIL --DATA--> DATA --end of data--> COMMITTING --committed--> READY
    MAIL --BDAT--> CHUNK --end of chunk--> MAIL (not LAST) | COMMITTING (LAST)

Invariants:
  * After STARTTLS nothing learnt before the handshake survives: not the
    EHLO, not input the client pipelined behind the command (RFC 3207 §4.2;
    the caller discards that input).
  * A listener that requires authentication refuses MAIL before AUTH, and
    an authenticated user may relay, but only as one of its own senders
    when the configuration says so.
  * The final 250 of a message comes only from ``committed``: the caller has
    made the message durable by then. A crash before it loses nothing the
    client was told we accepted.
  * A BDAT chunk is always read to its end, even when it will be refused,
    because its octets are not commands (RFC 3030 §2).
  * Content flagged by the parser (bare CR or LF, over-long lines) and an
    over-size message are refused after the end of data, never mid-stream:
    the client is not listening for replies then.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from . import replies
from ._parser import parse_path_argument
from .addresses import AddressError, Mailbox, parse_mailbox
from .directory import Directory
from .envelope import Envelope, Recipient
from .events import (
    BAD_COMMAND,
    COMMAND,
    CONTENT,
    CONTENT_BARE_CR,
    CONTENT_BARE_LF,
    CONTENT_LINE_TOO_LONG,
    END_OF_CHUNK,
    END_OF_DATA,
    REASON_BARE_CR,
    REASON_NUL,
    REASON_TOO_LONG,
)

REPLY = 1
CLOSE = 2
START_DATA = 3
START_CHUNK = 4
STORE = 5
DISCARD = 6
COMMIT = 7
START_TLS = 8
EXPECT_LINE = 9
AUTHENTICATE = 10

_NOTHING = (DISCARD, None)
_BAD_COMMAND_REPLIES = {
    REASON_TOO_LONG: replies.LINE_TOO_LONG,
    REASON_BARE_CR: replies.BARE_CR_IN_COMMAND,
    REASON_NUL: replies.NUL_IN_COMMAND,
}


class State(enum.Enum):
    CONNECTED = "connected"  # before EHLO/HELO
    READY = "ready"  # greeted, no transaction
    MAIL = "mail"  # reverse path given; recipients may follow
    DATA = "data"  # reading DATA content
    CHUNK = "chunk"  # reading a BDAT chunk
    COMMITTING = "committing"  # message complete, waiting for durability
    AUTH = "auth"  # reading the responses of an AUTH exchange
    AUTHENTICATING = "authenticating"  # credentials being checked
    STARTING_TLS = "starting tls"  # handshake in progress
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ListenerPolicy:
    """What one kind of listening socket offers and demands."""

    tls_available: bool = False  # a certificate is configured: offer STARTTLS
    auth_offered: bool = False  # AUTH on this listener at all
    auth_required: bool = False  # MAIL needs AUTH first (submission, RFC 6409)
    implicit_tls: bool = False  # the connection is TLS from its first octet


# RFC 5321 commands mailfast knows but does not offer: 502, not "unrecognized".
_NOT_IMPLEMENTED = frozenset({b"EXPN", b"TURN", b"ETRN", b"SEND", b"SOML", b"SAML"})


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What every session of a worker shares; built once per configuration."""

    hostname: str
    max_message_octets: int
    max_recipients: int
    max_bad_commands: int
    extensions: tuple[str, ...]
    helo_reply: bytes
    greeting: bytes

    def ehlo(self, starttls: bool, auth: bool) -> bytes:
        """The EHLO reply: the fixed extensions plus what this session offers."""
        extensions = list(self.extensions)
        if starttls:
            extensions.append("STARTTLS")
        if auth:
            extensions.append("AUTH PLAIN LOGIN")
        return replies.multiline(250, [self.hostname, *extensions])

    @classmethod
    def build(cls, hostname: str, limits) -> SessionSettings:
        extensions = [
            "PIPELINING",
            f"SIZE {limits.max_message_octets}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
        ]
        return cls(
            hostname=hostname,
            max_message_octets=limits.max_message_octets,
            max_recipients=limits.max_recipients,
            max_bad_commands=limits.max_bad_commands,
            extensions=tuple(extensions),
            helo_reply=replies.helo(hostname),
            greeting=replies.greeting(hostname),
        )


class Session:
    def __init__(
        self,
        settings: SessionSettings,
        directory: Directory,
        client_ip: str,
        relay_permitted: bool = False,
        listener: ListenerPolicy = ListenerPolicy(),
        plaintext_auth_allowed: bool = False,
        sender_allowed: Callable[[str, str], bool] | None = None,
    ):
        self.settings = settings
        self.directory = directory
        self.client_ip = client_ip
        # Decided by the caller's policy (trusted networks); authentication
        # grants it too. The session only applies it.
        self.relay_permitted = relay_permitted
        self.listener = listener
        self.tls_active = listener.implicit_tls
        self.plaintext_auth_allowed = plaintext_auth_allowed
        # (user, address) -> may that user send as that envelope sender?
        # None: any sender.
        self.sender_allowed = sender_allowed
        self.user = ""  # the authenticated user, "" before AUTH
        self._auth_mechanism = b""
        self._auth_login = ""
        self.state = State.CONNECTED
        self.helo = ""
        self.esmtp = False
        self.envelope: Envelope | None = None
        self.bad_commands = 0
        self.messages_accepted = 0
        # Per message: octets received, and why it will be refused (None: it won't).
        self._content_octets = 0
        self._content_refusal: bytes | None = None
        self._chunk_last = False
        self._chunks_seen = False
        self._rcpt_given = False  # any RCPT in this transaction, accepted or not
        self._dispatch = {
            b"EHLO": self._ehlo,
            b"HELO": self._helo,
            b"MAIL": self._mail,
            b"RCPT": self._rcpt,
            b"DATA": self._data,
            b"BDAT": self._bdat,
            b"RSET": self._rset,
            b"NOOP": self._noop,
            b"QUIT": self._quit,
            b"VRFY": self._vrfy,
            b"HELP": self._help,
            b"STARTTLS": self._starttls,
            b"AUTH": self._auth,
        }

    @property
    def in_content(self) -> bool:
        """True while message content is being read (the DATA timeout applies)."""
        return self.state is State.DATA or self.state is State.CHUNK

    def greeting(self) -> bytes:
        return self.settings.greeting

    def receive(self, event: tuple) -> tuple[int, object]:
        kind = event[0]
        if kind == CONTENT:
            return self._content(event[1])
        if self.state is State.AUTH:
            return self._auth_response(event)
        if kind == COMMAND:
            handler = self._dispatch.get(event[1])
            if handler is None:
                if event[1] in _NOT_IMPLEMENTED:
                    return self._error(replies.NOT_IMPLEMENTED)
                return self._error(replies.UNRECOGNIZED)
            return handler(event[2])
        if kind == END_OF_DATA:
            return self._end_of_data(event[1])
        if kind == END_OF_CHUNK:
            return self._end_of_chunk(event[1])
        if kind == BAD_COMMAND:
            return self._error(_BAD_COMMAND_REPLIES[event[1]])
        raise ValueError(f"unknown parser event {event!r}")

    def committed(self, queue_id: str) -> bytes:
        """The message is durable: the reply that acknowledges it."""
        assert self.state is State.COMMITTING
        self.messages_accepted += 1
        self._end_transaction()
        return replies.queued(queue_id)

    def commit_failed(self, reply: bytes) -> bytes:
        """The message could not be made durable: the client should retry."""
        assert self.state is State.COMMITTING
        self._end_transaction()
        return reply

    def tls_started(self) -> None:
        """The handshake succeeded: start over, as RFC 3207 §4.2 requires."""
        self.tls_active = True
        self.helo = ""
        self.esmtp = False
        self._end_transaction()
        self.state = State.CONNECTED

    def authenticated(self, user: str | None) -> tuple[int, object]:
        """The result of AUTHENTICATE: the user name, or None if refused."""
        assert self.state is State.AUTHENTICATING
        self.state = State.READY
        if user is None:
            return self._error(replies.AUTH_FAILED)
        self.user = user
        self.relay_permitted = True
        return REPLY, replies.AUTH_OK

    def auth_unavailable(self) -> bytes:
        """Checking the credentials failed for a reason of ours (454)."""
        assert self.state is State.AUTHENTICATING
        self.state = State.READY
        return replies.AUTH_UNAVAILABLE

    def timed_out(self) -> bytes:
        self.state = State.CLOSED
        return replies.TIMEOUT

    def shutting_down(self) -> bytes:
        self.state = State.CLOSED
        return replies.SHUTTING_DOWN

    # Commands.

    def _ehlo(self, argument: bytes) -> tuple[int, object]:
        return self._greet(argument, esmtp=True)

    def _helo(self, argument: bytes) -> tuple[int, object]:
        return self._greet(argument, esmtp=False)

    def _greet(self, argument: bytes, esmtp: bool) -> tuple[int, object]:
        if not argument or b" " in argument:
            return self._error(replies.HELO_SYNTAX)
        self.helo = argument.decode("utf-8", "replace")
        self.esmtp = esmtp
        self._end_transaction()  # RFC 5321 §4.1.4: EHLO resets any transaction
        if not esmtp:
            return REPLY, self.settings.helo_reply
        return REPLY, self.settings.ehlo(
            starttls=self.listener.tls_available and not self.tls_active,
            auth=self._auth_available() and not self.user,
        )

    def _mail(self, argument: bytes) -> tuple[int, object]:
        if self.state is State.CONNECTED:
            return self._error(replies.NEED_HELO)
        if self.state is not State.READY:
            return self._error(replies.NESTED_MAIL)
        if self.listener.auth_required and not self.user:
            return self._error(replies.AUTH_REQUIRED)
        parsed = parse_path_argument(argument, b"FROM:")
        if parsed is None:
            return self._error(replies.MAIL_SYNTAX)
        path, parameters = parsed
        envelope = Envelope(
            self.client_ip, self.helo, "ESMTP" if self.esmtp else "SMTP"
        )
        if _repeats_a_key(parameters):  # RFC 3461 §4, RFC 1870 §6: 501
            return self._error(replies.BAD_PARAMETER)
        for key, value in parameters:
            refusal = self._mail_parameter(envelope, key, value)
            if refusal is not None:
                return self._error(refusal)
        if path:
            try:
                envelope.reverse_path = parse_mailbox(path, envelope.smtputf8)
            except AddressError as exc:
                return self._error(
                    replies.UTF8_NOT_DECLARED
                    if exc.non_ascii
                    else replies.BAD_SENDER_ADDRESS
                )
        # The null sender belongs to no user: allowing it would let anyone
        # with a login send mail nobody answers for.
        if (
            self.user
            and self.sender_allowed is not None
            and (
                envelope.reverse_path is None
                or not self.sender_allowed(self.user, str(envelope.reverse_path))
            )
        ):
            return self._error(replies.SENDER_NOT_OWNED)
        envelope.protocol = self._protocol_name(envelope.smtputf8)
        envelope.user = self.user
        self.envelope = envelope
        self.state = State.MAIL
        return REPLY, replies.SENDER_OK

    def _mail_parameter(
        self, envelope: Envelope, key: bytes, value: bytes | None
    ) -> bytes | None:
        """Apply one ESMTP parameter of MAIL; the refusal, or None."""
        if key == b"SIZE":  # RFC 1870
            if value is None or not value.isdigit() or len(value) > 20:
                return replies.BAD_PARAMETER
            envelope.declared_size = int(value)
            if envelope.declared_size > self.settings.max_message_octets:
                return replies.message_too_big(self.settings.max_message_octets)
            return None
        if key == b"BODY":  # RFC 6152
            body = (value or b"").upper()
            if body not in (b"7BIT", b"8BITMIME"):
                return replies.UNSUPPORTED_PARAMETER
            envelope.body = body.decode("ascii")
            return None
        if key == b"SMTPUTF8" and value is None:  # RFC 6531
            envelope.smtputf8 = True
            return None
        if key == b"AUTH":  # RFC 4954 §5: we do not trust other servers' claims
            return None
        if key == b"RET" and not envelope.ret:  # RFC 3461 §4.3
            ret = (value or b"").upper()
            if ret not in (b"FULL", b"HDRS"):
                return replies.BAD_PARAMETER
            envelope.ret = ret.decode("ascii")
            return None
        if key == b"ENVID" and not envelope.envid:  # RFC 3461 §4.4
            if not value or len(value) > 100 or not _is_xtext(value):
                return replies.BAD_PARAMETER
            envelope.envid = value.decode("ascii")
            return None
        return replies.UNSUPPORTED_PARAMETER

    def _rcpt_parameters(
        self, recipient: Recipient, parameters: list[tuple[bytes, bytes | None]]
    ) -> bytes | None:
        """Apply RCPT's DSN parameters (RFC 3461 §4.1-4.2); the refusal, or None."""
        if _repeats_a_key(parameters):
            return replies.BAD_PARAMETER
        for key, value in parameters:
            if key == b"NOTIFY" and value and not recipient.notify:
                notify = tuple(value.upper().decode("ascii", "replace").split(","))
                if not set(notify) <= {"SUCCESS", "FAILURE", "DELAY"} and notify != (
                    "NEVER",
                ):
                    return replies.BAD_PARAMETER
                recipient.notify = notify
            elif key == b"ORCPT" and value and not recipient.orcpt:
                address_type, semicolon, address = value.partition(b";")
                well_formed = semicolon and _is_atom(address_type)
                if not well_formed or not _is_xtext(address):
                    return replies.BAD_PARAMETER
                recipient.orcpt = value.decode("ascii")
            else:
                return replies.UNSUPPORTED_PARAMETER
        return None

    def _rcpt(self, argument: bytes) -> tuple[int, object]:
        if self.state is not State.MAIL:
            return self._error(
                replies.NEED_HELO
                if self.state is State.CONNECTED
                else replies.NEED_MAIL
            )
        envelope = self.envelope
        self._rcpt_given = True
        parsed = parse_path_argument(argument, b"TO:")
        if parsed is None or not parsed[0]:
            return self._error(replies.RCPT_SYNTAX)
        path, parameters = parsed
        if len(envelope.recipients) >= self.settings.max_recipients:
            return REPLY, replies.TOO_MANY_RECIPIENTS
        if path.lower() == b"postmaster":  # RFC 5321 §4.5.1: no domain needed
            mailbox = Mailbox("postmaster", "")
        else:
            try:
                mailbox = parse_mailbox(path, envelope.smtputf8)
            except AddressError as exc:
                return self._error(
                    replies.UTF8_NOT_DECLARED
                    if exc.non_ascii
                    else replies.BAD_RECIPIENT_ADDRESS
                )
        if self.directory.is_local_domain(mailbox.domain) or not mailbox.domain:
            targets = self.directory.resolve(mailbox)
            if targets is None:
                return self._error(replies.UNKNOWN_USER)
        elif self.relay_permitted and not mailbox.domain.startswith("["):
            targets = ()
        else:
            return self._error(replies.RELAY_DENIED)
        recipient = Recipient(mailbox, targets)
        refusal = self._rcpt_parameters(recipient, parameters)
        if refusal is not None:
            return self._error(refusal)
        envelope.recipients.append(recipient)
        return REPLY, replies.RECIPIENT_OK

    def _data(self, argument: bytes) -> tuple[int, object]:
        if argument:
            return self._error(replies.NO_ARGUMENTS)
        refusal = self._content_precondition()
        if refusal is not None:
            return self._error(refusal)
        if self._chunks_seen:
            return self._error(replies.DATA_AFTER_BDAT)
        self._start_content()
        self.state = State.DATA
        return START_DATA, replies.START_DATA

    def _bdat(self, argument: bytes) -> tuple[int, object]:
        size_text, _space, rest = argument.partition(b" ")
        last = rest.strip().upper()
        if not size_text.isdigit() or len(size_text) > 18 or last not in (b"", b"LAST"):
            # Without a size we cannot know where the chunk ends: the best we
            # can do is treat what follows as commands, as the client will.
            return self._error(replies.BDAT_SYNTAX)
        size = int(size_text)
        first = not self._chunks_seen
        refusal = self._content_precondition()
        if refusal is not None:
            # The chunk must still be read; refuse it when it is complete.
            self._content_refusal = refusal
            self._chunk_last = True
            self._chunks_seen = True
            self.state = State.CHUNK
            return START_CHUNK, (size, first)
        if first:
            self._start_content()
        self._chunks_seen = True
        self._chunk_last = last == b"LAST"
        self.state = State.CHUNK
        return START_CHUNK, (size, first)

    def _content_precondition(self) -> bytes | None:
        if self.state is State.CONNECTED:
            return replies.NEED_HELO
        if self.state is not State.MAIL:
            return replies.NEED_MAIL
        if not self.envelope.recipients:
            # RFC 5321 §3.3: 503 when no RCPT was sent, 554 when all were refused.
            return (
                replies.NO_VALID_RECIPIENTS if self._rcpt_given else replies.NEED_RCPT
            )
        return None

    def _protocol_name(self, smtputf8: bool) -> str:
        """The "with" value of the Received field (RFC 3848, RFC 6531)."""
        if not self.esmtp:
            return "SMTP"
        name = "UTF8SMTP" if smtputf8 else "ESMTP"
        if self.tls_active:
            name += "S"
        if self.user:
            name += "A"
        return name

    def _starttls(self, argument: bytes) -> tuple[int, object]:
        if argument:
            return self._error(replies.NO_ARGUMENTS)
        if self.tls_active:
            return self._error(replies.TLS_ALREADY_ACTIVE)
        if not self.listener.tls_available:
            return self._error(replies.TLS_NOT_AVAILABLE)
        if self.state is State.CONNECTED:
            return self._error(replies.NEED_HELO)
        self.state = State.STARTING_TLS
        return START_TLS, replies.TLS_READY

    def _auth_available(self) -> bool:
        return self.listener.auth_offered and (
            self.tls_active or self.plaintext_auth_allowed
        )

    def _auth(self, argument: bytes) -> tuple[int, object]:
        if self.state is State.CONNECTED:
            return self._error(replies.NEED_HELO)
        if not self.listener.auth_offered:
            return self._error(replies.AUTH_NOT_AVAILABLE)
        if not self._auth_available():
            return self._error(replies.AUTH_NEEDS_TLS)
        if self.user:
            return self._error(replies.AUTH_ALREADY)
        if self.state is not State.READY:
            return self._error(replies.AUTH_IN_TRANSACTION)
        mechanism, _space, initial = argument.partition(b" ")
        mechanism = mechanism.upper()
        initial = initial.strip()
        if mechanism not in (b"PLAIN", b"LOGIN"):
            return self._error(replies.AUTH_UNKNOWN_MECHANISM)
        self._auth_mechanism = mechanism
        self._auth_login = ""
        self.state = State.AUTH
        if not initial:
            prompt = (
                replies.AUTH_PROMPT_EMPTY
                if mechanism == b"PLAIN"
                else replies.AUTH_PROMPT_USERNAME
            )
            return EXPECT_LINE, prompt
        return self._auth_step(initial)

    def _auth_response(self, event: tuple) -> tuple[int, object]:
        """One line of an AUTH exchange: a base64 response, or "*" to cancel."""
        if event[0] != COMMAND:
            self.state = State.READY
            return self._error(replies.AUTH_BAD_RESPONSE)
        line = event[2] if not event[1] else event[1] + b" " + event[2]
        if line == b"*":  # RFC 4954 §4
            self.state = State.READY
            return self._error(replies.AUTH_CANCELLED)
        return self._auth_step(line)

    def _auth_step(self, response: bytes) -> tuple[int, object]:
        try:
            # "=" is an empty initial response (RFC 4954 §4).
            decoded = (
                b"" if response == b"=" else base64.b64decode(response, validate=True)
            )
            text = decoded.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            self.state = State.READY
            return self._error(replies.AUTH_BAD_RESPONSE)
        if self._auth_mechanism == b"PLAIN":  # RFC 4616: authzid NUL authcid NUL passwd
            parts = text.split("\0")
            if len(parts) != 3 or not parts[1]:
                self.state = State.READY
                return self._error(replies.AUTH_BAD_RESPONSE)
            if parts[0] not in ("", parts[1]):  # acting for another: never
                self.state = State.READY
                return self._error(replies.AUTH_FAILED)
            return self._check(parts[1], parts[2])
        if not self._auth_login:  # LOGIN: the user name first, then the password
            if not text:
                self.state = State.READY
                return self._error(replies.AUTH_BAD_RESPONSE)
            self._auth_login = text
            return EXPECT_LINE, replies.AUTH_PROMPT_PASSWORD
        return self._check(self._auth_login, text)

    def _check(self, login: str, password: str) -> tuple[int, object]:
        self._auth_login = ""
        self.state = State.AUTHENTICATING
        return AUTHENTICATE, (login, password)

    def _rset(self, argument: bytes) -> tuple[int, object]:
        if argument:
            return self._error(replies.NO_ARGUMENTS)
        self._end_transaction()
        return REPLY, replies.RESET_OK

    def _noop(self, argument: bytes) -> tuple[int, object]:
        return REPLY, replies.OK

    def _quit(self, argument: bytes) -> tuple[int, object]:
        self.state = State.CLOSED
        return CLOSE, replies.closing(self.settings.hostname)

    def _vrfy(self, argument: bytes) -> tuple[int, object]:
        if not argument:
            return self._error(replies.VRFY_SYNTAX)
        return REPLY, replies.CANNOT_VRFY

    def _help(self, argument: bytes) -> tuple[int, object]:
        return REPLY, replies.HELP

    # Content.

    def _start_content(self) -> None:
        self._content_octets = 0
        self._content_refusal = None

    def _content(self, octets: bytes) -> tuple[int, object]:
        if self._content_refusal is not None:
            return _NOTHING
        self._content_octets += len(octets)
        if self._content_octets > self.settings.max_message_octets:
            self._content_refusal = replies.message_too_big(
                self.settings.max_message_octets
            )
            return _NOTHING
        return STORE, octets

    def _content_flags_refusal(self, flags: int) -> bytes | None:
        if flags & (CONTENT_BARE_CR | CONTENT_BARE_LF):
            return replies.MESSAGE_BARE_NEWLINE
        if flags & CONTENT_LINE_TOO_LONG:
            return replies.MESSAGE_LINE_TOO_LONG
        return None

    def _end_of_data(self, flags: int) -> tuple[int, object]:
        refusal = self._content_refusal or self._content_flags_refusal(flags)
        if refusal is not None:
            self._end_transaction()
            return self._error(refusal)
        self.state = State.COMMITTING
        return COMMIT, None

    def _end_of_chunk(self, flags: int) -> tuple[int, object]:
        """``flags`` must already include what only the last chunk can tell."""
        refusal = self._content_refusal or self._content_flags_refusal(flags)
        if refusal is not None:
            if self.envelope is not None:
                self._end_transaction()  # RFC 3030 §2: a refused chunk ends it
            else:
                self.state = State.READY if self.helo else State.CONNECTED
                self._chunks_seen = False
            return self._error(refusal)
        if not self._chunk_last:
            self.state = State.MAIL
            return REPLY, replies.OK
        self.state = State.COMMITTING
        return COMMIT, None

    @property
    def chunk_is_last(self) -> bool:
        """Whether the chunk being read ends the message (BDAT ... LAST)."""
        return self._chunk_last

    # Bookkeeping.

    def _end_transaction(self) -> None:
        self.envelope = None
        self._rcpt_given = False
        self._chunks_seen = False
        self._chunk_last = False
        self._content_refusal = None
        if self.state is not State.CLOSED:
            self.state = State.READY if self.helo else State.CONNECTED

    def _error(self, reply: bytes) -> tuple[int, object]:
        """A refusal that counts against the client's error budget."""
        self.bad_commands += 1
        if self.bad_commands > self.settings.max_bad_commands:
            self.state = State.CLOSED
            return CLOSE, replies.TOO_MANY_ERRORS
        return REPLY, reply


def _repeats_a_key(parameters: list[tuple[bytes, bytes | None]]) -> bool:
    return len({key for key, _value in parameters}) != len(parameters)


_ATOM = re.compile(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\Z")


def _is_atom(value: bytes) -> bool:
    """RFC 5322 atext only: the address type of ORCPT (RFC 3461 §4.2)."""
    return _ATOM.match(value) is not None


def _is_xtext(value: bytes) -> bool:
    """RFC 3461 §4: printable ASCII except "+" and "=", with "+XX" hex escapes.

    An escape must stand for printable ASCII or a space: what it encodes ends
    up in the fields of a bounce, where a CR, LF or non-ASCII octet has no
    place (ENVID must be printable US-ASCII, RFC 3461 §4.4).
    """
    i = 0
    while i < len(value):
        octet = value[i]
        if octet == 0x2B:  # "+" must start a two-digit upper-case hex escape
            escape = value[i + 1 : i + 3]
            if len(escape) != 2 or not all(c in b"0123456789ABCDEF" for c in escape):
                return False
            if not 0x20 <= int(escape, 16) <= 0x7E:
                return False
            i += 3
            continue
        if not 0x21 <= octet <= 0x7E or octet == 0x3D:
            return False
        i += 1
    return True
