"""Mailbox syntax: what parse_mailbox accepts, how it splits it, what it refuses."""

from __future__ import annotations

import pytest

from mailfast.addresses import AddressError, Mailbox, parse_mailbox

# RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its angle brackets,
# so at most 254 between them. Long local parts keep the domain valid.
LONGEST_PATH = b"a" * 242 + b"@example.com"
OVERLONG_PATH = b"a" * 245 + b"@example.com"

VALID = {
    "plain": (b"alice@example.com", False, Mailbox("alice", "example.com")),
    "domain folded, local part kept": (
        b"Alice@EXAMPLE.Com",
        False,
        Mailbox("Alice", "example.com"),
    ),
    "every atext octet": (
        b"first.last+tag!#$%&'*/=?^_`{|}~-@example.com",
        False,
        Mailbox("first.last+tag!#$%&'*/=?^_`{|}~-", "example.com"),
    ),
    "single-label domain": (b"alice@localhost", False, Mailbox("alice", "localhost")),
    "hyphen and digits in labels": (
        b"alice@mx-1.123.example",
        False,
        Mailbox("alice", "mx-1.123.example"),
    ),
    "label of 63 octets": (
        b"alice@" + b"x" * 63 + b".example",
        False,
        Mailbox("alice", "x" * 63 + ".example"),
    ),
    # The quoted local part keeps its quotes: delivery compares it as sent.
    "quoted, with @ inside": (
        b'"a@b"@example.com',
        False,
        Mailbox('"a@b"', "example.com"),
    ),
    "quoted, with spaces and >": (
        b'"john > smith"@example.com',
        False,
        Mailbox('"john > smith"', "example.com"),
    ),
    "quoted pair": (b'"a\\"b"@example.com', False, Mailbox('"a\\"b"', "example.com")),
    "empty quoted string": (b'""@example.com', False, Mailbox('""', "example.com")),
    # An absolute domain name is not folded into the relative one: mailfast
    # must not take "example.com." for a domain it serves by accident.
    "trailing dot kept": (
        b"alice@example.com.",
        False,
        Mailbox("alice", "example.com."),
    ),
    "IPv4 address literal": (
        b"alice@[192.0.2.1]",
        False,
        Mailbox("alice", "[192.0.2.1]"),
    ),
    "IPv6 address literal": (
        b"alice@[IPv6:2001:db8::1]",
        False,
        Mailbox("alice", "[ipv6:2001:db8::1]"),
    ),
    # RFC 5321 §4.1.1.3 and appendix C: accept a source route and ignore it.
    "source route": (
        b"@a.example,@b.example:alice@example.com",
        False,
        Mailbox("alice", "example.com"),
    ),
    "longest path": (LONGEST_PATH, False, Mailbox("a" * 242, "example.com")),
    # RFC 6531: with SMTPUTF8, UTF-8 anywhere in the mailbox.
    "UTF-8 with SMTPUTF8": (
        "jörg@bücher.example".encode(),
        True,
        Mailbox("jörg", "bücher.example"),
    ),
    "UTF-8 domain folded": (
        "JÖRG@BÜCHER.example".encode(),
        True,
        Mailbox("JÖRG", "bücher.example"),
    ),
    "UTF-8 inside quotes": (
        '"jörg smith"@example.com'.encode(),
        True,
        Mailbox('"jörg smith"', "example.com"),
    ),
    "ASCII with SMTPUTF8": (
        b"alice@example.com",
        True,
        Mailbox("alice", "example.com"),
    ),
}

# path, SMTPUTF8 declared, whether the refusal is for non-ASCII octets.
INVALID = {
    "no @": (b"alice", False, False),
    "empty domain": (b"alice@", False, False),
    "empty local part": (b"@example.com", False, False),
    "two @": (b"a@b@example.com", False, False),
    "@@": (b"alice@@example.com", False, False),
    "leading dot in local part": (b".alice@example.com", False, False),
    "trailing dot in local part": (b"alice.@example.com", False, False),
    "two dots in local part": (b"al..ice@example.com", False, False),
    "space outside quotes": (b"al ice@example.com", False, False),
    "quote inside an atom": (b'al"ice@example.com', False, False),
    "quote not closed": (b'"alice@example.com', False, False),
    "text after the closing quote": (b'"al"ice@example.com', False, False),
    "closing quote escaped": (b'"alice\\"@example.com', False, False),
    # RFC 5321 §4.1.2 qtextSMTP and quoted-pairSMTP: octets 32 to 126 only.
    # A control octet would reach the Received field and the log lines.
    "escape octet inside quotes": (b'"a\x1b[2Jb"@example.com', False, False),
    "DEL inside quotes": (b'"a\x7fb"@example.com', False, False),
    "label starting with hyphen": (b"alice@-mx.example", False, False),
    "label ending with hyphen": (b"alice@mx-.example", False, False),
    "empty label": (b"alice@mx..example", False, False),
    "domain starting with a dot": (b"alice@.example.com", False, False),
    "two trailing dots": (b"alice@example.com..", False, False),
    "domain that is a dot": (b"alice@.", False, False),
    "underscore in label": (b"alice@mail_host.example", False, False),
    "label of 64 octets": (b"alice@" + b"x" * 64 + b".example", False, False),
    "empty address literal": (b"alice@[]", False, False),
    "space in address literal": (b"alice@[192.0.2.1 ]", False, False),
    "address literal not closed": (b"alice@[192.0.2.1", False, False),
    "source route without colon": (b"@a.example,alice@example.com", False, False),
    "source route and nothing": (b"@a.example:", False, False),
    "overlong path": (OVERLONG_PATH, False, False),
    "non-ASCII local part without SMTPUTF8": ("jörg@example.com".encode(), False, True),
    "non-ASCII domain without SMTPUTF8": ("alice@bücher.example".encode(), False, True),
    "non-ASCII quoted without SMTPUTF8": ('"jörg"@example.com'.encode(), False, True),
    "Latin-1, not UTF-8, with SMTPUTF8": (b"j\xf6rg@example.com", True, False),
    "Latin-1 without SMTPUTF8": (b"j\xf6rg@example.com", False, True),
}


@pytest.mark.parametrize(("path", "utf8", "mailbox"), VALID.values(), ids=VALID.keys())
def test_valid(path: bytes, utf8: bool, mailbox: Mailbox) -> None:
    assert parse_mailbox(path, utf8) == mailbox


@pytest.mark.parametrize(
    ("path", "utf8", "non_ascii"), INVALID.values(), ids=INVALID.keys()
)
def test_invalid(path: bytes, utf8: bool, non_ascii: bool) -> None:
    with pytest.raises(AddressError) as refused:
        parse_mailbox(path, utf8)
    # Picks the reply: 553 5.6.7 (declare SMTPUTF8) or a plain syntax error.
    assert refused.value.non_ascii is non_ascii


def test_trailing_dot_domain_is_not_the_undotted_one() -> None:
    dotted = parse_mailbox(b"alice@localhost.", False)
    assert dotted != parse_mailbox(b"alice@localhost", False)
    assert dotted.domain == "localhost."


def test_mailbox_prints_as_an_address() -> None:
    assert str(parse_mailbox(b'"a@b"@Example.COM', False)) == '"a@b"@example.com'
    # The special recipient <postmaster> has no domain (RFC 5321 §4.5.1).
    assert str(Mailbox("postmaster", "")) == "postmaster"
