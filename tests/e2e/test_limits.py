"""Resource limits a hostile or broken client runs into, against a real mailfast.

Connections per address, recipients per message, message size, errors per
session, timeouts for idle and for slow clients, and many idle connections
held open while mail still flows. Loopback addresses stand in for clients:
127.0.0.1 is the one that misbehaves, 127.0.0.2 everybody else.
"""

from __future__ import annotations

import contextlib
import resource
import smtplib
import socket
import time

import pytest

from .securityfixtures import SecureWire, small_message
from .server import MailfastServer
from .wire import SmtpWire, open_session

pytestmark = pytest.mark.e2e

OTHER_CLIENT = "127.0.0.2"
PER_IP = 10
RATE = 20  # connections per address per minute
TIMEOUT_S = 2.0
TIMEOUT_SLACK_S = 1.5
TRICKLE_INTERVAL_S = 0.5
TRICKLE_FOR_S = 6.5  # past any deadline a 2-second timeout can justify
IDLE_CONNECTIONS = 2000
MESSAGES = 100


def first_reply(source: str, server: MailfastServer) -> SecureWire:
    """A connection from ``source`` whose first reply the caller reads."""
    return SecureWire(server.host, server.port, source=source)


# --- connections --------------------------------------------------------------


def test_connection_rate_per_address_is_limited(start_mailfast) -> None:
    server = start_mailfast(
        limits={
            "max_connection_rate_per_ip": RATE,
            "per_ip_exempt_networks": [OTHER_CLIENT + "/32"],
        }
    )
    # The harness's own readiness probes count too: stop at the first refusal.
    replies = []
    for _ in range(RATE + 1):
        with first_reply("127.0.0.1", server) as wire:
            replies.append(wire.reply())
        if replies[-1].code != 220:
            break
    assert (replies[-1].code, replies[-1].enhanced) == (421, "4.7.0"), replies[-1]
    assert len(replies) > RATE // 2
    assert "refused: rate limit" in server.log()
    # An exempt address is not held to the rate.
    for _ in range(2 * RATE):
        with first_reply(OTHER_CLIENT, server) as wire:
            assert wire.reply().code == 220


def test_connections_per_address_are_limited(start_mailfast) -> None:
    server = start_mailfast(
        limits={
            "max_connections_per_ip": PER_IP,
            "max_connection_rate_per_ip": 0,
            "per_ip_exempt_networks": [],  # loopback stands in for strangers
        }
    )
    with contextlib.ExitStack() as stack:
        held = []
        for _ in range(PER_IP):
            held.append(stack.enter_context(first_reply("127.0.0.1", server)))
            assert held[-1].reply().code == 220

        with first_reply("127.0.0.1", server) as eleventh:
            reply = eleventh.reply()
            assert (reply.code, reply.enhanced) == (421, "4.7.0"), reply
            assert eleventh.closed_by_peer()

        # Another address is served meanwhile.
        with first_reply(OTHER_CLIENT, server) as other:
            assert other.reply().code == 220
            assert other.command("EHLO other.test").code == 250

        # The connections that got in are served as usual.
        for wire in held:
            assert wire.command("NOOP").code == 250
    # Once they are closed, the address gets in again.
    deadline = time.monotonic() + 5.0
    while True:
        with first_reply("127.0.0.1", server) as again:
            if again.reply().code == 220:
                break
        assert time.monotonic() < deadline, "the closed connections stayed counted"
        time.sleep(0.1)


def test_recipients_per_message_are_limited(start_mailfast) -> None:
    server = start_mailfast(limits={"max_recipients": 3})
    with open_session(server.host, server.port) as wire:
        assert wire.command("MAIL FROM:<sender@example.org>").code == 250
        for recipient in ("alice", "bob", "postmaster"):
            assert wire.command(f"RCPT TO:<{recipient}@localhost>").code == 250
        reply = wire.command("RCPT TO:<team@localhost>")
        assert (reply.code, reply.enhanced) == (452, "4.5.3"), reply
        # The three accepted still get the message.
        assert wire.command("DATA").code == 354
        wire.send(small_message("three recipients") + b".\r\n")
        assert wire.reply().code == 250
    assert len(server.delivered("alice")) == 1  # alice, and postmaster -> alice
    assert len(server.delivered("bob")) == 1


def test_message_size_is_limited(start_mailfast) -> None:
    limit = 10_000
    server = start_mailfast(limits={"max_message_octets": limit})
    with open_session(server.host, server.port) as wire:
        assert f"SIZE {limit}" in wire.command("EHLO client.test").lines

        # Declared too big: refused at MAIL (RFC 1870).
        reply = wire.command(f"MAIL FROM:<sender@example.org> SIZE={limit + 1}")
        assert (reply.code, reply.enhanced) == (552, "5.3.4"), reply

        # Declared small, sent big: refused after the final dot, nothing kept.
        assert wire.command(f"MAIL FROM:<sender@example.org> SIZE={limit}").code == 250
        assert wire.command("RCPT TO:<alice@localhost>").code == 250
        assert wire.command("DATA").code == 354
        body = b"".join(
            b"%07d filler line of the oversize body\r\n" % i for i in range(400)
        )
        assert len(body) > limit
        wire.send(b"Subject: too big\r\n\r\n" + body + b".\r\n")
        reply = wire.reply()
        assert (reply.code, reply.enhanced) == (552, "5.3.4"), reply

        # The session goes on, and a message within the limit is delivered.
        assert wire.command("MAIL FROM:<sender@example.org>").code == 250
        assert wire.command("RCPT TO:<alice@localhost>").code == 250
        assert wire.command("DATA").code == 354
        wire.send(small_message("within the limit") + b".\r\n")
        assert wire.reply().code == 250
    [path] = server.delivered("alice")
    assert b"within the limit" in path.read_bytes()


def test_errors_per_session_are_limited(start_mailfast) -> None:
    server = start_mailfast(limits={"max_bad_commands": 3})
    with open_session(server.host, server.port) as wire:
        for verb in ("XYZZY", "MAIL FROM:<not an address>", "RCPT TO:<a@b>"):
            assert wire.command(verb).code in (500, 501, 503, 553)
        reply = wire.command("FROBNICATE")
        assert (reply.code, reply.enhanced) == (421, "4.7.0"), reply
        assert wire.closed_by_peer()


# --- timeouts -----------------------------------------------------------------


def test_idle_clients_time_out(start_mailfast) -> None:
    server = start_mailfast(
        limits={"command_timeout_s": TIMEOUT_S, "data_timeout_s": TIMEOUT_S}
    )
    with contextlib.ExitStack() as stack:
        # Silent after the greeting, after EHLO, and in the middle of DATA;
        # all three wait at once.
        silent = stack.enter_context(SmtpWire(server.host, server.port))
        assert silent.reply().code == 220
        after_ehlo = stack.enter_context(open_session(server.host, server.port))
        in_data = stack.enter_context(open_session(server.host, server.port))
        assert in_data.command("MAIL FROM:<sender@example.org>").code == 250
        assert in_data.command("RCPT TO:<alice@localhost>").code == 250
        assert in_data.command("DATA").code == 354
        in_data.send(b"Subject: half a message\r\n\r\nand then nothing")
        started = time.monotonic()

        for wire in (silent, after_ehlo, in_data):
            received = wire.silent_for(TIMEOUT_S + TIMEOUT_SLACK_S)
            assert received.startswith(b"421 4.4.2 "), received
            assert received.endswith(b"<EOF>"), received
        elapsed = time.monotonic() - started
    assert TIMEOUT_S - 0.5 <= elapsed <= TIMEOUT_S + TIMEOUT_SLACK_S
    assert server.delivered("alice") == []


@pytest.mark.parametrize("half_close", [False, True], ids=["open", "half-closed"])
def test_a_client_that_never_reads_is_held_back_then_dropped(
    start_mailfast, half_close: bool
) -> None:
    # Each EHLO of 8 octets asks for a reply of about 200. A server that
    # answered everything a client pipelines would hold every reply for a
    # client that never reads, without bound; it must stop reading instead.
    server = start_mailfast(limits={"command_timeout_s": TIMEOUT_S})
    with SmtpWire(server.host, server.port) as wire:
        wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        wire.sock.settimeout(TIMEOUT_S + TIMEOUT_SLACK_S)
        sent = 0
        with pytest.raises(TimeoutError):
            while sent < 64 << 20:  # far more than any buffer on the way
                wire.sock.sendall(b"EHLO c\r\n" * 4096)
                sent += 8 * 4096
        assert sent < 16 << 20, f"the server read {sent} octets it could not answer"
        if half_close:
            wire.sock.shutdown(socket.SHUT_WR)
        # Others are served meanwhile.
        with smtplib.SMTP(server.host, server.port, timeout=10) as other:
            other.sendmail("a@example.org", ["alice@localhost"], b"Subject: x\r\n\r\n")
        # Past the timeouts (the command's, then the one the 421 gets) the
        # connection is reset, unread replies and all, while we still read
        # nothing.
        time.sleep(2 * TIMEOUT_S + 2 * TIMEOUT_SLACK_S)
        assert "replies left unread" in server.log()
        # What is left to read is what was on its way when it was dropped,
        # not the answers to everything sent: those were never made.
        wire.sock.settimeout(1.0)
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := wire.sock.recv(1 << 20):
                received += len(chunk)
        assert received < 8 << 20
    assert len(server.delivered("alice")) == 1


def test_a_client_that_answers_in_time_is_not_cut_off(start_mailfast) -> None:
    # What the timeout is for: each complete command, a second apart, is
    # served although the session as a whole outlasts the timeout.
    server = start_mailfast(limits={"command_timeout_s": TIMEOUT_S})
    with open_session(server.host, server.port) as wire:
        for _ in range(3):
            time.sleep(TIMEOUT_S / 2)
            assert wire.command("NOOP").code == 250


def trickle(wire: SmtpWire, octets: bytes) -> tuple[bytes, float]:
    """Send ``octets`` one at a time, ``TRICKLE_INTERVAL_S`` apart, until the
    server answers or TRICKLE_FOR_S has passed; what it sent, and when."""
    started = time.monotonic()
    received = b""
    for octet in octets:
        if time.monotonic() - started > TRICKLE_FOR_S:
            break
        try:
            wire.send(bytes([octet]))
        except (BrokenPipeError, ConnectionResetError):
            break
        received += wire.silent_for(TRICKLE_INTERVAL_S)
        if received:
            break
    if received and not received.endswith(b"<EOF>"):
        received += wire.silent_for(1.0)
    return received, time.monotonic() - started


# The timeouts guard a connection's time, not its silence. The two tests
# above hold whatever the deadline is measured from; the two below state the
# rule for a client that is never silent: a command line must be complete
# within command_timeout_s, and a line of content within data_timeout_s, of
# the moment the server started waiting for it. A client that sends one octet
# every half second then loses its connection within a few seconds; a
# deadline pushed back by every read would let it hold the connection as long
# as it likes. The bound asserted, twice the timeout plus slack, also admits a
# deadline per DATA command or a minimum transfer rate.


def test_a_command_trickled_byte_by_byte_is_cut_off(start_mailfast) -> None:
    server = start_mailfast(limits={"command_timeout_s": TIMEOUT_S})
    with open_session(server.host, server.port) as wire:
        received, elapsed = trickle(
            wire, b"MAIL FROM:<" + b"a" * 400 + b"@slow.test>\r\n"
        )
    assert received.startswith(b"421 4.4.2 "), (
        f"a client sending one octet every {TRICKLE_INTERVAL_S} s still held the "
        f"connection after {elapsed:.1f} s (command_timeout_s = {TIMEOUT_S}); "
        f"received {received!r}"
    )
    assert elapsed < 2 * TIMEOUT_S + TIMEOUT_SLACK_S


def test_data_trickled_byte_by_byte_is_cut_off(start_mailfast) -> None:
    server = start_mailfast(
        limits={"command_timeout_s": 30.0, "data_timeout_s": TIMEOUT_S}
    )
    with open_session(server.host, server.port) as wire:
        assert wire.command("MAIL FROM:<sender@example.org>").code == 250
        assert wire.command("RCPT TO:<alice@localhost>").code == 250
        assert wire.command("DATA").code == 354
        received, elapsed = trickle(wire, b"Subject: slow\r\n\r\n" + b"x" * 400)
    assert received.startswith(b"421 4.4.2 "), (
        f"a client sending one octet of DATA every {TRICKLE_INTERVAL_S} s still "
        f"held the connection after {elapsed:.1f} s (data_timeout_s = "
        f"{TIMEOUT_S}); received {received!r}"
    )
    assert elapsed < 2 * TIMEOUT_S + TIMEOUT_SLACK_S
    assert server.delivered("alice") == []


# --- many idle connections ------------------------------------------------------


@contextlib.contextmanager
def open_files_limit(wanted: int):
    """Raise this process's RLIMIT_NOFILE towards ``wanted`` for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised = max(soft, wanted)
    if hard != resource.RLIM_INFINITY:
        raised = min(raised, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    try:
        yield raised
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_mail_flows_past_2000_idle_connections(start_mailfast) -> None:
    headroom = 500  # pytest, the server's log, the delivering client
    with open_files_limit(IDLE_CONNECTIONS + headroom) as limit:
        if limit < IDLE_CONNECTIONS + headroom:
            pytest.skip(f"RLIMIT_NOFILE hard limit {limit} is below what this needs")
        # Started inside the block: the server inherits the raised limit.
        server = start_mailfast(
            limits={
                "max_connections_per_ip": 5000,
                # 2,000 connections in a few seconds is a rate of its own.
                "max_connection_rate_per_ip": 0,
            }
        )
        idle: list[socket.socket] = []
        try:
            for _ in range(IDLE_CONNECTIONS):
                sock = socket.create_connection((server.host, server.port), timeout=10)
                idle.append(sock)
                assert _read_line(sock).startswith(b"220 "), len(idle)

            with smtplib.SMTP(server.host, server.port, timeout=30) as client:
                for number in range(MESSAGES):
                    message = small_message(f"message {number} past the idle crowd")
                    assert (
                        client.sendmail(
                            "sender@example.org", ["alice@localhost"], message
                        )
                        == {}
                    )
            assert len(server.delivered("alice")) == MESSAGES

            # The idle ones were kept all along, and still answer.
            for sock in idle:
                sock.sendall(b"NOOP\r\n")
            for sock in idle:
                assert _read_line(sock).startswith(b"250 ")
        finally:
            for sock in idle:
                sock.close()
    with open_session(server.host, server.port) as wire:
        assert wire.command("NOOP").code == 250


def _read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(4096)  # one line is all the server has sent
        if not chunk:
            raise EOFError(f"closed after {line!r}")
        line += chunk
    return line
