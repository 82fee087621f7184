"""Delivery status notifications (RFC 3464) for recipients that failed.

The report is built as bytes by hand, not with the ``email`` package: the
returned original must travel exactly as we queued it, and the structure of
a DSN is small and fixed.
"""

from __future__ import annotations

import email.utils
import os
from dataclasses import dataclass

from .outcome import Outcome
from .relaymodel import RelayRecipient

# Larger originals are returned as headers only, unless RET=FULL asked for all.
RETURN_FULL_LIMIT_OCTETS = 50_000
HEADER_READ_LIMIT_OCTETS = 256 * 1024


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    recipient: RelayRecipient
    outcome: Outcome


def decode_xtext(value: str) -> str:
    """RFC 3461 §4: "+XX" is the octet with hex value XX."""
    out, i = [], 0
    while i < len(value):
        escape = value[i + 1 : i + 3]
        if (
            value[i] == "+"
            and len(escape) == 2
            and all(c in "0123456789ABCDEFabcdef" for c in escape)
        ):
            out.append(chr(int(escape, 16)))
            i += 3
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def read_original(path: str, offset: int, size: int, ret: str) -> tuple[bytes, bool]:
    """The part of the original to return, and whether it is the whole message.

    Blocking: call from an executor.
    """
    whole = ret == "FULL" or (ret != "HDRS" and size <= RETURN_FULL_LIMIT_OCTETS)
    with open(path, "rb") as f:
        f.seek(offset)
        if whole:
            return f.read(size), True
        head = f.read(min(size, HEADER_READ_LIMIT_OCTETS))
    end = head.find(b"\r\n\r\n")
    return (head if end < 0 else head[: end + 2]), False


def build_dsn(
    *,
    reporting_mta: str,
    queue_id: str,
    sender: str,
    arrival: float,
    envid: str,
    failures: list[FailedRecipient],
    original: bytes,
    original_is_whole: bool,
    now: float,
) -> bytes:
    """A multipart/report DSN, CRLF line endings, addressed to ``sender``."""
    # RFC 2046 §5.1.1: at most 70 characters, so no host name in it.
    boundary = f"{queue_id}.{os.urandom(8).hex()}"
    date = email.utils.formatdate(now, localtime=True)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <{queue_id}.dsn.{int(now)}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",  # RFC 3834: never answer this automatically
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "The details are below; the original message is attached.",
        "",
    ]
    for failure in failures:
        reason = failure.outcome.remote_reply or (
            f"{failure.outcome.enhanced} {failure.outcome.text}"
        )
        host = failure.outcome.remote_host
        where = f" (host {host} said)" if host else ""
        lines.append(f"<{failure.recipient.address}>{where}: {reason}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Mailfast-Queue-ID: {queue_id}",
    ]
    if envid:
        lines.append(f"Original-Envelope-Id: {_field_safe(decode_xtext(envid))}")
    lines.append(f"Arrival-Date: {email.utils.formatdate(arrival, localtime=True)}")
    for failure in failures:
        lines.append("")
        lines += _recipient_fields(failure, date)
    original_type = "message/rfc822" if original_is_whole else "text/rfc822-headers"
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message"
        if original_is_whole
        else "Content-Description: Undelivered Message Headers",
        f"Content-Type: {original_type}",
        "",
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8")
    if not original.endswith(b"\r\n"):
        original += b"\r\n"
    return head + original + f"\r\n--{boundary}--\r\n".encode("utf-8")


def _recipient_fields(failure: FailedRecipient, date: str) -> list[str]:
    recipient, outcome = failure.recipient, failure.outcome
    fields = []
    if recipient.orcpt:
        address_type, _semicolon, address = recipient.orcpt.partition(";")
        fields.append(
            f"Original-Recipient: {_field_safe(address_type)}; "
            f"{_field_safe(decode_xtext(address))}"
        )
    fields += [
        f"Final-Recipient: rfc822; {recipient.address}",
        "Action: failed",
        f"Status: {outcome.enhanced}",
    ]
    if outcome.remote_host:
        fields.append(f"Remote-MTA: dns; {outcome.remote_host.partition('[')[0]}")
    if outcome.remote_reply:
        fields.append(f"Diagnostic-Code: smtp; {outcome.remote_reply}")
    else:
        fields.append(f"Diagnostic-Code: x-mailfast; {outcome.text}")
    fields.append(f"Last-Attempt-Date: {date}")
    return fields


def _field_safe(text: str) -> str:
    """A decoded xtext made safe for a report field: a "+0D+0A" in ENVID or
    ORCPT must not start a field of its own, nor a non-ASCII octet appear."""
    return "".join("?" if not 0x20 <= ord(c) <= 0x7E else c for c in text)
