"""What happened to one recipient on one delivery attempt.

Decided from reply codes, never by reading reply text: 2xx delivered, 4xx
deferred (retry later), 5xx failed (bounce).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.Enum):
    DELIVERED = "sent"
    DEFERRED = "deferred"
    FAILED = "bounced"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    enhanced: str  # RFC 3463 status code, such as "5.1.1"
    text: str  # for logs and DSNs: the remote reply or our own reason
    remote_host: str = ""  # "mx.example.com[192.0.2.1]:25" when a server answered
    remote_reply: str = ""  # the SMTP reply as received (code, enhanced code, text)

    @classmethod
    def from_reply(
        cls, code: int, enhanced: str, text: str, remote_host: str = ""
    ) -> Outcome:
        """Classify a remote SMTP reply; ``enhanced`` may be "" when none was sent."""
        if 200 <= code < 300:
            status, klass = Status.DELIVERED, "2"
        elif 400 <= code < 500:
            status, klass = Status.DEFERRED, "4"
        else:
            status, klass = Status.FAILED, "5"
        reply = f"{code} {enhanced} {text}".replace("  ", " ").strip()
        return cls(status, enhanced or f"{klass}.0.0", text, remote_host, reply)

    @classmethod
    def deferred(cls, enhanced: str, text: str, remote_host: str = "") -> Outcome:
        return cls(Status.DEFERRED, enhanced, text, remote_host)

    @classmethod
    def failed(cls, enhanced: str, text: str, remote_host: str = "") -> Outcome:
        return cls(Status.FAILED, enhanced, text, remote_host)
