"""Delivery status notifications (RFC 3464), read back with the email package.

``build_dsn`` writes the report by hand; these tests parse what it wrote with
Python's own MIME parser and compare fields, and look at the raw octets for
what a parser forgives: line endings, the returned original copied exactly.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailfast.bounce import (
    RETURN_FULL_LIMIT_OCTETS,
    FailedRecipient,
    build_dsn,
    decode_xtext,
    read_original,
)
from mailfast.outcome import Outcome
from mailfast.relaymodel import RelayRecipient

REPORTING_MTA = "mx.test"
QUEUE_ID = "25Y51JFM0SSBH0BZH"  # as long as the ids new_queue_id makes
SENDER = "alice@example.org"
ARRIVAL = 1_700_000_000.0
NOW = ARRIVAL + 3600
HEADER = (
    b"Received: from client.example ([192.0.2.7])\r\n"
    b"\tby mx.test (mailfast) with ESMTP id 25Y51JFM0SSBH0BZH;"
    b" Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: lunch\r\n"
    b"Message-ID: <lunch.1@example.org>\r\n"
)
ORIGINAL = HEADER + b"\r\nShall we meet at noon?\r\n\r\n-- \r\nAlice\r\n"
BOB_REFUSED = FailedRecipient(
    RelayRecipient("bob+tag@example.net", ("FAILURE",), "rfc822;bob+2Btag@example.net"),
    Outcome.from_reply(
        550,
        "5.1.1",
        "<bob+tag@example.net>: no such user",
        "mx.example.net[192.0.2.25]:25",
    ),
)
NO_DOMAIN = FailedRecipient(
    RelayRecipient("carol@nowhere.invalid"),
    Outcome.failed("5.1.2", "domain nowhere.invalid not found"),
)
BARE_LINE_BREAK = re.compile(rb"(?<!\r)\n|\r(?!\n)")


def dsn(
    failures: list[FailedRecipient],
    original: bytes = ORIGINAL,
    whole: bool = True,
    envid: str = "",
    reporting_mta: str = REPORTING_MTA,
    queue_id: str = QUEUE_ID,
) -> bytes:
    return build_dsn(
        reporting_mta=reporting_mta,
        queue_id=queue_id,
        sender=SENDER,
        arrival=ARRIVAL,
        envid=envid,
        failures=failures,
        original=original,
        original_is_whole=whole,
        now=NOW,
    )


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def report_blocks(message: EmailMessage) -> list[EmailMessage]:
    """The field groups of the message/delivery-status part: message, recipients."""
    status = message.get_payload()[1]
    assert status.get_content_type() == "message/delivery-status"
    return status.get_payload()


def fields(block: EmailMessage) -> list[tuple[str, str]]:
    return [(name, str(value)) for name, value in block.items()]


# Structure.


def test_dsn_is_a_three_part_delivery_status_report() -> None:
    message = parse(dsn([BOB_REFUSED]))

    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["MIME-Version"] == "1.0"
    assert message["To"].addresses[0].addr_spec == SENDER
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.test"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Subject"]
    assert message["Message-ID"].endswith("@mx.test>")
    assert email.utils.parsedate_to_datetime(message["Date"]).timestamp() == NOW
    parts = message.get_payload()
    assert [part.get_content_type() for part in parts] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert not message.defects
    assert all(not part.defects for part in message.walk())


def test_dsn_lines_all_end_in_crlf() -> None:
    for data in (
        dsn([BOB_REFUSED, NO_DOMAIN], envid="trip+2B1"),
        dsn([BOB_REFUSED], original=HEADER, whole=False),
        dsn([NO_DOMAIN], original=b"Subject: cut short", whole=False),
    ):
        assert data.endswith(b"\r\n")
        assert BARE_LINE_BREAK.search(data) is None


def test_notification_text_names_each_failed_recipient_and_the_reason() -> None:
    text = parse(dsn([BOB_REFUSED, NO_DOMAIN])).get_payload()[0].get_content()

    assert (
        "<bob+tag@example.net> (host mx.example.net[192.0.2.25]:25 said): "
        "550 5.1.1 <bob+tag@example.net>: no such user"
    ) in text
    assert "<carol@nowhere.invalid>: 5.1.2 domain nowhere.invalid not found" in text


# The delivery-status fields.


def test_per_message_fields_name_us_and_the_decoded_envelope_id() -> None:
    message_fields = report_blocks(parse(dsn([BOB_REFUSED], envid="trip+2B1+3D2")))[0]

    assert message_fields["Reporting-MTA"] == "dns; mx.test"
    assert message_fields["X-Mailfast-Queue-ID"] == QUEUE_ID
    assert message_fields["Original-Envelope-Id"] == "trip+1=2"
    arrival = email.utils.parsedate_to_datetime(message_fields["Arrival-Date"])
    assert arrival.timestamp() == ARRIVAL


def test_without_an_envelope_id_there_is_no_original_envelope_id() -> None:
    message_fields = report_blocks(parse(dsn([BOB_REFUSED])))[0]

    assert "Original-Envelope-Id" not in message_fields


def test_recipient_refused_by_a_server_names_the_server_and_its_reply() -> None:
    [_message, bob] = report_blocks(parse(dsn([BOB_REFUSED])))

    last_attempt = bob["Last-Attempt-Date"]
    assert email.utils.parsedate_to_datetime(last_attempt).timestamp() == NOW
    assert fields(bob) == [
        ("Original-Recipient", "rfc822; bob+tag@example.net"),
        ("Final-Recipient", "rfc822; bob+tag@example.net"),
        ("Action", "failed"),
        ("Status", "5.1.1"),
        ("Remote-MTA", "dns; mx.example.net"),
        ("Diagnostic-Code", "smtp; 550 5.1.1 <bob+tag@example.net>: no such user"),
        ("Last-Attempt-Date", last_attempt),
    ]


def test_recipient_failed_before_any_server_answered_gets_our_own_reason() -> None:
    [_message, carol] = report_blocks(parse(dsn([NO_DOMAIN])))

    assert fields(carol) == [
        ("Final-Recipient", "rfc822; carol@nowhere.invalid"),
        ("Action", "failed"),
        ("Status", "5.1.2"),
        ("Diagnostic-Code", "x-mailfast; domain nowhere.invalid not found"),
        ("Last-Attempt-Date", carol["Last-Attempt-Date"]),
    ]


def test_each_recipient_has_its_own_field_group_in_order() -> None:
    blocks = report_blocks(parse(dsn([BOB_REFUSED, NO_DOMAIN])))

    assert [block["Final-Recipient"] for block in blocks[1:]] == [
        "rfc822; bob+tag@example.net",
        "rfc822; carol@nowhere.invalid",
    ]


@pytest.mark.parametrize(
    "where",
    [
        # A field slipped into the recipient's group through ORCPT=.
        "orcpt",
        # A field slipped into the per-message group through ENVID=.
        "envid",
    ],
)
def test_encoded_line_breaks_in_dsn_parameters_cannot_add_report_fields(
    where: str,
) -> None:
    # The session accepts "+0D+0A" as xtext (it is well-formed); decoded
    # as is, it would end the field and start one of the client's choosing.
    injected = "x+0D+0AAction:+20delivered+0D+0AStatus:+202.0.0"
    failure = BOB_REFUSED
    envid = ""
    if where == "orcpt":
        recipient = RelayRecipient("bob@example.net", (), f"rfc822;{injected}")
        failure = FailedRecipient(recipient, BOB_REFUSED.outcome)
    else:
        envid = injected

    data = dsn([failure], envid=envid)

    assert BARE_LINE_BREAK.search(data) is None
    [message_fields, bob] = report_blocks(parse(data))
    assert "Action" not in message_fields and "Status" not in message_fields
    assert bob.get_all("Action") == ["failed"]
    assert bob.get_all("Status") == ["5.1.1"]


def test_boundary_is_within_the_mime_limit_for_a_long_host_name() -> None:
    # RFC 2046 §5.1.1: a boundary is 1 to 70 characters. Host names of this
    # length are common (cloud instances, data-centre naming schemes).
    hostname = "ip-172-31-22-118.eu-central-1.compute.internal"

    message = parse(dsn([BOB_REFUSED], reporting_mta=hostname))

    assert 1 <= len(message.get_boundary()) <= 70


# The returned original.


def test_whole_original_is_returned_octet_for_octet() -> None:
    data = dsn([BOB_REFUSED])
    message = parse(data)

    boundary = message.get_boundary()
    returned = message.get_payload()[2]
    assert returned["Content-Description"] == "Undelivered Message"
    assert returned.get_payload()[0]["Subject"] == "lunch"
    assert data.endswith(b"\r\n\r\n" + ORIGINAL + f"\r\n--{boundary}--\r\n".encode())


def test_headers_only_are_returned_as_text_rfc822_headers() -> None:
    data = dsn([BOB_REFUSED], original=HEADER, whole=False)
    message = parse(data)

    boundary = message.get_boundary()
    returned = message.get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned["Content-Description"] == "Undelivered Message Headers"
    assert data.endswith(b"\r\n\r\n" + HEADER + f"\r\n--{boundary}--\r\n".encode())


def write_queued(tmp_path: Path, content: bytes) -> tuple[str, int]:
    """A queue-like file: a first line, then ``content``; (path, offset)."""
    path = tmp_path / "queued"
    prefix = b'{"id": "25Y51JFM0SSBH0BZH"}\n'
    path.write_bytes(prefix + content)
    return str(path), len(prefix)


def message_of(octets: int) -> bytes:
    """HEADER and a body of lines of 80 octets that make ``octets`` in all."""
    lines, rest = divmod(octets - len(HEADER) - 2, 80)
    last = b"y" * (rest - 2) + b"\r\n" if rest else b""
    return HEADER + b"\r\n" + (b"x" * 78 + b"\r\n") * lines + last


@pytest.mark.parametrize(
    ("ret", "octets", "whole"),
    [
        ("FULL", RETURN_FULL_LIMIT_OCTETS * 4, True),
        ("FULL", 1000, True),
        ("HDRS", 1000, False),
        ("HDRS", RETURN_FULL_LIMIT_OCTETS * 4, False),
        ("", RETURN_FULL_LIMIT_OCTETS, True),
        ("", RETURN_FULL_LIMIT_OCTETS + 2, False),
        ("", RETURN_FULL_LIMIT_OCTETS * 4, False),
    ],
)
def test_read_original_follows_ret_and_the_size_limit(
    tmp_path: Path, ret: str, octets: int, whole: bool
) -> None:
    content = message_of(octets)
    assert len(content) == octets
    path, offset = write_queued(tmp_path, content)

    returned, is_whole = read_original(path, offset, len(content), ret)

    assert is_whole is whole
    assert returned == (content if whole else HEADER)


def test_headers_only_of_a_message_without_a_body_is_all_of_it(
    tmp_path: Path,
) -> None:
    path, offset = write_queued(tmp_path, HEADER)

    assert read_original(path, offset, len(HEADER), "HDRS") == (HEADER, False)


@pytest.mark.parametrize(
    ("xtext", "decoded"),
    [
        ("", ""),
        ("bob@example.net", "bob@example.net"),
        ("bob+2Btag@example.net", "bob+tag@example.net"),
        ("a+3Db", "a=b"),
        ("+2B+2B", "++"),
        ("+41+42C", "ABC"),
        ("+2b", "+"),  # lower-case hex: not canonical, decoded all the same
        ("a+2", "a+2"),  # a cut-short escape stays as written
        ("a+", "a+"),
        ("+ZZ", "+ZZ"),
        ("+2G", "+2G"),
        ("100+25", "100%"),
    ],
)
def test_decode_xtext(xtext: str, decoded: str) -> None:
    assert decode_xtext(xtext) == decoded
