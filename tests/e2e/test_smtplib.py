"""Python's smtplib against a real mailfast: delivery, routing, extensions, limits."""

from __future__ import annotations

import re
import shutil
import smtplib

import pytest

from .delivery import read_delivery
from .server import HOSTNAME, MAX_MESSAGE_OCTETS, MailfastServer
from .wire import dot_stuff, open_session

pytestmark = pytest.mark.e2e

SENDER = "sender@example.org"

# Already in CRLF, so smtplib sends these bytes as they are apart from
# dot-stuffing: the lines that start with "." come back only if mailfast
# un-stuffs exactly once. The lone "." line would end DATA if unstuffed on the
# wire.
MESSAGE = (
    b"From: Sender <sender@example.org>\r\n"
    b"To: Alice <alice@localhost>\r\n"
    b"Subject: dot-stuffing round trip\r\n"
    b"Message-ID: <smtplib-1@example.org>\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"\r\n"
    b"  indented, with trailing blanks  \t\r\n"
    b"last line\r\n"
)


def connect(server: MailfastServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=10)


def test_message_is_in_new_byte_for_byte(mailfast: MailfastServer) -> None:
    with connect(mailfast) as client:
        refused = client.sendmail(SENDER, ["alice@localhost"], MESSAGE)

    assert refused == {}
    [path] = mailfast.delivered("alice")
    assert mailfast.unfinished("alice") == []
    delivery = read_delivery(path)
    assert delivery.message == MESSAGE
    assert delivery.return_path == f"<{SENDER}>"
    assert delivery.delivered_to == "alice@localhost"
    assert HOSTNAME.encode() in delivery.received


def test_outcome_is_logged_once_under_the_queue_id(mailfast: MailfastServer) -> None:
    with open_session(mailfast.host, mailfast.port) as wire:
        assert wire.command(f"MAIL FROM:<{SENDER}>").code == 250
        assert wire.command("RCPT TO:<alice@localhost>").code == 250
        assert wire.command("DATA").code == 354
        wire.send(dot_stuff(MESSAGE) + b".\r\n")
        accepted = wire.reply()
        assert accepted.code == 250, accepted

    # One line per outcome, in the shape operators grep for.
    outcome = re.compile(
        r"mailfast\[(\d+)\]: INFO (\w+): from=<(.*?)> to=<(.*?)> size=(\d+) "
        r"client=\[(.*?)\] result=(\w+) delay=[\d.]+s"
    )
    [line] = [m for m in outcome.finditer(mailfast.log())]
    pid, queue_id, sender, recipient, size, client, result = line.groups()
    assert (sender, recipient, client, result) == (
        SENDER,
        "alice@localhost",
        "127.0.0.1",
        "delivered",
    )
    assert int(pid) in mailfast.worker_pids()
    # The same id in the client's 250 and in the Received field ties the
    # three views of one message together.
    assert queue_id in accepted.text
    [path] = mailfast.delivered("alice")
    assert queue_id.encode() in read_delivery(path).received
    assert int(size) >= len(MESSAGE)
    assert read_delivery(path).message == MESSAGE


def test_eight_bit_body_is_kept(mailfast: MailfastServer) -> None:
    message = (
        b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + "Grüße aus Köln, naïve café, 日本語\r\n".encode()
        + bytes(range(0x80, 0x100))
        + b"\r\n"
    )
    with connect(mailfast) as client:
        client.sendmail(SENDER, ["alice@localhost"], message, ["BODY=8BITMIME"])

    [path] = mailfast.delivered("alice")
    assert read_delivery(path).message == message


def test_two_recipients_get_one_copy_each(mailfast: MailfastServer) -> None:
    with connect(mailfast) as client:
        client.sendmail(SENDER, ["alice@localhost", "bob@localhost"], MESSAGE)

    [alice] = mailfast.delivered("alice")
    [bob] = mailfast.delivered("bob")
    assert read_delivery(alice).delivered_to == "alice@localhost"
    assert read_delivery(bob).delivered_to == "bob@localhost"
    assert read_delivery(alice).message == read_delivery(bob).message == MESSAGE


def test_a_maildir_removed_while_serving_is_made_again(
    mailfast: MailfastServer,
) -> None:
    # Both workers deliver to bob first, so each has seen his Maildir.
    for _ in range(4):
        with connect(mailfast) as client:
            client.sendmail(SENDER, ["bob@localhost"], MESSAGE)
    shutil.rmtree(mailfast.maildir("bob"))
    for _ in range(4):
        with connect(mailfast) as client:
            client.sendmail(SENDER, ["bob@localhost"], MESSAGE)
    assert len(mailfast.delivered("bob")) == 4


def test_alias_fans_out_to_its_mailboxes(mailfast: MailfastServer) -> None:
    with connect(mailfast) as client:
        client.sendmail(SENDER, ["team@localhost"], MESSAGE)

    assert len(mailfast.delivered("alice")) == 1
    assert len(mailfast.delivered("bob")) == 1


def test_alias_and_its_member_give_one_copy(mailfast: MailfastServer) -> None:
    # team = alice + bob; alice named again must not get the message twice.
    with connect(mailfast) as client:
        client.sendmail(SENDER, ["team@localhost", "alice@localhost"], MESSAGE)

    assert len(mailfast.delivered("alice")) == 1
    assert len(mailfast.delivered("bob")) == 1


def test_postmaster_without_domain_is_accepted(mailfast: MailfastServer) -> None:
    # RFC 5321 §4.5.1: "postmaster" with no domain must be accepted.
    with connect(mailfast) as client:
        client.ehlo()
        client.mail(SENDER)
        code, text = client.rcpt("<postmaster>")
        assert code == 250, text
        code, text = client.data(MESSAGE)
        assert code == 250, text

    [path] = mailfast.delivered("alice")
    assert read_delivery(path).message == MESSAGE


def test_null_reverse_path_is_accepted(mailfast: MailfastServer) -> None:
    # Bounces travel with MAIL FROM:<> (RFC 5321 §4.5.5).
    with connect(mailfast) as client:
        client.sendmail("", ["alice@localhost"], MESSAGE)

    [path] = mailfast.delivered("alice")
    assert read_delivery(path).return_path == "<>"


def test_domain_is_case_insensitive(mailfast: MailfastServer) -> None:
    with connect(mailfast) as client:
        client.sendmail(SENDER, ["alice@LocalHost"], MESSAGE)

    assert len(mailfast.delivered("alice")) == 1


def test_unknown_user_is_refused_with_550(mailfast: MailfastServer) -> None:
    with connect(mailfast) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail(SENDER, ["nobody@localhost"], MESSAGE)

    code, text = refused.value.recipients["nobody@localhost"]
    assert code == 550
    assert text.startswith(b"5.1.1")
    assert mailfast.all_delivered() == []


def test_known_recipient_still_gets_mail_beside_an_unknown_one(
    mailfast: MailfastServer,
) -> None:
    with connect(mailfast) as client:
        refused = client.sendmail(
            SENDER, ["nobody@localhost", "alice@localhost"], MESSAGE
        )

    assert refused["nobody@localhost"][0] == 550
    assert list(refused) == ["nobody@localhost"]
    assert len(mailfast.delivered("alice")) == 1


def test_other_domain_is_not_relayed_for_strangers(start_mailfast) -> None:
    # Loopback is trusted to relay by default; trusting nobody makes this
    # client a stranger, which must not get mail to other domains through.
    server = start_mailfast(relay={"trusted_networks": []})
    with connect(server) as client:
        client.ehlo()
        client.mail(SENDER)
        code, text = client.rcpt("someone@example.com")

    assert (code, text[:5]) == (554, b"5.7.1")


def test_ehlo_advertises_the_extensions(mailfast: MailfastServer) -> None:
    client = smtplib.SMTP(timeout=10)
    try:
        code, greeting = client.connect(mailfast.host, mailfast.port)
        assert code == 220
        assert HOSTNAME.encode() in greeting
        code, _ = client.ehlo("client.test")
        assert code == 250
        for keyword in (
            "PIPELINING",
            "SIZE",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
        ):
            assert client.has_extn(keyword), (keyword, client.esmtp_features)
        assert client.esmtp_features["size"] == str(MAX_MESSAGE_OCTETS)
        client.quit()
    finally:
        client.close()


def test_declared_size_over_the_limit_gets_552(mailfast: MailfastServer) -> None:
    with connect(mailfast) as client:
        client.ehlo()
        code, text = client.mail(SENDER, [f"SIZE={MAX_MESSAGE_OCTETS + 1}"])
        assert code == 552, text
        code, text = client.mail(SENDER, [f"SIZE={MAX_MESSAGE_OCTETS}"])
        assert code == 250, text


def test_oversize_body_without_size_gets_552_and_session_goes_on(
    mailfast: MailfastServer,
) -> None:
    # No SIZE parameter: the limit must be enforced while the body streams in.
    line = b"x" * 998 + b"\r\n"
    too_big = b"Subject: big\r\n\r\n" + line * (MAX_MESSAGE_OCTETS // len(line) + 10)
    with connect(mailfast) as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt("alice@localhost")[0] == 250
        code, text = client.data(too_big)
        assert code == 552, text
        assert mailfast.all_delivered() == []

        # The transaction is over, the session is not.
        assert client.sendmail(SENDER, ["alice@localhost"], MESSAGE) == {}
    assert len(mailfast.delivered("alice")) == 1


def test_too_many_recipients_get_452(start_mailfast) -> None:
    server = start_mailfast(limits={"max_recipients": 2})
    with connect(server) as client:
        client.ehlo()
        client.mail(SENDER)
        assert client.rcpt("alice@localhost")[0] == 250
        assert client.rcpt("bob@localhost")[0] == 250
        # RFC 5321 §4.5.3.1.10: 452, so the client retries the rest later.
        code, text = client.rcpt("postmaster@localhost")
        assert (code, text[:5]) == (452, b"4.5.3")
        assert client.data(MESSAGE)[0] == 250
    assert len(server.delivered("alice")) == 1
    assert len(server.delivered("bob")) == 1


def test_bdat_last_delivers(mailfast: MailfastServer) -> None:
    # BDAT carries octets verbatim: no stuffing, and "." lines mean nothing.
    message = MESSAGE
    with open_session(mailfast.host, mailfast.port) as wire:
        assert wire.command(f"MAIL FROM:<{SENDER}>").code == 250
        assert wire.command("RCPT TO:<alice@localhost>").code == 250
        wire.send(b"BDAT %d LAST\r\n" % len(message) + message)
        reply = wire.reply()
        assert reply.code == 250, reply
        assert wire.command("QUIT").code == 221

    [path] = mailfast.delivered("alice")
    assert read_delivery(path).message == message


def test_bdat_chunks_split_between_cr_and_lf(mailfast: MailfastServer) -> None:
    first = MESSAGE[: MESSAGE.index(b"\r\n") + 1]  # ends on the CR
    rest = MESSAGE[len(first) :]  # starts with the LF
    with open_session(mailfast.host, mailfast.port) as wire:
        assert wire.command(f"MAIL FROM:<{SENDER}>").code == 250
        assert wire.command("RCPT TO:<alice@localhost>").code == 250
        wire.send(b"BDAT %d\r\n" % len(first) + first)
        assert wire.reply().code == 250
        wire.send(b"BDAT %d LAST\r\n" % len(rest) + rest)
        reply = wire.reply()
        assert reply.code == 250, reply

    [path] = mailfast.delivered("alice")
    assert read_delivery(path).message == MESSAGE
