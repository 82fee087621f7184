"""A message as the relay side sees it: read back from the queue."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RelayRecipient:
    address: str  # forward path without brackets, e.g. "bob@example.com"
    notify: tuple[str, ...] = ()  # DSN NOTIFY= values (RFC 3461), () when not given
    orcpt: str = ""  # DSN ORCPT= as received ("rfc822;bob@example.com"), "" if none

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


@dataclass(slots=True)
class RelayMessage:
    """What the SMTP client needs to send one message to one destination."""

    queue_id: str
    sender: str  # "" for the null reverse path
    recipients: list[RelayRecipient]
    content_path: str  # file holding the message (trace header included)
    content_offset: int  # where the message starts in that file
    content_size: int  # octets of message from content_offset, CRLF line endings
    body: str = "7BIT"  # "7BIT" or "8BITMIME" as declared by the sender
    smtputf8: bool = False
    ret: str = ""  # DSN RET= ("FULL" or "HDRS") or ""
    envid: str = ""  # DSN ENVID= (xtext as received) or ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MXHost:
    """One mail exchanger to try, with its addresses in the order to try them."""

    name: str  # host name, or the address itself for a literal smarthost
    preference: int
    addresses: tuple[str, ...]  # IPv6 and IPv4 addresses, each tried in turn
