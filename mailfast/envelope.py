"""The envelope of one message, and the trace header mailfast prepends."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field

from .addresses import Mailbox
from .directory import LocalTarget


@dataclass(slots=True)
class Recipient:
    mailbox: Mailbox
    targets: tuple[LocalTarget, ...]  # local mailboxes; () for a relayed recipient
    notify: tuple[str, ...] = ()  # DSN NOTIFY= (RFC 3461 §4.1), () when not given
    orcpt: str = ""  # DSN ORCPT= as received, "" when not given

    @property
    def is_remote(self) -> bool:
        return not self.targets


@dataclass(slots=True)
class Envelope:
    client_ip: str
    helo: str
    protocol: str  # "SMTP", "ESMTP" or "UTF8SMTP" (RFC 3848, RFC 6531)
    reverse_path: Mailbox | None = None  # None is the null path <>
    body: str = "7BIT"  # BODY= of MAIL (RFC 6152)
    smtputf8: bool = False
    declared_size: int = 0  # SIZE= of MAIL (RFC 1870), 0 when not given
    ret: str = ""  # DSN RET= (RFC 3461 §4.3): "FULL", "HDRS" or ""
    envid: str = ""  # DSN ENVID= (RFC 3461 §4.4), xtext as received
    user: str = ""  # the authenticated submitter, "" when none
    recipients: list[Recipient] = field(default_factory=list)

    @property
    def sender(self) -> str:
        return "" if self.reverse_path is None else str(self.reverse_path)

    def remote_recipients(self) -> list[Recipient]:
        """Relayed recipients, each address once."""
        seen: dict[str, Recipient] = {}
        for recipient in self.recipients:
            if recipient.is_remote:
                seen.setdefault(str(recipient.mailbox), recipient)
        return list(seen.values())

    def local_targets(self) -> list[LocalTarget]:
        """Each local mailbox once, however many recipients lead to it."""
        seen: dict[LocalTarget, None] = {}
        for recipient in self.recipients:
            for target in recipient.targets:
                seen[target] = None
        return list(seen)


def received_header(
    envelope: Envelope, hostname: str, queue_id: str, when: float
) -> bytes:
    """The Received: trace field of RFC 5321 §4.4, folded, ending in CRLF."""
    helo = _printable(envelope.helo) or "unknown"
    lines = [
        f"Received: from {helo} ([{envelope.client_ip}])",
        f"\tby {hostname} (mailfast) with {envelope.protocol} id {queue_id}",
    ]
    if len(envelope.recipients) == 1:
        lines.append(f"\tfor <{envelope.recipients[0].mailbox}>")
    lines[-1] += "; " + email.utils.formatdate(when, localtime=True)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _printable(text: str) -> str:
    """What a client sent, made safe to put inside a header field."""
    return "".join(c if c.isprintable() and c not in "()\\" else "?" for c in text)
