"""Mailbox syntax of RFC 5321 §4.1.2, with the SMTPUTF8 extension of RFC 6531.

Strict where a wrong answer could route mail somewhere unintended (the domain,
quoting, the ``@`` that splits local part from domain), lenient where real
clients are merely untidy (case of the domain, source routes, which RFC 5321
§4.1.1.3 says to accept and ignore).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PATH_OCTETS = 256  # RFC 5321 §4.5.3.1.3, angle brackets included
_ATEXT = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LABEL = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


@dataclass(frozen=True, slots=True)
class Mailbox:
    local_part: str  # as sent, quotes included: delivery code compares it folded
    domain: str  # lower case; "" only for the special recipient <postmaster>

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain}" if self.domain else self.local_part


class AddressError(ValueError):
    """The path is not a mailbox; ``non_ascii`` tells the reply to choose."""

    def __init__(self, non_ascii: bool = False):
        super().__init__()
        self.non_ascii = non_ascii


def parse_mailbox(path: bytes, utf8: bool) -> Mailbox:
    """Parse the inside of ``<...>`` (not empty) into a Mailbox.

    ``utf8`` says whether the transaction declared SMTPUTF8; without it a
    non-ASCII address raises AddressError(non_ascii=True).
    """
    if len(path) + 2 > MAX_PATH_OCTETS:
        raise AddressError()
    if path.startswith(b"@"):  # source route "@a,@b:user@c": accept and ignore
        _route, colon, path = path.partition(b":")
        if not colon:
            raise AddressError()
    if not path.isascii():
        if not utf8:
            raise AddressError(non_ascii=True)
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            raise AddressError() from None
    at = _split_at(path)
    if at < 0:
        raise AddressError()
    local_part, domain = path[:at], path[at + 1 :]
    if not _is_local_part(local_part) or not _is_domain(domain):
        raise AddressError()
    return Mailbox(local_part.decode("utf-8"), domain.decode("utf-8").lower())


def _split_at(path: bytes) -> int:
    """Index of the ``@`` that ends the local part, or -1."""
    if not path.startswith(b'"'):
        return path.find(b"@")
    i = 1
    while i < len(path):
        octet = path[i]
        if octet == 0x5C:  # backslash quotes the next octet
            i += 2
            continue
        if octet == 0x22:
            return i + 1 if path[i + 1 : i + 2] == b"@" else -1
        i += 1
    return -1


def _is_local_part(local_part: bytes) -> bool:
    if local_part.startswith(b'"'):
        # Quoting allows spaces and specials, never control characters: they
        # would end up in headers and log lines.
        return (
            len(local_part) >= 2
            and local_part.endswith(b'"')
            and all(0x20 <= octet <= 0x7E or octet >= 0x80 for octet in local_part)
        )
    if not local_part or local_part.startswith(b".") or local_part.endswith(b"."):
        return False
    if b".." in local_part:
        return False
    return all(
        octet in _ATEXT or octet == 0x2E or octet >= 0x80 for octet in local_part
    )


def _is_domain(domain: bytes) -> bool:
    if domain.startswith(b"[") and domain.endswith(b"]"):  # address literal
        inner = domain[1:-1]
        return bool(inner) and all(0x21 <= octet <= 0x7E for octet in inner)
    if not domain or len(domain) > 255:
        return False
    labels = domain.split(b".")
    if labels[-1] == b"":  # one trailing dot is legal DNS, never our own name
        labels.pop()
    for label in labels:
        if not label or len(label) > 63 or label[0] == 0x2D or label[-1] == 0x2D:
            return False
        if not all(octet in _LABEL or octet >= 0x80 for octet in label):
            return False
    return bool(labels)
