"""Raw-socket checks of the SMTP dialogue: pipelining, the end of DATA, abuse."""

from __future__ import annotations

import socket

import pytest

from .server import MailfastServer
from .wire import SmtpWire, open_session

pytestmark = pytest.mark.e2e

# How long "the server keeps waiting" is watched. A server that took a false
# end-of-data for real would answer within milliseconds on loopback.
SILENCE_S = 0.5


def test_pipelined_commands_are_answered_in_order(mailfast: MailfastServer) -> None:
    with open_session(mailfast.host, mailfast.port) as wire:
        wire.send(
            b"MAIL FROM:<sender@example.org>\r\n"
            b"RCPT TO:<alice@localhost>\r\n"
            b"RCPT TO:<nobody@localhost>\r\n"
            b"RCPT TO:<bob@localhost>\r\n"
            b"DATA\r\n"
        )
        mail, alice, nobody, bob, data = wire.replies(5)
        assert (mail.code, alice.code, nobody.code, bob.code, data.code) == (
            250,
            250,
            550,
            250,
            354,
        ), [str(r) for r in (mail, alice, nobody, bob, data)]
        assert nobody.enhanced == "5.1.1"

        wire.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        delivered, bye = wire.replies(2)
        assert delivered.code == 250, delivered
        assert bye.code == 221, bye
        assert wire.closed_by_peer()

    assert len(mailfast.delivered("alice")) == 1
    assert len(mailfast.delivered("bob")) == 1


def test_half_closed_client_gets_every_reply(mailfast: MailfastServer) -> None:
    # A batch sender writes the whole dialogue, then shuts down its side. The
    # 250 of the commit still running must reach it, or it sends again.
    with open_session(mailfast.host, mailfast.port) as wire:
        wire.send(
            b"MAIL FROM:<sender@example.org>\r\n"
            b"RCPT TO:<alice@localhost>\r\n"
            b"DATA\r\n"
            b"Subject: half-closed\r\n\r\nbody\r\n.\r\n"
            b"MAIL FROM:<sender@example.org>\r\n"
            b"RCPT TO:<bob@localhost>\r\n"
            b"DATA\r\n"
            b"Subject: second\r\n\r\nbody\r\n.\r\n"
            b"QUIT\r\n"
        )
        wire.sock.shutdown(socket.SHUT_WR)
        codes = [reply.code for reply in wire.replies(9)]
        assert codes == [250, 250, 354, 250, 250, 250, 354, 250, 221]
        assert wire.closed_by_peer()
    assert len(mailfast.delivered("alice")) == 1
    assert len(mailfast.delivered("bob")) == 1


def test_half_close_without_quit_is_answered_then_closed(
    mailfast: MailfastServer,
) -> None:
    with open_session(mailfast.host, mailfast.port) as wire:
        wire.send(b"NOOP\r\nMAIL FROM:<sender@example.org>\r\n")
        wire.sock.shutdown(socket.SHUT_WR)
        assert [reply.code for reply in wire.replies(2)] == [250, 250]
        assert wire.closed_by_peer()


# Each pretends to end DATA with a bare CR or LF somewhere around the dot. A
# server that honours any of them lets a client smuggle a second message past
# a filter that reads the first one correctly (CVE-2023-51764 and relatives).
FALSE_ENDS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CR": b"\r.\r",
    "CRLF.LF": b"\r\n.\n",
}


@pytest.mark.parametrize("false_end", FALSE_ENDS.values(), ids=FALSE_ENDS.keys())
def test_false_end_of_data_is_not_the_end(
    mailfast: MailfastServer, false_end: bytes
) -> None:
    smuggled = (
        b"MAIL FROM:<smuggler@example.org>\r\n"
        b"RCPT TO:<bob@localhost>\r\n"
        b"DATA\r\n"
        b"Subject: smuggled\r\n\r\nsmuggled\r\n"
    )
    with open_session(mailfast.host, mailfast.port) as wire:
        assert wire.command("MAIL FROM:<sender@example.org>").code == 250
        assert wire.command("RCPT TO:<alice@localhost>").code == 250
        assert wire.command("DATA").code == 354

        wire.send(b"Subject: carrier\r\n\r\nbefore" + false_end + smuggled)
        assert wire.silent_for(SILENCE_S) == b""

        # The real end: the content held a bare CR or LF, so it is refused.
        wire.send(b".\r\n")
        reply = wire.reply()
        assert 500 <= reply.code < 600, reply

        # The session is still in step: the next command gets its own reply.
        assert wire.command("RSET").code == 250
        assert wire.command("QUIT").code == 221

    assert mailfast.all_delivered() == []


def test_bad_commands_run_out_then_421_and_close(mailfast: MailfastServer) -> None:
    budget = 10  # limits.max_bad_commands default
    with (
        open_session(mailfast.host, mailfast.port) as bystander,
        SmtpWire(mailfast.host, mailfast.port) as abuser,
    ):
        assert abuser.reply().code == 220
        replies = []
        for n in range(budget + 1):
            abuser.send(b"XYZZY %d plugh\r\n" % n)
            reply = abuser.reply()
            replies.append(reply)
            if reply.code == 421:
                break

        assert [r.code // 100 for r in replies[:-1]] == [5] * budget, replies
        assert replies[-1].code == 421, replies[-1]
        assert abuser.closed_by_peer()

        # The other client, connected all along, is served as if nothing happened.
        assert bystander.command("MAIL FROM:<sender@example.org>").code == 250
        assert bystander.command("RCPT TO:<alice@localhost>").code == 250
        assert bystander.command("DATA").code == 354
        bystander.send(b"Subject: bystander\r\n\r\nstill here\r\n.\r\n")
        assert bystander.reply().code == 250

    assert len(mailfast.delivered("alice")) == 1


def test_commands_before_ehlo_and_out_of_order(mailfast: MailfastServer) -> None:
    with SmtpWire(mailfast.host, mailfast.port) as wire:
        assert wire.reply().code == 220
        assert wire.command("RCPT TO:<alice@localhost>").code == 503
        assert wire.command("EHLO client.test").code == 250
        assert wire.command("DATA").code == 503
        assert wire.command("MAIL FROM:<sender@example.org>").code == 250
        assert wire.command("MAIL FROM:<sender@example.org>").code == 503
        assert wire.command("DATA").code in (503, 554)
        assert wire.command("NOOP").code == 250
        assert wire.command("QUIT").code == 221


def test_overlong_content_line_is_refused(mailfast: MailfastServer) -> None:
    # RFC 5321 §4.5.3.1.6: 1000 octets per line, CRLF included.
    longest = b"x" * 998 + b"\r\n"
    with open_session(mailfast.host, mailfast.port) as wire:
        for line, expected in [(longest, 2), (b"y" + longest, 5)]:
            assert wire.command("MAIL FROM:<sender@example.org>").code == 250
            assert wire.command("RCPT TO:<alice@localhost>").code == 250
            assert wire.command("DATA").code == 354
            wire.send(b"Subject: long line\r\n\r\n" + line + b".\r\n")
            reply = wire.reply()
            assert reply.code // 100 == expected, (len(line), reply)

    [path] = mailfast.delivered("alice")
    assert path.read_bytes().endswith(b"\r\n\r\n" + longest)


def test_overlong_command_is_refused_and_session_goes_on(
    mailfast: MailfastServer,
) -> None:
    # RFC 5321 §4.5.3.1.4: 512 octets per command line, CRLF included.
    with open_session(mailfast.host, mailfast.port) as wire:
        reply = wire.command(f"MAIL FROM:<{'a' * 600}@example.org>")
        assert reply.code == 500, reply
        assert wire.command("MAIL FROM:<sender@example.org>").code == 250
        assert wire.command("QUIT").code == 221
